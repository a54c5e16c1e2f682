"""Layer facts: one list per network of its weight layers, numbered and named once, read by everything else.

The papers count and name weight layers (convolutions and fully connected layers) in forward order: He et al.
2015 Table 1 names them by stage (conv1, conv21..conv24, conv31..conv36, fc1..fc3), Shang et al. 2016 by their
position (conv1..conv9; "CReLU (conv1,4,7)"). Configs index them the same way, 1-based (`model.act_at`,
`model.halve_at`, `model.init_std`). `LayerFacts` holds what is known of one such layer as plain data (names,
numbers, module paths; no modules, no tensors), so that any builder or converter can produce the list and any
reader can use it without knowing how the network was made:

* rectnet's builder (`rectnet.models.spec.build`) publishes the list on every network it builds as
  `model.layer_facts`, under the names of the network's paper;
* any other network (a plain `nn.Sequential`, a converted model) can publish its own, or is read off its
  modules by `walk_layer_facts`;
* `layer_facts(model)` returns either; init (`rectnet.layers.init`), the tables' layer roles, the analyses,
  TensorBoard's slope histograms and `rectnet.summary` all read it, and `weight_layers(model)` pairs each
  entry with the model's modules for those that compute with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from rectnet.layers.activations import ACTIVATIONS, Rectifier

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@dataclass(frozen=True)
class LayerFacts:
    """One weight layer (convolution or fully connected) of a network, in forward order.

    `keep_in` is the product of the keep probabilities 1 - p of the dropout layers between the previous
    weight layer and this one, `keep_out` the same between this layer and the next one (1 without dropout):
    inverted dropout scales the signal's variance by 1/(1-p), which init counts (`rectnet.layers.init`).
    """

    index: int  # 1-based position among the network's weight layers (model.act_at, model.init_std count so)
    name: str  # the paper's name: conv1, conv21 (He et al. Table 1), fc1; conv<index> / fc<index> by default
    module: str  # path of the conv / linear module in the model, as model.get_submodule and state_dict name it
    kind: str  # "conv" or "fc"
    in_channels: int  # channels (conv) or features (fc) it reads
    out_channels: int  # its filters (conv) or output features (fc)
    norm: str | None  # path of the BatchNorm right after it; None: none
    act: str | None  # path of the activation module that follows it (after its BatchNorm); None: none
    activation: str | None  # that activation's registry name (rectnet.layers.activations.ACTIVATIONS)
    studied: bool  # the activation is the one the run studies (config `activation`), not a base or fixed one
    classifier: bool  # it computes the class scores (directly, or through its activation as in CReLU (all))
    keep_in: float = 1.0
    keep_out: float = 1.0


def walk_layer_facts(
    model: nn.Module, names: Sequence[str] | None = None, studied: Sequence[bool] | None = None
) -> tuple[LayerFacts, ...]:
    """The facts of `model`'s weight layers, read off its modules in registration order (forward order for
    the sequential networks here): each layer's first BatchNorm and first rectifier before the next weight
    layer, and the dropouts between weight layers. The last weight layer is the classifier.

    `names` and `studied`, one per weight layer, are what only a network's builder knows; without them the
    layers are named conv<index> / fc<index> (Shang et al.'s numbering) and no activation counts as studied.
    """
    found: list[dict] = []
    keep = 1.0
    for path, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            if found:
                found[-1]["keep_out"] = keep
            found.append(_weight_entry(path, module, keep))
            keep = 1.0
        elif found and isinstance(module, NORMS) and found[-1]["norm"] is None and found[-1]["act"] is None:
            found[-1]["norm"] = path
        elif found and isinstance(module, Rectifier) and found[-1]["act"] is None:
            found[-1] |= {"act": path, "activation": activation_name(module)}
        elif isinstance(module, DROPOUTS):
            keep *= 1.0 - module.p
    names = names or [f"{layer['kind']}{i}" for i, layer in enumerate(found, 1)]
    studied = studied or [False] * len(found)
    if not len(names) == len(studied) == len(found):
        raise ValueError(f"{len(found)} weight layers, but {len(names)} names and {len(studied)} studied flags")
    last = len(found)
    return tuple(
        LayerFacts(i, name, studied=chosen, classifier=i == last, **layer)
        for i, (layer, name, chosen) in enumerate(zip(found, names, studied, strict=True), 1)
    )


def _weight_entry(path: str, module: nn.Module, keep_in: float) -> dict:
    """A weight layer's own facts; its BatchNorm and activation are filled in as the walk meets them."""
    if isinstance(module, nn.Linear):
        kind, channels = "fc", (module.in_features, module.out_features)
    else:
        kind, channels = "conv", (module.in_channels, module.out_channels)
    entry = {"module": path, "kind": kind, "in_channels": channels[0], "out_channels": channels[1], "keep_in": keep_in}
    return entry | {"norm": None, "act": None, "activation": None}


def activation_name(module: Rectifier) -> str:
    """The registry name of a rectifier module (its class name where it is not registered)."""
    return next((name for name in ACTIVATIONS if ACTIVATIONS.get(name) is type(module)), type(module).__name__)


def layer_facts(model: nn.Module) -> tuple[LayerFacts, ...]:
    """The facts `model` publishes (`model.layer_facts`), else those its modules show (`walk_layer_facts`)."""
    published = getattr(model, "layer_facts", None)
    return tuple(published) if published else walk_layer_facts(model)


@dataclass(frozen=True)
class WeightLayer:
    """A layer's facts with its modules in one model: what init and the analyses compute with.

    `after` is the rectifier that follows the layer; `before` the one whose output it reads (the last one
    before it; None for the first layer, which reads the input).
    """

    facts: LayerFacts
    module: nn.Module
    before: Rectifier | None
    after: Rectifier | None

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def is_conv(self) -> bool:
        return self.facts.kind == "conv"


def weight_layers(model: nn.Module) -> list[WeightLayer]:
    """`layer_facts(model)` with each layer's conv/linear module and the rectifiers around it."""
    layers, before = [], None
    for facts in layer_facts(model):
        after = model.get_submodule(facts.act) if facts.act else None
        layers.append(WeightLayer(facts, model.get_submodule(facts.module), before, after))
        before = after if after is not None else before
    return layers
