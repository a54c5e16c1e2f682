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

Modules are named as the papers name layers: a weight layer by its spec's `name` (He et al. 2015's stage
names, conv21 ... fc1) or else conv<index> / fc<index> (Shang et al. 2016's numbering), its BatchNorm and
activation after it (conv3_bn, conv3_prelu), and layers without weights by kind, numbered where a kind
recurs (pool1, pool2, dropout1, spp, avgpool). The built network publishes its weight layers' facts as
`model.layer_facts` (`rectnet.layers.facts`), the one numbering every other part of rectnet reads.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from torch import nn

from rectnet.layers.activations import ActivationFactory, make_activation
from rectnet.layers.facts import LayerFacts, walk_layer_facts

CLASSES = -1  # `out` of the classifier layer: num_classes features after its activation, never scaled by width


@dataclass(frozen=True)
class Conv:
    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    act: str | None = "main"  # "main": the activation under study; a registry name: fixed; None: none
    bn: bool = False
    name: str | None = None  # the paper's name for the layer; None: conv<index>


@dataclass(frozen=True)
class Linear:
    out: int
    act: str | None = "main"
    bn: bool = False
    name: str | None = None  # None: fc<index>


@dataclass(frozen=True)
class Pool:
    kernel: int
    stride: int
    padding: int = 0
    kind: str = "max"
    ceil_mode: bool = False
    starts_head: ClassVar[bool] = False
    module_name: ClassVar[str] = "pool"

    def to_module(self, channels: int) -> nn.Module:
        pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[self.kind]
        return pool(self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)


@dataclass(frozen=True)
class Dropout:
    p: float
    starts_head: ClassVar[bool] = False
    module_name: ClassVar[str] = "dropout"

    def to_module(self, channels: int) -> nn.Module:
        return nn.Dropout(self.p)


@dataclass(frozen=True)
class GlobalAvgPool:
    """Global average pooling to one vector per image; starts the network's head."""

    starts_head: ClassVar[bool] = True
    module_name: ClassVar[str] = "avgpool"

    def to_module(self, channels: int) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


@dataclass(frozen=True)
class Flatten:
    """Flattens the feature map; starts the network's head."""

    starts_head: ClassVar[bool] = True
    module_name: ClassVar[str] = "flatten"

    def to_module(self, channels: int) -> nn.Module:
        return nn.Flatten()


class PlainSpec(Protocol):
    """A layer without weights: pooling, dropout, SPP (`rectnet.layers.spp`), ...

    It may also define `out_channels(channels) -> int`, the features per position it emits for `channels`
    input channels; without it the count passes through unchanged (`_plain_out_channels`). `module_name` names
    its module (pool1, spp).
    """

    starts_head: ClassVar[bool]
    module_name: ClassVar[str]

    def to_module(self, channels: int) -> nn.Module: ...


LayerSpec = Conv | Linear | PlainSpec


class SpecNet(nn.Module):
    """`features` (fully convolutional, any input size) followed by `head` (pooling and classifier);
    `layer_facts`: its weight layers (`rectnet.layers.facts`)."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.layer_facts: tuple[LayerFacts, ...] = ()  # set by `build` once the modules exist

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


def weight_layer_count(specs: Sequence[LayerSpec]) -> int:
    """The conv and fc layers of a spec list: the weight layers that act_at, halve_at and init_std number 1..n."""
    return sum(isinstance(s, (Conv, Linear)) for s in specs)


def check_layer_indices(specs: Sequence[LayerSpec], model: str = "this model", **indices: Collection[int]) -> None:
    """Refuse weight-layer indices (`act_at=[...]`, `halve_at=[...]`, `init_std={...}`) outside 1..n."""
    count = weight_layer_count(specs)
    for key, listed in indices.items():
        bad = [i for i in listed if not 1 <= int(i) <= count]
        if bad:
            raise ValueError(f"{key}={listed}: {model} has {count} weight layers, numbered 1..{count}; got {bad}")


@dataclass(frozen=True)
class PlannedLayer:
    """One layer of a spec list as `build` makes it: the channels it reads and emits (what the next layer reads)
    and, for a weight layer, its filters and the activation after it."""

    spec: LayerSpec
    name: str
    channels_in: int
    channels_out: int
    filters: int = 0  # weight layers only
    act: ActivationFactory | None = None
    studied: bool = False  # the activation under study follows it


def plan(
    specs: Sequence[LayerSpec],
    act: ActivationFactory,
    num_classes: int,
    in_chans: int = 3,
    width: float = 1.0,
    act_at: Sequence[int] | None = None,
    halve_at: Sequence[int] = (),
    base_act: str = "relu",
    dropout: float | None = None,
) -> list[PlannedLayer]:
    """Every layer's channels, filters and activation as `build` makes them, without making a module."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    check_layer_indices(specs, act_at=list(act_at or ()), halve_at=list(halve_at))
    base = make_activation(base_act)
    channels, index, layers = in_chans, 0, []
    for spec, name in zip(specs, _module_names(specs), strict=True):
        if isinstance(spec, (Conv, Linear)):
            index += 1
            chosen = spec.act == "main" and (act_at is None or index in act_at)
            layer_act = _activation_for(spec.act, chosen, act, base)
            if spec.out == CLASSES:
                out = _classifier_filters(num_classes, layer_act)
            else:
                out = _scaled(spec.out, width * (0.5 if index in halve_at else 1.0))
            emitted = layer_act.out_channels(out) if layer_act else out
            layers.append(PlannedLayer(spec, name, channels, emitted, out, layer_act, chosen))
        else:
            if dropout is not None and isinstance(spec, Dropout):
                spec = Dropout(dropout)
            emitted = _plain_out_channels(spec, channels)
            layers.append(PlannedLayer(spec, name, channels, emitted))
        channels = emitted
    return layers


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
    layers = plan(specs, act, num_classes, in_chans, width, act_at, halve_at, base_act, dropout)
    features: OrderedDict[str, nn.Module] = OrderedDict()
    head: OrderedDict[str, nn.Module] = OrderedDict()
    target = features
    for layer in layers:
        spec = layer.spec
        if isinstance(spec, (Conv, Linear)):
            target.update(_weight_layer(spec, layer.name, layer.channels_in, layer.filters, layer.act))
        else:
            if spec.starts_head:
                target = head
            target[layer.name] = spec.to_module(layer.channels_in)
    model = SpecNet(nn.Sequential(features), nn.Sequential(head))
    weights = [layer for layer in layers if isinstance(layer.spec, (Conv, Linear))]
    model.layer_facts = walk_layer_facts(model, [w.name for w in weights], [w.studied for w in weights])
    return model


@dataclass(frozen=True)
class Footprint:
    """What a planned network costs at a square input: its parameters, and per image the outputs of its weight
    layers (each kept for the backward pass)."""

    parameters: int
    outputs: int


def footprint(layers: Sequence[PlannedLayer], image_size: int) -> Footprint:
    """Exact integers, so no size overflows: the weights and biases (or BatchNorm's two vectors) of the conv and fc
    layers, PReLU slopes left out, and their outputs for one `image_size` x `image_size` image."""
    side, parameters, outputs = image_size, 0, 0
    for layer in layers:
        spec = layer.spec
        if isinstance(spec, (Conv, Linear)):
            kernel = spec.kernel**2 if isinstance(spec, Conv) else 1
            parameters += kernel * layer.channels_in * layer.filters + (2 if spec.bn else 1) * layer.filters
            side = _side_after(spec, side)
            outputs += layer.filters * side * side
        else:
            side = 1 if spec.starts_head else _side_after(spec, side)  # the head's layers read vectors
    return Footprint(parameters, outputs)


def _module_names(specs: Sequence[LayerSpec]) -> list[str]:
    """Each spec's module name (module docstring); two layers of one name are an error in the spec list."""
    kinds = Counter(s.module_name for s in specs if not isinstance(s, (Conv, Linear)))
    names, seen, index = [], Counter(), 0
    for spec in specs:
        if isinstance(spec, (Conv, Linear)):
            index += 1
            names.append(spec.name or f"{'conv' if isinstance(spec, Conv) else 'fc'}{index}")
        else:
            kind = spec.module_name
            seen[kind] += 1
            names.append(f"{kind}{seen[kind]}" if kinds[kind] > 1 else kind)
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"layer names {repeated} occur more than once in the spec list")
    return names


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
    choice: str | None, studied: bool, act: ActivationFactory, base: ActivationFactory
) -> ActivationFactory | None:
    if choice is None:
        return None
    if choice != "main":
        return make_activation(choice)
    return act if studied else base


def _weight_layer(
    spec: Conv | Linear, name: str, c_in: int, out: int, act: ActivationFactory | None
) -> dict[str, nn.Module]:
    """The layer's modules by name: the conv / linear, its BatchNorm, its activation."""
    if isinstance(spec, Conv):
        layers: dict[str, nn.Module] = {
            name: nn.Conv2d(c_in, out, spec.kernel, spec.stride, spec.padding, bias=not spec.bn)
        }
        norm = nn.BatchNorm2d
    else:
        layers = {name: nn.Linear(c_in, out, bias=not spec.bn)}
        norm = nn.BatchNorm1d
    if spec.bn:
        layers[f"{name}_bn"] = norm(out)
    if act is not None:
        layers[f"{name}_{act.name}"] = act(out)
    return layers
