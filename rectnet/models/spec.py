"""Architectures as layer-spec lists, and the one loop that turns a list into a network.

A model file only writes its paper's layer list; everything that varies between the papers' variants
is an argument of `build`:

* `act`: the activation under study (a `make_activation` factory), placed after every weight layer
  whose spec says `act="main"`, or only at the weight layers listed in `act_at` (1-based, counting
  conv and fc layers in order, as the papers count "conv1", "fc1"); other layers get `base_act` (ReLU).
* `width` multiplies every layer's filters (CReLU paper: "double", "half"); `halve_at` halves the
  filters of the listed layers (CReLU (conv1,4,7) and the half-filter variants).
* Each layer's `in_channels` is the previous activation's `out_channels` (CReLU doubles), never
  hard-coded. A layer without weights that changes the feature count (SPP flattens C channels into
  C·Σn² features) says so through an optional `out_channels(channels)`.
* A classifier layer (`out=CLASSES`) emits `num_classes` features *after* its activation: with CReLU
  there it gets num_classes/2 filters (Shang et al. 2016 "CReLU (all)", the reading that fits Table 5's
  4.7M). `width` and `halve_at` never change it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from torch import nn

from rectnet.layers.activations import ActivationFactory, make_activation

CLASSES = -1  # `out` of the classifier layer: num_classes features after its activation, never scaled by width


@dataclass(frozen=True)
class Conv:
    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    act: str | None = "main"  # "main": the activation under study; a registry name: fixed; None: none
    bn: bool = False


@dataclass(frozen=True)
class Linear:
    out: int
    act: str | None = "main"
    bn: bool = False


@dataclass(frozen=True)
class Pool:
    kernel: int
    stride: int
    padding: int = 0
    kind: str = "max"
    ceil_mode: bool = False
    starts_head: ClassVar[bool] = False

    def to_module(self, channels: int) -> nn.Module:
        pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[self.kind]
        return pool(self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)


@dataclass(frozen=True)
class Dropout:
    p: float
    starts_head: ClassVar[bool] = False

    def to_module(self, channels: int) -> nn.Module:
        return nn.Dropout(self.p)


@dataclass(frozen=True)
class GlobalAvgPool:
    """Global average pooling to one vector per image; starts the network's head."""

    starts_head: ClassVar[bool] = True

    def to_module(self, channels: int) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


@dataclass(frozen=True)
class Flatten:
    """Flattens the feature map; starts the network's head."""

    starts_head: ClassVar[bool] = True

    def to_module(self, channels: int) -> nn.Module:
        return nn.Flatten()


class PlainSpec(Protocol):
    """A layer without weights: pooling, dropout, SPP (`rectnet.layers.spp`), ...

    It may also define `out_channels(channels) -> int`, the features per position it emits for `channels`
    input channels; without it the count passes through unchanged (`_plain_out_channels`).
    """

    starts_head: ClassVar[bool]

    def to_module(self, channels: int) -> nn.Module: ...


LayerSpec = Conv | Linear | PlainSpec


class SpecNet(nn.Module):
    """`features` (fully convolutional, any input size) followed by `head` (pooling and classifier)."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x):
        return self.head(self.features(x))


def _side_after(spec: LayerSpec, side: int) -> int:
    """The side of a square map after one feature layer (PyTorch's conv/pool arithmetic); <1: no output."""
    if not isinstance(spec, (Conv, Pool)):
        return side  # dropout, activations; the head's pooling (global, SPP) takes any map
    span = side + 2 * spec.padding - spec.kernel
    if isinstance(spec, Pool) and spec.ceil_mode:  # windows may hang over the edge, but must start inside
        out = -(-span // spec.stride) + 1
        return out - 1 if (out - 1) * spec.stride >= side + spec.padding else out
    return span // spec.stride + 1 if span >= 0 else 0  # 0: kernel larger than the padded input


def min_input_size(specs: Sequence[LayerSpec]) -> int:
    """The smallest square input whose every feature map, up to the head, is at least 1x1."""

    def fits(side: int) -> bool:
        for spec in specs:
            if getattr(spec, "starts_head", False):
                return True
            side = _side_after(spec, side)
            if side < 1:
                return False
        return True

    side = 1
    while not fits(side):  # a map only grows with the input, so the first fit is the minimum
        side += 1
    return side


def _scaled(out: int, factor: float) -> int:
    return max(1, round(out * factor))


def _check_indices(name: str, indices: Sequence[int], count: int) -> None:
    bad = [i for i in indices if not 1 <= i <= count]
    if bad:
        raise ValueError(f"{name}={list(indices)}: this model has weight layers 1..{count}, got {bad}")


def build(
    specs: Sequence[LayerSpec],
    act: ActivationFactory,
    num_classes: int,
    in_chans: int = 3,
    width: float = 1.0,
    act_at: Sequence[int] | None = None,
    halve_at: Sequence[int] = (),
    base_act: str = "relu",
    dropout: float | None = None,
) -> SpecNet:
    """Build `specs` into a SpecNet. `dropout`, when given, replaces every Dropout spec's rate."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    n_weight = sum(isinstance(s, (Conv, Linear)) for s in specs)
    _check_indices("act_at", act_at or (), n_weight)
    _check_indices("halve_at", halve_at, n_weight)
    base = make_activation(base_act)

    features: list[nn.Module] = []
    head: list[nn.Module] = []
    target = features
    channels, index = in_chans, 0
    for spec in specs:
        if isinstance(spec, (Conv, Linear)):
            index += 1
            layer_act = _activation_for(spec.act, index, act, act_at, base)
            if spec.out == CLASSES:
                out = _classifier_filters(num_classes, layer_act)
            else:
                out = _scaled(spec.out, width * (0.5 if index in halve_at else 1.0))
            target.extend(_weight_layer(spec, channels, out, layer_act))
            channels = layer_act.out_channels(out) if layer_act else out
        else:
            if spec.starts_head:
                target = head
            if dropout is not None and isinstance(spec, Dropout):
                spec = Dropout(dropout)
            target.append(spec.to_module(channels))
            channels = _plain_out_channels(spec, channels)
    return SpecNet(nn.Sequential(*features), nn.Sequential(*head))


def _classifier_filters(num_classes: int, act: ActivationFactory | None) -> int:
    """Filters of a CLASSES layer so that num_classes features come out of its activation."""
    multiplier = act.out_channels(1) if act else 1
    if num_classes % multiplier:
        raise ValueError(
            f"{num_classes} classes cannot come out of a classifier followed by {act.name} (x{multiplier})"
        )
    return num_classes // multiplier


def _plain_out_channels(spec: PlainSpec, channels: int) -> int:
    out_channels = getattr(spec, "out_channels", None)
    return out_channels(channels) if out_channels else channels


def _activation_for(
    choice: str | None, index: int, act: ActivationFactory, act_at: Sequence[int] | None, base: ActivationFactory
) -> ActivationFactory | None:
    if choice is None:
        return None
    if choice != "main":
        return make_activation(choice)
    return act if act_at is None or index in act_at else base


def _weight_layer(spec: Conv | Linear, c_in: int, out: int, act: ActivationFactory | None) -> list[nn.Module]:
    if isinstance(spec, Conv):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, out, spec.kernel, spec.stride, spec.padding, bias=not spec.bn),
        ]
        if spec.bn:
            layers.append(nn.BatchNorm2d(out))
    else:
        layers = [nn.Linear(c_in, out, bias=not spec.bn)]
        if spec.bn:
            layers.append(nn.BatchNorm1d(out))
    if act is not None:
        layers.append(act(out))
    return layers
