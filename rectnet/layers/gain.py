"""Kaiming gains for any pointwise activation: He et al. 2015's variance argument, with the expectations computed.

He et al. derive the gains for rectifiers in closed form (§2.2). Their argument holds for any pointwise f once
the two expectations it needs are known; this module computes them by quadrature under z ~ N(0, q), so that
GELU, SiLU, tanh or an activation a user brings gets a gain derived the same way (`rectnet.layers.activations`
keeps the closed forms of the rectifiers, and a test checks that the quadrature reproduces them).

Forward (Eq. 7 -> Eq. 10). A conv/linear layer computes y = W x with W zero-mean and independent of x, so

    Var[y_l] = n_l Var[w_l] E[x_l²],   x_l = f(y_{l-1}).

The second moment E[x²], not Var[x]: He et al. stress that "E[x_l²] ≠ Var[x_l] unless x_l has zero mean", which
ReLU's output has not, and neither has GELU's, SiLU's or softplus's. The mean μ = E[f(z)] does not vanish
through zero-mean weights: each response gets an offset μ·Σ_j w_ij that is fixed per unit and random across
units, with variance n Var[w] μ², and the next layer reads it as part of its pre-activation. Across the units of
one layer the pre-activation is then N(0, q) (a sum of many independent terms) with q = n Var[w] E[f(z)²]: the
variance the next f sees includes the offsets, so E[f²] = Var[f] + μ² is the moment that keeps it. (A gain from
Var[f] alone would overshoot: for ReLU 1/sqrt(1/2 - 1/(2π)) = 1.71 instead of sqrt(2), x1.47 in variance per
layer.)

For a positively homogeneous f (every rectifier: f(cz) = c·f(z) for c > 0) E[f(z)²] = q·E[f(z₁)²] with z₁ ~ N(0, 1),
so the factor per layer, n Var[w] E[f²]/q, does not depend on the scale q and Eq. 10 fixes it once. For any
other f it does, and the condition becomes a fixed point of the length map

    q_{l+1} = h(q_l) = gain² · E_{z~N(0, q_l)}[f(z)²]      (std = gain / sqrt(fan_in), i.e. n Var[w] = gain²).

rectnet chooses the fixed point q* = 1, unit pre-activation variance (what per-channel normalised inputs have, and
what a norm layer's output has): gain_forward = 1 / sqrt(E_{z~N(0,1)}[f(z)²]), so h(1) = 1. The first layer reads
the input, not an f, and gets gain 1 for such an f (`rectnet.layers.init`), so the net starts at q*. Whether the
fixed point attracts depends on f: h'(1) < 1 (tanh, softplus) pulls q back to 1, h'(1) > 1 (GELU, SiLU, Mish:
relu-like for large q, halved-linear for small q) lets a deviation grow slowly; `length_map`, `settle` and
`map_slope` say which, and `python -m rectnet.analysis.propagation` measures it.

Backward (Eq. 11-12 -> Eq. 14). Δy = f'(y) ⊙ Δx with Δx zero-mean (zero-mean weights) and independent of f'(y), so
Var[Δy] = E[f'(y)²] Var[Δx] and Var[Δx_l] = n̂_l Var[w_l] E[f'(y)²] Var[Δx_{l+1}]: gain_backward =
1 / sqrt(E[f'(z)²]), again E[f'²] and not Var[f'], under the same z ~ N(0, 1) as the forward fixed point. Where f
is not homogeneous the two conditions differ (tanh: E[f'²] = 0.464, E[f²] = 0.394), so, as for He et al.'s two
modes, a net initialised for one carries the ratio E[f'²]/E[f²] per layer in the other direction; with
init.mode=fan_out the forward scale settles where the backward weights put it (`settle`), not at 1.

An activation with several outputs per input (CReLU's two phases, channel multiplier m) is a map f: R -> R^m; the
next layer's fan-in counts all m·c channels, so the forward moment is the mean over the m outputs,
(1/m) Σ_k E[f_k(z)²], and the gradient sums the m paths, Σ_k E[f_k'(z)²] (CReLU: 1/2 and 1, its closed forms).

Quadrature: composite Gauss-Legendre against the Gaussian density. The line |z| <= 12·sqrt(q) (the Gaussian mass
beyond is 4e-33) is cut into panels: one standard deviation wide, half a unit wide on |z| <= 8 (where these
activations have their features, whatever the scale; 0, the rectifiers', ELU's and SELU's kink, is always an edge),
and at every other point where f or f' has a kink or a jump, which an activation declares (`breakpoints`: ±3 for
hard-swish). Each panel gets 16
nodes; the integrand is smooth on each, so the rule converges to ~1e-15, and the rectifiers' closed forms come
out exactly. Gauss-Hermite (probabilists', `numpy.polynomial.hermite_e`) was the first choice and serves as an
independent check where it is accurate (tests/test_gain.py): on smooth f at q ~ 1 both agree to 1e-12. It is not
the rule because, measured: across a kink its polynomial exactness gives only algebraic convergence (200 nodes:
SELU's E[f'²] off by 5e-3, hard-swish's by 8e-4), and where f varies on a scale finer than sqrt(q) it needs many
more nodes (tanh at q = 6: 1e-5 with 128), which the length map (`settle`) meets at every scale.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from numpy.polynomial.legendre import leggauss
from torch import nn

from rectnet.layers import fused

LEGENDRE_NODES = 16  # Gauss-Legendre order per panel
TAIL = 12.0  # the panels cover |z| <= TAIL·sqrt(q)
FINE = (8.0, 0.5)  # and are at most 0.5 wide on |z| <= 8, where the activations bend, at any scale

Pointwise = Callable[[torch.Tensor], torch.Tensor]


class GainError(ValueError):
    """No gain can be derived for an activation (not differentiable, or a moment that is 0 or not finite)."""


@dataclass(frozen=True)
class Gains:
    """std = gain / sqrt(fan): `forward` for init.mode=fan_in (Eq. 10's role), `backward` for fan_out (Eq. 14's).

    `source`: "closed form" (the rectifiers' derivations), "quadrature" (this module) or "stated" (activation.gain).
    """

    forward: float
    backward: float
    source: str

    def for_mode(self, mode: str) -> float:
        return self.forward if mode == "fan_in" else self.backward


@dataclass(frozen=True)
class Moments:
    """The expectations the variance argument needs, under z ~ N(0, q).

    `mean` and `second` are per emitted channel (the mean over an activation's m outputs), `slope` sums the m
    gradient paths: second = (1/m) Σ_k E[f_k(z)²] (Eq. 7's E[x²]), slope = Σ_k E[f_k'(z)²] (Eq. 12's factor).
    """

    q: float
    mean: float
    second: float
    slope: float


# ------------------------------------------------------------------ nodes and weights of E[g(z)], z ~ N(0, q)


def rule(q: float, breakpoints: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E[g(z)], z ~ N(0, q): Gauss-Legendre panels, an edge at every breakpoint (module
    docstring). The weights include the density, so E[g(z)] = weights @ g(nodes)."""
    if not (q > 0 and math.isfinite(q)):
        raise ValueError(f"the pre-activation variance q must be > 0 and finite, got {q}")
    reach = TAIL * math.sqrt(q)
    fine_reach, fine_step = min(FINE[0], reach), FINE[1]
    edges = np.concatenate(
        [
            math.sqrt(q) * np.arange(-TAIL, TAIL + 1.0),  # one standard deviation wide
            np.arange(-fine_reach, fine_reach + fine_step / 2, fine_step) if fine_reach > fine_step else [],
            [b for b in breakpoints if abs(b) < reach],
        ]
    )
    edges = np.unique(edges)
    x, w = _legendre()
    left, right = edges[:-1, None], edges[1:, None]
    nodes = ((left + right) / 2 + (right - left) / 2 * x).ravel()
    density = np.exp(-(nodes**2) / (2 * q)) / math.sqrt(2 * math.pi * q)
    return nodes, ((right - left) / 2 * w).ravel() * density


@cache
def _legendre() -> tuple[np.ndarray, np.ndarray]:
    return leggauss(LEGENDRE_NODES)


# ------------------------------------------------------------------ the activation's moments


def _as_probe(fn: Pointwise) -> Pointwise:
    """A float64 CPU copy of a module in eval mode (RReLU-like modules are random in training); a function as is."""
    if isinstance(fn, nn.Module):
        return copy.deepcopy(fn).to("cpu", torch.float64).eval()
    return fn


def values_and_slopes(fn: Pointwise, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f(z) and f'(z) at the points z, shaped (points, m) for an activation with m outputs per input.

    The points go in as one channel, (points, 1); an activation that emits m channels (CReLU) returns (points, m).
    f' by autograd, one output at a time. PReLU's fused CPU backward is bypassed (`fused.unfused`): it would
    compile a kernel for this one probe, and F.prelu's backward gives the same numbers."""
    probe = _as_probe(fn)
    x = torch.as_tensor(z, dtype=torch.float64).reshape(-1, 1).requires_grad_(True)
    with fused.unfused(), torch.enable_grad():
        out = probe(x.clone())  # a copy: in-place activations (ReLU(inplace=True)) may not write into a leaf
        out = out.reshape(x.shape[0], -1)
        slopes = []
        for k in range(out.shape[1]):
            try:
                (grad,) = torch.autograd.grad(out[:, k].sum(), x, retain_graph=True, allow_unused=False)
            except RuntimeError as err:
                raise GainError(f"autograd cannot differentiate it ({str(err).splitlines()[0]})") from None
            slopes.append(grad[:, 0])
    return out.detach().numpy(), torch.stack(slopes, dim=1).numpy()


def moments(fn: Pointwise, q: float = 1.0, breakpoints: Sequence[float] = ()) -> Moments:
    """E[f], E[f²] and E[f'²] under z ~ N(0, q), by quadrature (module docstring)."""
    z, w = rule(q, breakpoints)
    values, slopes = values_and_slopes(fn, z)
    mean = float(w @ values.mean(axis=1))
    second = float(w @ (values**2).mean(axis=1))
    slope = float(w @ (slopes**2).sum(axis=1))
    return Moments(q, mean, second, slope)


def derived_gains(fn: Pointwise, breakpoints: Sequence[float] = (), name: str = "the activation") -> Gains:
    """The gains that keep unit pre-activation variance (the fixed point q* = 1), forward and backward:
    1/sqrt(E[f(z)²]) and 1/sqrt(E[f'(z)²]), z ~ N(0, 1)."""
    try:
        m = moments(fn, 1.0, breakpoints)
    except GainError as err:
        raise GainError(f"{name}: no gain can be derived, {err}; state one (activation.gain)") from None
    for moment, value in (("E[f(z)^2]", m.second), ("E[f'(z)^2]", m.slope)):
        if not (math.isfinite(value) and value > 0):
            raise GainError(
                f"{name}: {moment} = {value} under N(0, 1), so no weight scale keeps the signal; state a gain "
                "(activation.gain)"
            )
    return Gains(1.0 / math.sqrt(m.second), 1.0 / math.sqrt(m.slope), "quadrature")


def gains(activation: nn.Module) -> Gains:
    """The one place init reads a gain from: the activation's stated gain (activation.gain; both modes), else its
    closed form (the rectifiers), else the quadrature of its own function (`derived_gains`)."""
    stated = getattr(activation, "stated_gain", None)
    if stated is not None:
        return Gains(float(stated), float(stated), "stated")
    closed = activation.closed_form() if hasattr(activation, "closed_form") else None
    if closed is not None:
        return closed
    name = getattr(activation, "label", type(activation).__name__)
    return derived_gains(activation, getattr(activation, "breakpoints", ()), name)


def input_mean(activation: nn.Module) -> tuple[float, float]:
    """(E[f(z)], E[f(z)²] / Var[f(z)]) under z ~ N(0, 1), by quadrature, for init.center: the mean a centring
    bias removes, and the factor by which removing it changes Eq. 7 (E[x²] becomes Var[x])."""
    m = moments(activation, 1.0, getattr(activation, "breakpoints", ()))
    variance = m.second - m.mean**2
    if not variance > 0:
        name = getattr(activation, "label", type(activation).__name__)
        raise GainError(f"{name}: Var[f(z)] = {variance} under N(0, 1): a centred signal would be constant")
    return m.mean, m.second / variance


# ------------------------------------------------------------------ the length map (forward scale through depth)


def length_map(fn: Pointwise, gain: float, q: float, breakpoints: Sequence[float] = ()) -> float:
    """h(q) = gain² E_{z~N(0,q)}[f(z)²]: the next layer's pre-activation variance when this one's is q, for weights
    of std gain/sqrt(fan_in) (Eq. 7 with n Var[w] = gain²)."""
    return gain * gain * moments(fn, q, breakpoints).second


def map_slope(
    fn: Pointwise, gain: float, q: float = 1.0, breakpoints: Sequence[float] = (), step: float = 1e-3
) -> float:
    """h'(q) by a central difference in log q: below 1 the fixed point attracts, above 1 a deviation grows."""
    up, down = q * math.exp(step), q * math.exp(-step)
    return (length_map(fn, gain, up, breakpoints) - length_map(fn, gain, down, breakpoints)) / (up - down)


def settle(fn: Pointwise, gain: float, layers: int, q: float = 1.0, breakpoints: Sequence[float] = ()) -> list[float]:
    """The pre-activation variances of `layers` layers in a row, from q: [q, h(q), h(h(q)), ...] (infinite width)."""
    path = [q]
    for _ in range(layers):
        q = length_map(fn, gain, q, breakpoints)
        if not (math.isfinite(q) and q > 0):
            break
        path.append(q)
    return path
