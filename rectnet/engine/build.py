"""Config -> model: the one place where the activation, init and model config groups meet."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from rectnet.config import ConfigError, TrainConfig
from rectnet.convert import create_timm
from rectnet.layers.activations import make_activation
from rectnet.models import MODELS, SpecNet, create
from rectnet.models.spec import min_input_size
from rectnet.registry import Registry

log = logging.getLogger("rectnet")


def check_input_size(model: str, image_size: int) -> None:
    """Every net takes any input size down to a minimum (its strided layers must leave a map); say which."""
    smallest = min_input_size(MODELS.get(model)())
    if image_size < smallest:
        raise ConfigError(
            f"dataset.image_size={image_size} is too small for model {model}: its smallest input is "
            f"{smallest}x{smallest} (set dataset.image_size={smallest} or more)"
        )


def build_model(settings: TrainConfig, num_classes: int, in_chans: int = 3, check_input: bool = True) -> nn.Module:
    """Build and initialise `settings.model` with `settings.activation` and `settings.init`.

    `check_input`: refuse a `dataset.image_size` below the net's minimum (off where only weights are read).
    """
    return SOURCES.get(settings.model.source)(settings, num_classes, in_chans, check_input)


def _build_timm(settings: TrainConfig, num_classes: int, in_chans: int, check_input: bool) -> nn.Module:
    """A timm architecture, converted (rectnet/convert); its example forward at image_size checks the input."""
    m, init = settings.model, settings.init
    _note_unused_dropout(settings)
    model, report = create_timm(
        m.name,
        num_classes,
        in_chans,
        image_size=settings.dataset.image_size,
        cifar_stem=m.cifar_stem,
        kwargs=m.kwargs,
        activation=make_activation(settings.activation.name, **settings.activation.params()),
        init=init.name,
        act_at=m.act_at,
        base_act=m.base_act,
        init_mode=init.mode,
        init_distribution=init.distribution,
        head_scale=init.head_scale,
        count_dropout=init.count_dropout,
        init_std=m.init_std,
    )
    log.info("converted %s:\n%s", m.name, report.format())
    return model


def _note_unused_dropout(settings: TrainConfig) -> None:
    """An activation's dropout rate (AVR's) replaces the rates of rectnet's layer lists (their model.dropout reads
    it: configs/model/<net>.yaml); a timm model has no such list, so the rate does not apply. Say so, so that
    nobody reads it into the run."""
    act = settings.activation
    if act.dropout is not None:
        log.info(
            "activation.dropout=%g (activation %s) is a rate for rectnet's nets; timm model %s keeps its own "
            "dropout (set it with model.kwargs, e.g. drop_rate)",
            act.dropout,
            act.name,
            settings.model.name,
        )


def _build_spec(settings: TrainConfig, num_classes: int, in_chans: int, check_input: bool) -> SpecNet:
    if check_input:
        check_input_size(settings.model.name, settings.dataset.image_size)
    act = make_activation(settings.activation.name, **settings.activation.params())
    m = settings.model
    return create(
        m.name,
        num_classes=num_classes,
        in_chans=in_chans,
        act=act,
        width=m.width,
        act_at=m.act_at,
        halve_at=m.halve_at,
        base_act=m.base_act,
        dropout=m.dropout,
        init=settings.init.name,
        init_mode=settings.init.mode,
        init_distribution=settings.init.distribution,
        init_std=m.init_std,
        init_head_scale=settings.init.head_scale,
        init_count_dropout=settings.init.count_dropout,
    )


# model.source -> builder: rectnet's layer-spec nets, or a timm architecture converted by rectnet.convert.
SOURCES: Registry[Callable[[TrainConfig, int, int, bool], nn.Module]] = Registry("model source")
SOURCES.register("rectnet")(_build_spec)
SOURCES.register("timm")(_build_timm)
