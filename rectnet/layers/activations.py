"""Activations that know their channel arithmetic and their Kaiming gains.

Every activation is a `Rectifier` (the name of the papers' case; GELU, tanh and an activation a user brings are
ones too): an `nn.Module` that says how many channels it emits for `c` input channels (CReLU: 2c) and which gain
the initialization needs around it (`rectnet.layers.init`, which reads every gain through
`rectnet.layers.gain.gains`).

Gains, from the variance argument of He et al. 2015 §2.2. Let y be a zero-mean, symmetric response of
a conv layer, x = f(y) what the next layer reads, and Δ the gradients flowing back.

* Forward (Eq. 7): Var[y_next] = n Var[w] E[x²] with n = k²·(channels the next layer reads). Writing
  q = E[x²] / Var[y] (per channel read by the next layer), Eq. 10 generalizes to n Var[w] = 1/q, i.e.
  std = gain / sqrt(fan_in) with forward gain = 1/sqrt(q). Cross terms vanish because the weights are
  independent and zero-mean, so correlated inputs (CReLU's two halves) do not change the sum.
* Backward (Eq. 11-12): Δy = f'(y) ⊙ Δx; Var[Δx_prev] = n̂ Var[w] Var[Δy] with n̂ = k²·d (the layer's
  own filters). Writing r = Var[Δy] / Var[Δx], Eq. 14 generalizes to n̂ Var[w] = 1/r, backward gain
  = 1/sqrt(r).

Per activation (derivations in each class docstring):

    activation   q            r            forward gain        backward gain
    relu         1/2          1/2          sqrt(2)             sqrt(2)            (Eq. 10 / Eq. 14)
    prelu(a)     (1+a²)/2     (1+a²)/2     sqrt(2/(1+a²))      sqrt(2/(1+a²))     (Eq. 15)
    leaky(a)     (1+a²)/2     (1+a²)/2     sqrt(2/(1+a²))      sqrt(2/(1+a²))
    avr |y|      1            1            1                   1
    crelu        1/2          1            sqrt(2)             1
    identity     1            1            1                   1

Any other pointwise f (gelu, silu, mish, elu, selu, softplus, tanh, hardswish, custom): q = E[f(z)²] and
r = E[f'(z)²] under z ~ N(0, 1), by quadrature, choosing the fixed point of unit pre-activation variance
(`rectnet.layers.gain`, where the derivation and the role of f's mean are written out; docs/activations.md has
the values). `activation.gain` states a gain instead, for both modes.

Defaults stated once, here: PReLU's initial slope (`PRELU_INITIAL_SLOPE`), leaky ReLU's slope (`LEAKY_RELU_SLOPE`)
and AVR's initial bias (`AVR_INITIAL_BIAS`) are the constructors' defaults, which Python callers (rectnet.convert,
`create`, timm.create_model) get without any config. The activation configs leave them out (a null key is not
passed on: the default rules) and name the constant; rectnet.results reads them from the constructors.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rectnet.layers import fused
from rectnet.layers.gain import Gains
from rectnet.layers.rectifier import ACTIVATIONS, Rectifier, closed_form_gains

PRELU_INITIAL_SLOPE = 0.25  # He et al. 2015 §2.1: "We use a_i = 0.25 as the initialization"
LEAKY_RELU_SLOPE = 0.01  # Maas et al. 2013
AVR_INITIAL_BIAS = 0.5  # rectnet's choice (AbsReLU's docstring); 0 restores He et al.'s b = 0


@ACTIVATIONS.register("identity")
class Identity(Rectifier):
    """No non-linearity (q = r = 1). Used after classifier layers."""

    def __init__(self, channels: int) -> None:
        super().__init__()

    homogeneous = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def closed_form(self) -> Gains:
        return closed_form_gains(1.0, 1.0)


@ACTIVATIONS.register("relu")
class ReLU(Rectifier):
    """max(0, y). For symmetric y: E[x²] = Var[y]/2 (Eq. 8) and f' is 0 or 1 with equal odds (Eq. 12)."""

    homogeneous = True
    breakpoints = (0.0,)

    def __init__(self, channels: int, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=self.inplace)

    def closed_form(self) -> Gains:
        return closed_form_gains(math.sqrt(2.0), math.sqrt(2.0))  # Eq. 10, Eq. 14


def _slope_gain(a: float) -> float:
    """Eq. 15: ½(1 + a²) n Var[w] = 1. Forward: E[x²] = ½Var[y] + ½a²Var[y]; backward: f'² is 1 or a²."""
    return math.sqrt(2.0 / (1.0 + a * a))


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(Rectifier):
    """max(0, y) + a·min(0, y) with a fixed slope a (`LEAKY_RELU_SLOPE`: Maas et al. 2013's 0.01)."""

    homogeneous = True
    breakpoints = (0.0,)

    def __init__(self, channels: int, slope: float = LEAKY_RELU_SLOPE, inplace: bool = True) -> None:
        super().__init__()
        self.slope = slope
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope, inplace=self.inplace)

    def closed_form(self) -> Gains:
        return closed_form_gains(_slope_gain(self.slope), _slope_gain(self.slope))

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


@ACTIVATIONS.register("prelu")
class PReLU(Rectifier):
    """He et al. 2015 Eq. 1: f(y_i) = max(0, y_i) + a_i·min(0, y_i), a_i learned, initialised to 0.25
    (`PRELU_INITIAL_SLOPE`, §2.1).

    Channel-wise (one a per channel) by default; `shared=True` gives the channel-shared variant (one a per
    layer, Table 1). The slope parameter is `weight`, as in `torch.nn.PReLU`, and the optimizer puts it in
    a group without weight decay (§2.1: decay would push a towards 0, i.e. towards ReLU).
    The gain uses the *initial* slope (Eq. 15): init runs right after construction.
    """

    homogeneous = True
    breakpoints = (0.0,)

    def __init__(self, channels: int, slope: float = PRELU_INITIAL_SLOPE, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared
        self.weight = nn.Parameter(torch.full((1 if shared else channels,), float(slope)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.prelu(x, self.weight)  # F.prelu, through a one-pass kernel on CPUs (see fused.py)

    def _initial_slope(self) -> float:
        return float(self.weight.detach().mean())

    def closed_form(self) -> Gains:
        return closed_form_gains(_slope_gain(self._initial_slope()), _slope_gain(self._initial_slope()))

    def extra_repr(self) -> str:
        return f"num_parameters={self.weight.numel()}"


@ACTIVATIONS.register("prelu_shared")
class SharedPReLU(PReLU):
    """Channel-shared PReLU: one learned slope for the whole layer (He et al. 2015, Table 1, left column)."""

    def __init__(self, channels: int, slope: float = PRELU_INITIAL_SLOPE) -> None:
        super().__init__(channels, slope=slope, shared=True)


@ACTIVATIONS.register("avr")
class AbsReLU(Rectifier):
    """Absolute value rectification |y| (Jarrett et al. 2009), the CReLU paper's AVR.

    Forward: E[|y|²] = Var[y], so q = 1. Backward: f'(y) = sign(y), f'² = 1, so r = 1. Both gains are 1:
    AVR needs Xavier's linear-case variance, not ReLU's doubled one.

    `initial_bias` (rectnet's choice, `AVR_INITIAL_BIAS` = 0.5): the layers that feed AVR start with that bias
    instead of 0. |y| is even, so with zero biases a random AVR net keeps only the magnitude of each response:
    two unrelated inputs leave one AVR layer with correlation 2/π (ReLU: 1/π), eight layers make every image's
    features alike (cosine 0.95) and their variance lies along the image's contrast, which says little about the
    class; the loss then sits at chance for hundreds of steps (docs/recipes.md). A bias of about half a response's std
    (Kaiming keeps the responses near unit variance) moves most units off the kink, where |b + s| = b + s passes
    the sign of the input, and the net learns where to put its kinks from the first steps.
    """

    homogeneous = True
    breakpoints = (0.0,)

    def __init__(self, channels: int, initial_bias: float = AVR_INITIAL_BIAS) -> None:
        super().__init__()
        self.initial_bias = float(initial_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)

    def closed_form(self) -> Gains:
        return closed_form_gains(1.0, 1.0)


@ACTIVATIONS.register("crelu")
class CReLU(Rectifier):
    """Shang et al. 2016 Definition 2.1: ρ_c(y) = ([y]₊, [-y]₊) concatenated on channels (2c out).

    Forward: each of the 2c channels the next layer reads has E[x²] = Var[y]/2, so with the next layer's
    real fan-in (which counts 2c channels) q = 1/2 and the forward gain is sqrt(2), as for ReLU.
    Backward: Δy = 1[y>0]·Δx₊ − 1[y≤0]·Δx₋; exactly one of the two terms is live, so
    Var[Δy] = ½Var[Δx₊] + ½Var[Δx₋] = Var[Δx] and r = 1: the backward gain is 1, not sqrt(2). A CReLU
    layer passes back the full gradient variance because no unit is ever "off" for both phases.
    """

    channel_multiplier = 2
    homogeneous = True
    breakpoints = (0.0,)

    def __init__(self, channels: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One concatenation then an in-place ReLU: a single output buffer, no intermediate relu(x), relu(-x).
        return torch.cat((x, x.neg()), dim=1).relu_()

    def closed_form(self) -> Gains:
        return closed_form_gains(math.sqrt(2.0), 1.0)


@dataclass(frozen=True)
class ActivationFactory:
    """Makes the activation module for a layer of `c` channels and says how many channels come out."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type[Rectifier]:
        return ACTIVATIONS.get(self.name)

    def __call__(self, channels: int) -> Rectifier:
        return self.cls(channels, **self.params)

    def out_channels(self, channels: int) -> int:
        return channels * self.cls.channel_multiplier


def parameter_defaults(key: str) -> dict[str, Any]:
    """{activation name: its constructor's default for `key`} over the activations that take `key` (the one
    statement of PReLU's and leaky ReLU's slopes, AVR's initial bias)."""
    defaults = {}
    for name in ACTIVATIONS:
        parameter = inspect.signature(ACTIVATIONS.get(name)).parameters.get(key)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            defaults[name] = parameter.default
    return defaults


def activation_parameters(name: str) -> tuple[str, ...]:
    """The keyword parameters activation `name` takes besides its channel count (its class's signature)."""
    return tuple(p for p in inspect.signature(ACTIVATIONS.get(name)).parameters if p != "channels")


def make_activation(name: str, **params: Any) -> ActivationFactory:
    """Validate `name` and `params` now (not at the first layer) and return a factory."""
    factory = ActivationFactory(name, dict(params))
    try:
        factory(1)
    except TypeError as err:
        raise TypeError(f"activation {name!r} does not take parameters {sorted(params)}: {err}") from None
    return factory
