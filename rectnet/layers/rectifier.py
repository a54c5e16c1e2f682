"""What every activation is: a `Rectifier` (an nn.Module that knows its channel arithmetic and its init gains), the
registry that names them for `activation=<name>`, and the one error an activation raises.

The activations: `rectnet.layers.activations` (the papers' rectifiers, gains in closed form), `rectnet.layers.smooth`
(torch's pointwise functions, gains by quadrature) and `rectnet.layers.custom` (one a user brings).
"""

from __future__ import annotations

import math
from typing import ClassVar

from torch import nn

from rectnet.layers.gain import Gains, gains
from rectnet.registry import Registry


class ActivationError(ValueError):
    """An activation cannot be made as asked (a custom target that does not import or is not pointwise, a bad
    gain); the message is one line naming the key. The config path turns it into a ConfigError."""


class Rectifier(nn.Module):
    """Base class: an activation with channel arithmetic and init gains.

    Gains come from `rectnet.layers.gain.gains`: a stated gain (`stated_gain`), else the class's `closed_form`,
    else the quadrature of the module's own function (cut at its `breakpoints`).
    """

    channel_multiplier: int = 1
    initial_bias: float = 0.0  # the init sets the biases of the layer before it to this (He et al. §2.2: 0)
    # f(c·y) = c·f(y) for c > 0: the gains hold at any scale, and the first layer may use the following
    # activation's gain (He et al. §2.2); otherwise it gets gain 1, which starts the net at q* = 1 (init.py)
    homogeneous: ClassVar[bool] = False
    breakpoints: ClassVar[tuple[float, ...]] = ()  # where f or f' has a kink or a jump: the quadrature cuts there
    stated_gain: float | None = None  # activation.gain: the gain for both modes, instead of the derived one

    def closed_form(self) -> Gains | None:
        """The gains in closed form, where the class derives them; None: derived by quadrature."""
        return None

    def gains(self) -> Gains:
        return gains(self)

    def forward_gain(self) -> float:
        return self.gains().forward

    def backward_gain(self) -> float:
        return self.gains().backward

    def gain(self, mode: str) -> float:
        """Gain for `std = gain / sqrt(fan)`: fan_in uses the forward gain, fan_out the backward one."""
        return self.gains().for_mode(mode)


def closed_form_gains(forward: float, backward: float) -> Gains:
    return Gains(forward, backward, "closed form")


ACTIVATIONS: Registry[type[Rectifier]] = Registry("activation")


def checked_gain(gain: float | None, label: str) -> float | None:
    """activation.gain: a positive, finite gain, or None (derive it)."""
    if gain is not None and not (math.isfinite(gain) and gain > 0):
        raise ActivationError(f"activation.gain={gain} for {label}: a gain must be a positive finite number")
    return None if gain is None else float(gain)
