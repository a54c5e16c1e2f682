"""Weight initialization policies: "Kaiming" (He et al. 2015 §2.2) and "Xavier" (Glorot & Bengio 2010).

`init_model` walks the model's conv and linear layers in registration order. Each layer gets
std = gain / sqrt(fan), biases 0 (§2.2: "b = 0"). The gain comes from the rectifiers around the layer
(see `rectnet.layers.activations` for the derivation of each gain):

* mode `fan_in` (Eq. 10, the forward condition): fan = k²·c_in and the gain is the forward gain of the
  rectifier that produced this layer's input. The first layer reads raw pixels; like the paper ("the
  factor 1/2 does not matter if it just exists on one layer") it uses the rectifier that follows it.
* mode `fan_out` (Eq. 14, the backward condition): fan = k²·d (the layer's own filters) and the gain is
  the backward gain of the rectifier that follows the layer; a layer followed by none (the classifier)
  gets gain 1 (f' = 1).

A layer whose module carries `init_std` (set by a model config, e.g. the PReLU paper's fc std
0.01/0.01/0.001, §3) gets that std instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rectnet.layers.activations import Rectifier
from rectnet.registry import Registry

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
FAN_MODES = ("fan_in", "fan_out")


@dataclass
class WeightLayer:
    """A conv/linear layer with the rectifiers that feed it and that follow it (None where there is none)."""

    name: str
    module: nn.Module
    before: Rectifier | None
    after: Rectifier | None


def weight_layers(model: nn.Module) -> list[WeightLayer]:
    """Conv/linear layers in order, each paired with its neighbouring rectifiers."""
    layers: list[WeightLayer] = []
    last_act: Rectifier | None = None
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            layers.append(WeightLayer(name, module, last_act, None))
        elif isinstance(module, Rectifier):
            last_act = module
            if layers and layers[-1].after is None:
                layers[-1].after = module
    return layers


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) = (k²·c_in, k²·d) for a conv weight (d, c_in, k, k); (in, out) for a linear one."""
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _fill(weight: torch.Tensor, std: float, distribution: str, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        if distribution == "normal":
            weight.normal_(0.0, std, generator=generator)
        elif distribution == "uniform":
            bound = math.sqrt(3.0) * std  # U(-b, b) has variance b²/3
            weight.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(f"unknown init distribution {distribution!r}; valid: normal, uniform")


def _check_mode(mode: str, valid: tuple[str, ...]) -> None:
    if mode not in valid:
        raise ValueError(f"unknown init mode {mode!r}; valid: {', '.join(valid)}")


InitFn = Callable[[WeightLayer, str], float]
INITS: Registry[InitFn] = Registry("init")


@INITS.register("kaiming")
def kaiming_std(layer: WeightLayer, mode: str) -> float:
    """He et al. 2015: Eq. 10 (fan_in) / Eq. 14 (fan_out), gains per rectifier (Eq. 15 for PReLU)."""
    _check_mode(mode, FAN_MODES)
    fan_in, fan_out = fans(layer.module.weight)
    if mode == "fan_in":
        act = layer.before or layer.after
        return (act.forward_gain() if act else 1.0) / math.sqrt(fan_in)
    return (layer.after.backward_gain() if layer.after else 1.0) / math.sqrt(fan_out)


@INITS.register("xavier")
def xavier_std(layer: WeightLayer, mode: str) -> float:
    """Glorot & Bengio 2010 as He et al. compare it: n Var[w] = 1, blind to the rectifier (§2.2).

    `fan_in` is the paper's "n_l Var[w_l] = 1" and Caffe's default xavier filler; `avg` is Glorot's own
    2 / (fan_in + fan_out) (He et al., footnote 3).
    """
    _check_mode(mode, (*FAN_MODES, "avg"))
    fan_in, fan_out = fans(layer.module.weight)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "avg": (fan_in + fan_out) / 2}[mode]
    return 1.0 / math.sqrt(fan)


def init_model(
    model: nn.Module,
    name: str = "kaiming",
    mode: str = "fan_in",
    distribution: str = "normal",
    generator: torch.Generator | None = None,
) -> list[tuple[str, float]]:
    """Initialise every conv/linear layer of `model`; returns (layer name, std used) in order."""
    std_of = INITS.get(name)
    used = []
    for layer in weight_layers(model):
        std = getattr(layer.module, "init_std", None) or std_of(layer, mode)
        _fill(layer.module.weight, std, distribution, generator)
        if layer.module.bias is not None:
            nn.init.zeros_(layer.module.bias)
        used.append((layer.name, std))
    return used
