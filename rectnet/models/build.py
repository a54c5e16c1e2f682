"""Config -> model: the one place where the activation, init and model config groups meet.

The engine, eval, summary, analysis and scripts build their models here; `build_model` is the call.
"""

from __future__ import annotations

import logging

from torch import nn

from rectnet.config import ConfigError, TrainConfig
from rectnet.convert import create_timm
from rectnet.layers.activations import make_activation
from rectnet.models import MODELS, SpecNet, create
from rectnet.models.spec import min_input_size

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
    `model.source` is rectnet or timm (`ModelConfig.validate` refuses any other).
    """
    if settings.model.source == "timm":
        return _build_timm(settings, num_classes, in_chans)
    if check_input:
        check_input_size(settings.model.name, settings.dataset.image_size)
    return build_spec_net(settings, num_classes, in_chans)


def build_spec_net(settings: TrainConfig, num_classes: int, in_chans: int = 3, initialise: bool = True) -> SpecNet:
    """One of rectnet's layer-spec nets (rectnet/models), as the config says, on the current device.

    `initialise=False` keeps PyTorch's default init: for a net built on the meta device, for its shapes only
    (the init reads values, PReLU's slopes, that a meta tensor does not hold).
    """
    m = settings.model
    return create(
        m.name,
        num_classes=num_classes,
        in_chans=in_chans,
        act=make_activation(settings.activation.name, **settings.activation.params()),
        width=m.width,
        act_at=m.act_at,
        halve_at=m.halve_at,
        base_act=m.base_act,
        dropout=m.dropout,
        init=settings.init.spec() if initialise else None,
        init_std=m.init_std,
    )


def _build_timm(settings: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """A timm architecture, converted (rectnet/convert); its example forward at image_size checks the input."""
    m = settings.model
    _note_unused_dropout(settings)
    model, report = create_timm(
        m.name,
        num_classes,
        in_chans,
        image_size=settings.dataset.image_size,
        cifar_stem=m.cifar_stem,
        kwargs=m.kwargs,
        activation=make_activation(settings.activation.name, **settings.activation.params()),
        init=settings.init.spec(),
        act_at=m.act_at,
        base_act=m.base_act,
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
