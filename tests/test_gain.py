"""Gains for any pointwise activation (rectnet/layers/gain.py), against values derived independently of the quadrature.

* closed forms: the rectifiers' gains (He et al. 2015 Eq. 10/14/15; CReLU and AVR as rectnet derives them), GELU's
  E[f] = 1/(2 sqrt(pi)) and E[f²] = 1/3 + 1/(2 sqrt(3) pi) (Stein's lemma), ELU's and SELU's moments from the
  Gaussian integrals E[e^(az) 1{z<0}] = e^(a²/2) Phi(-a); SELU's construction (E[f] = 0, E[f²] = 1);
* Monte Carlo: 10^6 samples of z ~ N(0, 1), within 5 standard errors of the sample's own spread;
* Gauss-Hermite (numpy's hermegauss, here only) against rectnet's Gauss-Legendre panels: on the rectifiers (its
  symmetric nodes make it exact there) and on the smooth activations at q = 1;
* wide random networks: the pre-activation variance through depth, against the length map's prediction (the
  derived gain keeps 1; ReLU's gain used for GELU decays as the map says; torch's 5/3 for tanh settles at the
  map's fixed point 1.18; SELU with std 1/sqrt(n) keeps mean 0 and variance 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from torch import nn

from rectnet.layers.activations import ACTIVATIONS, make_activation
from rectnet.layers.gain import Gains, derived_gains, gains, length_map, moments, rule, settle, values_and_slopes

pytestmark = pytest.mark.usefixtures("one_thread")

SMOOTH = ["gelu", "silu", "mish", "softplus", "tanh"]  # no breakpoints: Gauss-Hermite
NEW = [*SMOOTH, "elu", "selu", "hardswish"]  # the activations whose gains come from the quadrature


def _phi_lower(a: float) -> float:
    """Phi(-a), the standard normal's lower tail."""
    return 0.5 * math.erfc(a / math.sqrt(2))


def _elu_moments(alpha: float = 1.0, scale: float = 1.0) -> tuple[float, float, float]:
    """E[f], E[f²], E[f'²] of scale·ELU_alpha under N(0, 1), from E[e^(az) 1{z<0}] = e^(a²/2) Phi(-a) and the
    half-normal moments E[z 1{z>0}] = 1/sqrt(2 pi), E[z² 1{z>0}] = 1/2."""
    e1, e2 = math.exp(0.5) * _phi_lower(1.0), math.exp(2.0) * _phi_lower(2.0)
    mean = scale * (1 / math.sqrt(2 * math.pi) + alpha * (e1 - 0.5))
    second = scale**2 * (0.5 + alpha**2 * (e2 - 2 * e1 + 0.5))
    slope = scale**2 * (0.5 + alpha**2 * e2)
    return mean, second, slope


SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717  # Klambauer et al.

# (E[f], E[f²], E[f'²]) under N(0, 1) in closed form
CLOSED = {
    "relu": (1 / math.sqrt(2 * math.pi), 0.5, 0.5),
    "avr": (math.sqrt(2 / math.pi), 1.0, 1.0),
    "identity": (0.0, 1.0, 1.0),
    "gelu": (1 / (2 * math.sqrt(math.pi)), 1 / 3 + 1 / (2 * math.sqrt(3) * math.pi), None),
    "elu": _elu_moments(),
    "selu": _elu_moments(SELU_ALPHA, SELU_SCALE),
}


def _one_channel(name: str, **params) -> nn.Module:
    return make_activation(name, **params)(1)


def _hermite_moments(act: nn.Module, q: float = 1.0, nodes: int = 128) -> tuple[float, float]:
    """(E[f²] per emitted channel, Σ_k E[f_k'²]) under N(0, q) by Gauss-Hermite, an independent rule."""
    x, w = hermegauss(nodes)
    values, slopes = values_and_slopes(act, math.sqrt(q) * x)
    w = w / w.sum()
    return float(w @ (values**2).mean(axis=1)), float(w @ (slopes**2).sum(axis=1))


# ------------------------------------------------------------------ the rectifiers' closed forms


@pytest.mark.parametrize(
    "name,params",
    [
        ("relu", {}),
        ("prelu", {}),
        ("prelu", {"slope": 0.6}),
        ("prelu_shared", {}),
        ("leaky_relu", {}),
        ("leaky_relu", {"slope": 0.3}),
        ("avr", {}),
        ("crelu", {}),
        ("identity", {}),
    ],
)
def test_quadrature_reproduces_the_closed_forms(name, params):
    act = _one_channel(name, **params)
    closed = act.closed_form()
    derived = derived_gains(act, act.breakpoints)
    assert closed.source == "closed form" and derived.source == "quadrature"
    assert derived.forward == pytest.approx(closed.forward, abs=1e-6)
    assert derived.backward == pytest.approx(closed.backward, abs=1e-6)
    # Gauss-Hermite too: its symmetric nodes pair z with -z, and each rectifier's f(z)² + f(-z)² and
    # f'(z)² + f'(-z)² are polynomials, which it integrates exactly
    second, slope = _hermite_moments(act)
    assert 1 / math.sqrt(second) == pytest.approx(closed.forward, abs=1e-6)
    assert 1 / math.sqrt(slope) == pytest.approx(closed.backward, abs=1e-6)


@pytest.mark.parametrize("name", ["relu", "prelu", "leaky_relu", "avr", "crelu"])
def test_homogeneous_activations_have_moments_proportional_to_the_scale(name):
    # f(cz) = c f(z): E_q[f²] = q E_1[f²] and E_q[f'²] = E_1[f'²], so the factor per layer holds at any scale
    act = _one_channel(name)
    assert act.homogeneous
    one, four = moments(act, 1.0, act.breakpoints), moments(act, 4.0, act.breakpoints)
    assert four.second == pytest.approx(4 * one.second, rel=1e-10) and four.slope == pytest.approx(one.slope, rel=1e-10)
    assert four.mean == pytest.approx(2 * one.mean, rel=1e-10)


@pytest.mark.parametrize("name", NEW)
def test_the_others_are_not_homogeneous_and_their_factor_depends_on_the_scale(name):
    act = _one_channel(name)
    assert not act.homogeneous
    one, four = moments(act, 1.0, act.breakpoints), moments(act, 4.0, act.breakpoints)
    assert abs(four.second / (4 * one.second) - 1) > 0.02


# ------------------------------------------------------------ the new activations against closed forms and Monte Carlo


@pytest.mark.parametrize("name", [n for n in CLOSED if n not in ("relu", "avr", "identity")])
def test_moments_equal_their_closed_forms(name):
    act = _one_channel(name)
    measured = moments(act, 1.0, act.breakpoints)
    mean, second, slope = CLOSED[name]
    assert measured.mean == pytest.approx(mean, abs=1e-9)
    assert measured.second == pytest.approx(second, abs=1e-9)
    if slope is not None:
        assert measured.slope == pytest.approx(slope, abs=1e-9)


def test_selu_is_self_normalising_so_its_forward_gain_is_one():
    # Klambauer et al. chose lambda, alpha for E[f] = 0 and E[f²] = 1 under N(0, 1): the fixed point q* = 1 needs
    # n Var[w] = 1, their LeCun-normal init
    act = _one_channel("selu")
    m = moments(act, 1.0, act.breakpoints)
    assert abs(m.mean) < 1e-6 and m.second == pytest.approx(1.0, abs=1e-6)
    assert act.forward_gain() == pytest.approx(1.0, abs=1e-6)


def _monte_carlo(act: nn.Module, samples: int = 1_000_000) -> dict[str, tuple[float, float]]:
    """(estimate, standard error) of E[f], E[f²] and E[f'²] from `samples` draws of z ~ N(0, 1), in float64."""
    z = torch.randn(samples, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    out = act.double()(z.clone())
    (slope,) = torch.autograd.grad(out.sum(), z)
    values = {"mean": out.detach(), "second": out.detach() ** 2, "slope": slope**2}
    return {k: (v.mean().item(), v.std().item() / math.sqrt(samples)) for k, v in values.items()}


@pytest.mark.parametrize("name", NEW)
def test_moments_agree_with_monte_carlo(name):
    act = _one_channel(name)
    quadrature = moments(act, 1.0, act.breakpoints)
    for key, (estimate, error) in _monte_carlo(_one_channel(name)).items():
        assert getattr(quadrature, key) == pytest.approx(estimate, abs=5 * error), key


@pytest.mark.parametrize("name", SMOOTH)
def test_gauss_hermite_agrees_on_the_smooth_activations(name):
    act = _one_channel(name)
    m = moments(act, 1.0, act.breakpoints)
    second, slope = _hermite_moments(act)
    assert m.second == pytest.approx(second, rel=1e-9) and m.slope == pytest.approx(slope, rel=1e-9)


@pytest.mark.parametrize("name", ["elu", "selu", "hardswish"])
def test_gauss_hermite_converges_slowly_across_a_kink_which_the_panels_cut(name):
    # why the panels (rectnet/layers/gain.py): 128 and 256 Gauss-Hermite nodes still differ in E[f'²] by > 1e-5,
    # and 256 are still > 1e-5 from the panels (which match ELU's and SELU's closed forms to 1e-9, above)
    act = _one_channel(name)
    coarse, fine = _hermite_moments(act, nodes=128)[1], _hermite_moments(act, nodes=256)[1]
    assert abs(coarse - fine) > 1e-5 and abs(fine - moments(act, 1.0, act.breakpoints).slope) > 1e-5


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("q", [1e-4, 0.25, 6.0, 400.0])
def test_the_panels_are_converged_at_any_scale(name, q):
    # the rule against itself with 73 more cuts at arbitrary places (most panels split): the same to 1e-12
    act = _one_channel(name).double()
    extra = tuple(math.sqrt(q) * (np.linspace(-11, 11, 73) + 0.123))
    with torch.no_grad():
        second = [
            float(w @ act(torch.as_tensor(z)).numpy() ** 2) for z, w in (rule(q, act.breakpoints), rule(q, extra))
        ]
    assert second[0] == pytest.approx(second[1], rel=1e-12)


def test_hardswish_moments_equal_a_fine_simpson_rule():
    # A third, naive rule: composite Simpson on [-12, 12] with a node on each kink (±3), 24,000 intervals
    act = _one_channel("hardswish").double()
    n = 24_000
    z = torch.linspace(-12, 12, n + 1, dtype=torch.float64, requires_grad=True)
    out = act(z.clone())
    (slope,) = torch.autograd.grad(out.sum(), z)
    density = torch.exp(-(z.detach() ** 2) / 2) / math.sqrt(2 * math.pi)
    coefficients = torch.ones(n + 1, dtype=torch.float64)
    coefficients[1:-1:2], coefficients[2:-1:2] = 4, 2
    h = 24 / n

    def simpson(values: torch.Tensor) -> float:
        return (h / 3 * (coefficients * values * density).sum()).item()

    m = moments(act, 1.0, act.breakpoints)
    assert m.second == pytest.approx(simpson(out.detach() ** 2), abs=1e-8)
    # f' jumps at ±3, where Simpson's node takes torch's one-sided value: an O(h) error there
    assert m.slope == pytest.approx(simpson(slope**2), abs=1e-4)


# ------------------------------------------------------------------ through depth: wide random networks


def _wide_net_variances(act: nn.Module, gain: float, layers: int, width: int = 2048, batch: int = 64) -> list[float]:
    """Pre-activation variances of `layers` fully connected layers of std gain/sqrt(width), f between them, from
    unit-variance inputs (the first layer reads them with gain 1); one random draw."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=generator)
    variances = []
    with torch.no_grad():
        for layer in range(layers):
            scale = (1.0 if layer == 0 else gain) / math.sqrt(width)
            y = x @ (torch.randn(width, width, generator=generator) * scale)
            variances.append(y.pow(2).mean().item())  # E[y²]: the offsets from f's mean are part of it
            x = act(y)
    return variances


@pytest.mark.parametrize("name", NEW)
def test_the_derived_gain_keeps_unit_variance_through_eight_wide_layers(name):
    act = _one_channel(name)
    variances = _wide_net_variances(act, act.forward_gain(), 8)
    assert variances[0] == pytest.approx(1.0, rel=0.02)
    # finite width: the per-unit offsets from f's mean are one draw per unit (±sqrt(2/width) of their share of the
    # variance per layer, the largest for softplus), grown by the map's slope where the fixed point repels (GELU
    # 1.14 per layer, hard-swish 1.22); at width 512 the drift after 10 layers reaches 30%
    assert all(v == pytest.approx(1.0, rel=0.12) for v in variances), variances


@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_relus_gain_used_for_gelu_and_silu_decays_as_the_length_map_says(name):
    act = _one_channel(name)
    variances = _wide_net_variances(act, math.sqrt(2.0), 8)
    predicted = settle(act, math.sqrt(2.0), 7, 1.0, act.breakpoints)  # from the first layer's q = 1
    assert variances[-1] < 0.25  # the naive choice loses the signal: GELU 0.09, SiLU 0.02 after 8 layers
    for measured, theory in zip(variances, predicted, strict=True):
        assert measured == pytest.approx(theory, rel=0.1)


def test_torchs_tanh_gain_settles_at_the_length_maps_fixed_point():
    # torch.nn.init.calculate_gain("tanh") = 5/3 keeps the variance at the fixed point of q = (25/9) E_q[tanh²],
    # q* = 1.18 (stable: tanh's map pulls towards it); the derived 1.59 is the gain whose fixed point is 1.
    act = _one_channel("tanh")
    assert nn.init.calculate_gain("tanh") == pytest.approx(5 / 3)
    fixed = settle(act, 5 / 3, 100)[-1]
    assert length_map(act, 5 / 3, fixed) == pytest.approx(fixed, rel=1e-9) and 1.15 < fixed < 1.2
    assert 1 / math.sqrt(moments(act, fixed).second / fixed) == pytest.approx(5 / 3, rel=1e-9)
    variances = _wide_net_variances(act, 5 / 3, 8)  # the map's slope 0.46 there: 8 layers reach q* within 0.5%
    assert variances[-1] == pytest.approx(fixed, rel=0.03)
    assert act.forward_gain() == pytest.approx(1.5925, abs=1e-4)


def test_selu_with_lecun_normal_keeps_mean_zero_and_variance_one():
    act = _one_channel("selu").double()
    generator = torch.Generator().manual_seed(1)
    width, x = 512, torch.randn(512, 512, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(20):
            x = act(x @ (torch.randn(width, width, generator=generator, dtype=torch.float64) / math.sqrt(width)))
    assert abs(x.mean().item()) < 0.05 and x.var().item() == pytest.approx(1.0, rel=0.05)


# ------------------------------------------------------------------ where the gains come from


def test_every_activation_has_finite_positive_gains_from_one_place():
    for name in ACTIVATIONS:
        if name == "custom":
            continue
        act = make_activation(name)(4)
        g = gains(act)
        assert g == act.gains() and g.forward > 0 and g.backward > 0 and math.isfinite(g.forward + g.backward)
        assert g.source == ("quadrature" if name in NEW else "closed form")


def test_a_stated_gain_wins_for_both_modes_and_a_bad_one_is_refused():
    act = make_activation("gelu", gain=1.3)(4)
    assert gains(act) == Gains(1.3, 1.3, "stated") and act.gain("fan_in") == act.gain("fan_out") == 1.3
    from rectnet.layers.rectifier import ActivationError

    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ActivationError, match="activation.gain"):
            make_activation("gelu", gain=bad)


def test_the_moments_are_taken_under_the_scale_asked():
    relu = _one_channel("relu")
    assert moments(relu, 9.0, relu.breakpoints).mean == pytest.approx(3 / math.sqrt(2 * math.pi), rel=1e-10)
    with pytest.raises(ValueError, match="q must be > 0"):
        moments(relu, 0.0)
