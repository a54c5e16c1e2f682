"""torch's smooth (or piecewise-smooth) pointwise activations, beyond the papers' rectifiers: their gains have no
closed form, so `rectnet.layers.gain` derives them by quadrature at the fixed point of unit pre-activation variance
(docs/activations.md has the values), unless `activation.gain` states one."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F

from rectnet.layers.rectifier import ACTIVATIONS, Rectifier, checked_gain


class TorchActivation(Rectifier):
    """A pointwise function from torch, its gains derived by quadrature (`rectnet.layers.gain`) or stated.

    Subclasses name the function (`function`) and where f or f' is not smooth (`breakpoints`).
    """

    function: ClassVar[Callable[[torch.Tensor], torch.Tensor]]

    def __init__(self, channels: int, gain: float | None = None) -> None:
        super().__init__()
        self.stated_gain = checked_gain(gain, type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)

    def extra_repr(self) -> str:
        return "" if self.stated_gain is None else f"gain={self.stated_gain:g}"


@ACTIVATIONS.register("gelu")
class GELU(TorchActivation):
    """y·Φ(y) (Hendrycks & Gimpel 2016), torch's exact form (erf); smooth."""

    function = staticmethod(F.gelu)


@ACTIVATIONS.register("silu")
class SiLU(TorchActivation):
    """y·σ(y): SiLU (Elfwing et al. 2018), Swish with β = 1 (Ramachandran et al. 2017); smooth."""

    function = staticmethod(F.silu)


@ACTIVATIONS.register("mish")
class Mish(TorchActivation):
    """y·tanh(softplus(y)) (Misra 2019); smooth."""

    function = staticmethod(F.mish)


@ACTIVATIONS.register("elu")
class ELU(TorchActivation):
    """y for y > 0, e^y - 1 otherwise (Clevert et al. 2016, α = 1): f'' jumps at 0."""

    function = staticmethod(F.elu)
    breakpoints = (0.0,)


@ACTIVATIONS.register("selu")
class SELU(TorchActivation):
    """λ·ELU_α(y) with Klambauer et al. 2017's λ, α, chosen so that E[f(z)] = 0 and E[f(z)²] = 1 for z ~ N(0, 1):
    its forward gain is 1, their LeCun-normal init (std 1/sqrt(fan_in)). f' jumps at 0 (λ vs λα)."""

    function = staticmethod(F.selu)
    breakpoints = (0.0,)


@ACTIVATIONS.register("softplus")
class Softplus(TorchActivation):
    """log(1 + e^y) (Dugas et al. 2001; Glorot et al. 2011's smooth rectifier); smooth."""

    function = staticmethod(F.softplus)


@ACTIVATIONS.register("tanh")
class Tanh(TorchActivation):
    """tanh(y); smooth, odd, saturating."""

    function = staticmethod(torch.tanh)


@ACTIVATIONS.register("hardswish")
class Hardswish(TorchActivation):
    """y·relu6(y + 3)/6 (Howard et al. 2019, MobileNetV3): piecewise, kinks at ±3 (f' jumps there)."""

    function = staticmethod(F.hardswish)
    breakpoints = (-3.0, 3.0)
