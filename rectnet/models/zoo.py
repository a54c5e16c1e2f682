"""The model zoo: rectnet's nets by name (`MODELS`: name -> layer-spec list), built by `create` from Hydra
config or by `timm.create_model(name)`; a model file adds its nets with `@register(name)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import torch
import wrapt

from rectnet.layers.activations import ActivationFactory, make_activation
from rectnet.layers.facts import LayerFacts
from rectnet.layers.init import InitSpec, init_model
from rectnet.models.spec import LayerSpec, SpecNet, build
from rectnet.registry import Registry

SpecFn = Callable[[], list[LayerSpec]]
MODELS: Registry[SpecFn] = Registry("model")

# Keyword arguments that timm.create_model always passes and that carry nothing for rectnet's models.
_TIMM_ONLY = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def create(
    name: str,
    num_classes: int = 10,
    in_chans: int = 3,
    act: str | ActivationFactory = "relu",
    width: float = 1.0,
    act_at: Sequence[int] | None = None,
    halve_at: Sequence[int] = (),
    base_act: str = "relu",
    dropout: float | None = None,
    init: InitSpec | str | None = InitSpec(),
    init_std: dict[int, float] | None = None,
    **act_params: Any,
) -> SpecNet:
    """Build registered model `name` with activation `act` (a registry name plus `act_params`, or a factory).

    `init`: the init policy (`rectnet.layers.init.InitSpec`, or an init's name with the spec's other defaults);
    `init=None` leaves PyTorch's default init. `init_std` maps 1-based weight-layer indices to a fixed std (a
    paper-specific override such as the PReLU paper's fc std 0.01/0.01/0.001).
    """
    factory = act if isinstance(act, ActivationFactory) else make_activation(act, **act_params)
    model = build(MODELS.get(name)(), factory, num_classes, in_chans, width, act_at, halve_at, base_act, dropout)
    _set_init_std(model, init_std or {})
    if init is not None:
        init_model(model, init)
    return model


def _set_init_std(model: SpecNet, init_std: dict[int, float]) -> None:
    layers = model.layer_facts
    for index, std in init_std.items():
        if not 1 <= int(index) <= len(layers):
            raise ValueError(f"init_std names weight layer {index}; this model has 1..{len(layers)}")
        model.get_submodule(layers[int(index) - 1].module).init_std = float(std)


@cache
def spec_layer_facts(name: str) -> tuple[LayerFacts, ...]:
    """The layer facts of registered model `name` as its spec list builds it (every layer that takes the
    studied activation takes it); built without memory (meta device), for readers that need no weights."""
    with torch.device("meta"):
        return create(name, init=None).layer_facts


def register(name: str) -> Callable[[SpecFn], SpecFn]:
    """Register a spec function under `name` for rectnet's config and for `timm.create_model(name)`."""

    def add(spec_fn: SpecFn) -> SpecFn:
        MODELS.register(name)(spec_fn)

        def entrypoint(**kwargs: Any) -> SpecNet:
            for key in _TIMM_ONLY:
                if kwargs.pop(key, None) and key == "pretrained":
                    raise ValueError(f"rectnet has no pretrained weights for {name}")
            return create(name, **kwargs)

        entrypoint.__name__ = name
        entrypoint.__qualname__ = name
        entrypoint.__module__ = spec_fn.__module__
        entrypoint.__doc__ = spec_fn.__doc__
        # timm learns the name when it is imported (at once if it already is): `import rectnet` alone does not
        # pay for importing timm (and the torchvision models it imports), about 1.5 s of every process start.
        wrapt.register_post_import_hook(lambda timm: timm.models.register_model(entrypoint), "timm")
        return spec_fn

    return add
