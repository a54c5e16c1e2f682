"""Variants: what the papers' table rows vary (activation and where it goes, filter widths), read from a config.

The variant is activation (+ its slope for PReLU / leaky ReLU), `act_at`, `halve_at`, `width` and `base_act`.
Equivalent placements are merged: `act_at` listing every layer that takes the studied activation equals
`act_at=null`, and halving a classifier layer (whose filters `spec.build` never scales) is dropped, so
`experiment=allcnn_b_crelu_all` (halve_at 1..12) and halve_at 1..11 are one variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from rectnet.layers.activations import parameter_defaults
from rectnet.models import MODELS, spec_layer_facts

SLOPE_DEFAULTS = parameter_defaults("slope")  # activations whose slope matters, with their classes' defaults


@dataclass(frozen=True)
class Variant:
    """What the papers' table rows vary: activation and where it goes, filter widths."""

    model: str
    activation: str
    slope: float | None = None
    width: float = 1.0
    act_at: tuple[int, ...] | None = None  # None: every layer that takes the studied activation
    halve_at: tuple[int, ...] = ()
    base_act: str = "relu"

    def label(self) -> str:
        act = self.activation if self.slope is None else f"{self.activation}({self.slope:g})"
        parts = [self.model, act]
        if self.act_at is not None:
            parts.append(f"act_at={list(self.act_at)}")
        if self.halve_at:
            parts.append(f"halve_at={list(self.halve_at)}")
        if self.width != 1.0:
            parts.append(f"width={self.width:g}")
        if self.act_at is not None and self.base_act != "relu":
            parts.append(f"base={self.base_act}")
        return " ".join(parts)


@cache
def _layer_roles(model: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(weight layers that take the studied activation, classifier layers), 1-based; None if unknown."""
    if model not in MODELS:
        return None
    layers = spec_layer_facts(model)
    return tuple(f.index for f in layers if f.studied), tuple(f.index for f in layers if f.classifier)


def make_variant(
    model: str,
    activation: str,
    slope: float | None = None,
    width: float = 1.0,
    act_at: Sequence[int] | None = None,
    halve_at: Sequence[int] = (),
    base_act: str = "relu",
) -> Variant:
    """The canonical Variant: placements that build the same network compare equal (module docstring)."""
    slope = (slope if slope is not None else SLOPE_DEFAULTS[activation]) if activation in SLOPE_DEFAULTS else None
    roles = _layer_roles(model)
    placed = None if act_at is None else tuple(sorted(set(act_at)))
    halved = tuple(sorted(set(halve_at)))
    if roles is not None:
        main, classifiers = roles
        halved = tuple(i for i in halved if i not in classifiers)
        if placed is not None:
            placed = tuple(i for i in placed if i in main)
            if not placed:  # the activation is nowhere: the network is the base activation's
                activation, slope, placed = base_act, None, None
            elif placed == main:
                placed = None
    if activation == base_act:
        placed = None
    return Variant(model, activation, slope, float(width), placed, halved, base_act)


def _model_label(model: dict) -> str:
    """A rectnet net by its name; a timm net (model.source=timm) as timm:<name>[stem, timm arguments]."""
    if model.get("source", "rectnet") == "rectnet":
        return model["name"]
    extras = ["cifar_stem"] if model.get("cifar_stem") else []
    extras += [f"{k}={v}" for k, v in sorted((model.get("kwargs") or {}).items())]
    return f"timm:{model['name']}" + (f"[{', '.join(extras)}]" if extras else "")


def _activation_label(act: dict) -> str:
    """An activation by its name; a user's own (activation=custom) by what it imports, so that runs of different
    custom activations are different rows."""
    return f"custom:{act['target']}" if act["name"] == "custom" and act.get("target") else act["name"]


def variant_from_config(config: dict) -> Variant:
    model, act = config["model"], config["activation"]
    return make_variant(
        _model_label(model),
        _activation_label(act),
        act.get("slope"),
        model.get("width", 1.0),
        model.get("act_at"),
        model.get("halve_at") or (),
        model.get("base_act", "relu"),
    )
