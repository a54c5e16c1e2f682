"""Config -> model: the one place where the activation, init and model config groups meet."""

from __future__ import annotations

from rectnet.config import TrainConfig
from rectnet.layers.activations import make_activation
from rectnet.models import SpecNet, create


def build_model(settings: TrainConfig, num_classes: int, in_chans: int = 3) -> SpecNet:
    """Build and initialise `settings.model` with `settings.activation` and `settings.init`."""
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
        init_head=settings.init.head,
        init_count_dropout=settings.init.count_dropout,
    )
