"""Weight initialization policies: "Kaiming" (He et al. 2015 §2.2), "Xavier" (Glorot & Bengio 2010) and the
data-free start of LSUV (Mishkin & Matas 2016: orthonormal weights; the data-driven rescaling is
`rectnet.layers.lsuv`, which the engine runs on a training batch before step 0).

`init_model` goes through the model's weight layers in order (its layer facts, `rectnet.layers.facts`).
Each layer gets std = gain / sqrt(fan), biases 0 (§2.2: "b = 0"; a layer that feeds AVR: AVR's `initial_bias`,
see `rectnet.layers.activations.AbsReLU`). The gain comes from the activations around the layer, read through
`rectnet.layers.gain.gains` (closed forms for the rectifiers, `rectnet.layers.activations`; quadrature for any
other pointwise f, `rectnet.layers.gain`; or the gain a config states):

* mode `fan_in` (Eq. 10, the forward condition): fan = k²·c_in and the gain is the forward gain of the
  activation that produced this layer's input. The first layer reads the input. For a rectifier (positively
  homogeneous: its factor per layer does not depend on the scale) it uses, like the paper ("the factor 1/2
  does not matter if it just exists on one layer"), the rectifier that follows it. For any other f the scale
  does matter: the gains keep the fixed point q* = 1 of unit pre-activation variance, and the first layer
  gets gain 1 (the linear case, Eq. 7 with E[x²] = 1 for normalised inputs), which puts it there.
* mode `fan_out` (Eq. 14, the backward condition): fan = k²·d (the layer's own filters) and the gain is
  the backward gain of the activation that follows the layer; a layer followed by none (the classifier)
  gets gain 1 (f' = 1).

Distribution `orthogonal` (Saxe et al. 2014) draws the weight, as a (d, k²·c_in) matrix, with orthonormal rows
(or columns, when d > k²·c_in), scaled so that its entries' RMS is the std: the same variance as a Gaussian of
that std, with no two filters alike. init=lsuv starts from it at std 1/sqrt(fan_in), orthonormal rows exactly
(Mishkin & Matas 2016, Algorithm 1: "pre-initialize network with orthonormal matrices").

A layer whose module carries `init_std` (set by a model config, e.g. the PReLU paper's fc std
0.01/0.01/0.001, §3) gets that std instead.

Two rules the paper's derivation leaves to the network at hand (rectnet's choices, both switchable):

* Dropout (`count_dropout`, kaiming only). Eq. 7, Var[y_l] = n_l Var[w_l] E[x_l²], holds for whatever
  layer l reads. Inverted dropout with drop rate p (what nn.Dropout does in training) scales the surviving
  inputs by 1/(1-p), so E[x_l²] = E[f(y_{l-1})²] / (1-p): each dropout layer multiplies the forward signal's
  variance by 1/(1-p), and nothing in Eq. 10 undoes it. ConvPool-CNN-C's dropouts (0.2 on the input, 0.5
  after each pool) compound to 1/(0.8·0.5·0.5) = 5 before conv7. Counting it, the forward condition
  becomes n_l Var[w_l] = (1-p)/q, i.e. the layer after the dropout gets its gain times sqrt(1-p)
  (`LayerFacts.keep_in`). Backward, the same mask scales Δy of the layer before the dropout by 1/(1-p)
  (variance x 1/(1-p)), so under Eq. 14 that layer's gain is multiplied by sqrt(1-p) (`keep_out`). Without
  dropout nothing changes, so the He et al. nets' conv layers get the paper's values exactly (their
  dropout sits before fc2 and fc3, whose stds the paper fixes, §3).
* The class-score layer (`head_scale`, every init). It is followed by the softmax, not a rectifier, and
  Eq. 10's variance-keeping argument is about signals that later layers read, not about the logits: He et
  al. give their last fc layer std 0.001 (§3), 1/22 of Eq. 10's sqrt(2/4096) = 0.022. rectnet multiplies
  the init's own std for that layer by `head_scale`, by default 0: the classifier starts at zero, as in
  Fixup (Zhang et al. 2019, §3). Every class score is then 0 and the first loss exactly ln(classes), and the
  curvature that a large random classifier puts on every layer below it (the Gauss-Newton term scales with
  its weights squared) is absent at the start, which keeps SGD stable at the papers' learning rates
  (measured: `rectnet.analysis.sharpness`, docs/recipes.md). The classifier learns from the first step (its
  gradient is the features times the softmax error), the layers below from the second. A classifier
  followed by a rectifier (CReLU (all) of the CReLU paper) keeps the rule: a rectifier's gradient at
  exactly 0 is 0. `head_scale=1` applies the init's rule unchanged, values between scale it; a model's
  `init_std` for a layer wins over all of them.

One option the derivation suggests but the papers do not use (`center`: off in InitSpec and in the configs,
except that `activation=softplus` turns it on through `activation.center`):

* Centring. Eq. 7 counts E[x²], the mean of the input included: an activation with a large mean (softplus:
  E[f] = 0.81 of sqrt(E[f²]) = 0.96 under N(0, 1)) adds nearly the same vector to every image's
  pre-activation, so the part that differs between images shrinks layer by layer, while the gain keeps the
  total (docs/activations.md, "What the gains do not hold"). `center=true` gives every layer that reads an
  activation the bias b = -E[f(z)] sum(W) (per output unit), so its pre-activation has mean 0 at init, and,
  under fan_in, its std times sqrt(E[f²] / Var[f]): with the mean removed, Eq. 7's E[x²] is Var[x]. The
  expectations are under z ~ N(0, 1), the fixed point the gains keep; a max-pool between the activation and
  the layer raises the mean, which the bias does not follow. Layers without a bias (before a BatchNorm, which
  removes the mean itself) and the first layer (it reads the input) are left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from rectnet.layers.facts import WeightLayer, weight_layers
from rectnet.layers.gain import gains, input_mean
from rectnet.registry import Registry

FAN_MODES = ("fan_in", "fan_out")
DISTRIBUTIONS = ("normal", "uniform", "orthogonal")


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
        elif distribution == "orthogonal":
            # An orthonormal (rows, cols) matrix has min(rows, cols) unit rows or columns: RMS 1/sqrt(max(rows, cols))
            rows, cols = weight.shape[0], weight[0].numel()
            nn.init.orthogonal_(weight, std * math.sqrt(max(rows, cols)), generator=generator)
        else:
            raise ValueError(f"unknown init distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")


def _check_mode(mode: str, valid: tuple[str, ...]) -> None:
    if mode not in valid:
        raise ValueError(f"unknown init mode {mode!r}; valid: {', '.join(valid)}")


InitFn = Callable[[WeightLayer, str], float]
INITS: Registry[InitFn] = Registry("init")
# the init.mode values each init takes
MODES = {"kaiming": FAN_MODES, "xavier": (*FAN_MODES, "avg"), "lsuv": ("fan_in",)}


def input_gain(layer: WeightLayer) -> float:
    """Eq. 10's gain for the signal `layer` reads: the forward gain of the activation that made it; for the first
    layer, the following activation's if that is homogeneous (He et al. §2.2), else 1 (module docstring)."""
    if layer.before is not None:
        return gains(layer.before).forward
    if layer.after is not None and getattr(layer.after, "homogeneous", False):
        return gains(layer.after).forward
    return 1.0


def output_gain(layer: WeightLayer) -> float:
    """Eq. 14's gain: the backward gain of the activation that follows `layer`; 1 where none does (f' = 1)."""
    return gains(layer.after).backward if layer.after is not None else 1.0


@INITS.register("kaiming")
def kaiming_std(layer: WeightLayer, mode: str) -> float:
    """He et al. 2015: Eq. 10 (fan_in) / Eq. 14 (fan_out), gains per activation (Eq. 15 for PReLU)."""
    _check_mode(mode, MODES["kaiming"])
    fan_in, fan_out = fans(layer.module.weight)
    if mode == "fan_in":
        return input_gain(layer) * math.sqrt(layer.facts.keep_in / fan_in)
    return output_gain(layer) * math.sqrt(layer.facts.keep_out / fan_out)


@INITS.register("xavier")
def xavier_std(layer: WeightLayer, mode: str) -> float:
    """Glorot & Bengio 2010 as He et al. compare it: n Var[w] = 1, blind to the rectifier (§2.2).

    `fan_in` is the paper's "n_l Var[w_l] = 1" and Caffe's default xavier filler; `avg` is Glorot's own
    2 / (fan_in + fan_out) (He et al., footnote 3).
    """
    _check_mode(mode, MODES["xavier"])
    fan_in, fan_out = fans(layer.module.weight)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "avg": (fan_in + fan_out) / 2}[mode]
    return 1.0 / math.sqrt(fan)


@INITS.register("lsuv")
def lsuv_start_std(layer: WeightLayer, mode: str) -> float:
    """Mishkin & Matas 2016's start: 1/sqrt(fan_in), which the `orthogonal` distribution makes orthonormal rows;
    the scale is provisional, `rectnet.layers.lsuv` sets each layer's from the data."""
    _check_mode(mode, MODES["lsuv"])
    return 1.0 / math.sqrt(fans(layer.module.weight)[0])


def is_head(layer: WeightLayer) -> bool:
    """The class-score layer that `head_scale` scales: the classifier, unless a rectifier follows it (module
    docstring: a rectifier's gradient at 0 is 0, so that one keeps the init's rule)."""
    return layer.facts.classifier and layer.after is None


@dataclass(frozen=True)
class InitSpec:
    """One init policy, whole: what `init_model` applies and what `create`, `convert` and `create_timm` pass on.

    The defaults here are rectnet's (the config's `init` group reads them, rectnet/config.py `InitConfig`).
    `head_scale` and `count_dropout`: see the module docstring. Per-layer fixed stds are not part of it: they
    belong to a model (`init_std` of `rectnet.models.create` and `rectnet.convert`).
    """

    name: str = "kaiming"  # INITS: kaiming | xavier | lsuv
    mode: str = "fan_in"  # MODES[name]
    distribution: str = "normal"  # DISTRIBUTIONS: normal | uniform | orthogonal
    head_scale: float = 0.0
    count_dropout: bool = True
    center: bool = False


def init_model(
    model: nn.Module,
    init: InitSpec | str = InitSpec(),
    generator: torch.Generator | None = None,
    layers: list[WeightLayer] | None = None,
) -> list[tuple[str, float]]:
    """Initialise every conv/linear layer of `model` by `init`; returns (layer name, std used) in order.

    `init`: a spec, or an init's name for that init with the spec's other defaults. A layer's own `init_std`
    (0 included) wins. `layers`: the layers with their rectifiers, in data-flow order (`rectnet.convert` reads
    them from the traced graph); default `weight_layers(model)`, registration order.
    """
    spec = InitSpec(init) if isinstance(init, str) else init
    std_of = INITS.get(spec.name)
    if not spec.head_scale >= 0:
        raise ValueError(f"init head_scale must be >= 0, got {spec.head_scale}")
    layers = weight_layers(model) if layers is None else layers
    if not spec.count_dropout:
        layers = [replace(layer, facts=replace(layer.facts, keep_in=1.0, keep_out=1.0)) for layer in layers]
    used = []
    for layer in layers:
        if hasattr(layer.module, "init_std"):
            std = layer.module.init_std
        elif is_head(layer):
            std = spec.head_scale * std_of(layer, spec.mode)
        else:
            std = std_of(layer, spec.mode)
        centred = spec.center and layer.before is not None and not hasattr(layer.module, "init_std")
        mean, ratio = input_mean(layer.before) if centred else (0.0, 1.0)
        if centred and spec.name == "kaiming" and spec.mode == "fan_in":
            std *= math.sqrt(ratio)  # Eq. 7 with Var[x] for E[x²] (module docstring)
        _fill(layer.module.weight, std, spec.distribution, generator)
        if layer.module.bias is not None:
            with torch.no_grad():
                layer.module.bias.copy_(getattr(layer.after, "initial_bias", 0.0) - mean * _fan_in_sum(layer.module))
        used.append((layer.name, std))
    return used


def _fan_in_sum(module: nn.Module) -> torch.Tensor:
    """Each output unit's weights summed over what it reads (a conv's input channels and kernel positions)."""
    weight = module.weight.detach()
    return weight.reshape(weight.shape[0], -1).sum(dim=1)
