"""Activation semantics, gradients (finite differences) and the Kaiming gains (Monte Carlo vs theory)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rectnet.layers import fused
from rectnet.layers.activations import ACTIVATIONS, make_activation

torch.manual_seed(0)


def test_relu_prelu_leaky_avr_match_their_formulas():
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 3.0]]).view(1, 5, 1, 1)
    assert torch.equal(make_activation("relu")(5)(x.clone()).flatten(), torch.tensor([0.0, 0.0, 0.0, 0.5, 3.0]))
    assert torch.allclose(make_activation("prelu")(5)(x).flatten(), torch.tensor([-0.5, -0.125, 0.0, 0.5, 3.0]))
    assert torch.allclose(
        make_activation("leaky_relu", slope=0.1)(5)(x.clone()).flatten(), torch.tensor([-0.2, -0.05, 0.0, 0.5, 3.0])
    )
    assert torch.equal(make_activation("avr")(5)(x).flatten(), torch.tensor([2.0, 0.5, 0.0, 0.5, 3.0]))


def test_prelu_initial_slope_is_a_quarter_and_shapes_are_channelwise_or_shared():
    channelwise, shared = make_activation("prelu")(7), make_activation("prelu_shared")(7)
    assert channelwise.weight.shape == (7,) and shared.weight.shape == (1,)
    assert torch.all(channelwise.weight == 0.25) and torch.all(shared.weight == 0.25)  # He et al. §2.1


def test_crelu_concatenates_both_phases_and_doubles_channels():
    factory = make_activation("crelu")
    x = torch.randn(2, 3, 4, 4)
    out = factory(3)(x)
    assert factory.out_channels(3) == 6 and out.shape == (2, 6, 4, 4)
    assert torch.equal(out[:, :3], x.clamp(min=0)) and torch.equal(out[:, 3:], (-x).clamp(min=0))


@pytest.mark.parametrize("name", ["prelu", "prelu_shared"])
def test_prelu_slope_gradient_matches_finite_differences(name):
    act = make_activation(name)(3).double()
    with torch.no_grad():
        act.weight.copy_(torch.linspace(0.1, 0.4, act.weight.numel(), dtype=torch.float64))
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    upstream = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    (act(x) * upstream).sum().backward()
    eps = 1e-6
    for i in range(act.weight.numel()):
        with torch.no_grad():
            act.weight[i] += eps
            plus = (act(x) * upstream).sum()
            act.weight[i] -= 2 * eps
            minus = (act(x) * upstream).sum()
            act.weight[i] += eps
        assert act.weight.grad[i].item() == pytest.approx(((plus - minus) / (2 * eps)).item(), rel=1e-6, abs=1e-8)
    # The paper's closed form (§2.1): dE/da_i = sum over positions of dE/df * y where y <= 0
    expected = (upstream * x.clamp(max=0)).sum(dim=(0, 2, 3))
    expected = expected.sum(0, keepdim=True) if name == "prelu_shared" else expected
    assert torch.allclose(act.weight.grad, expected)


RECTIFIERS = ["relu", "prelu", "crelu", "avr", "leaky_relu"]
BEYOND = ["gelu", "silu", "mish", "elu", "selu", "softplus", "tanh", "hardswish"]  # issue 24


@pytest.mark.parametrize("name", RECTIFIERS + BEYOND)
def test_input_gradient_matches_finite_differences(name):
    act = make_activation(name)(3).double()
    if hasattr(act, "inplace"):
        act.inplace = False
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x = x + 0.05 * x.sign()  # keep away from the kink at 0, where the derivative is not defined
    x = torch.where((x.abs() - 3).abs() < 0.05, x + 0.1, x)  # and from hard-swish's at ±3
    assert torch.autograd.gradcheck(act, (x.requires_grad_(),))


def _moments(name: str, params: dict, n: int = 400_000) -> tuple[float, float]:
    """Monte Carlo q = E[x²]/Var[y] per emitted channel and r = Var[Δy]/Var[Δx] for y, Δx ~ N(0, 1)."""
    act = make_activation(name, **params)(1)
    y = torch.randn(n, 1, 1, 1, requires_grad=True)
    x = act(y.clone() if hasattr(act, "inplace") else y)
    upstream = torch.randn_like(x)
    x.backward(upstream)
    q = (x.detach() ** 2).mean().item()
    r = y.grad.var().item()
    return q, r


@pytest.mark.parametrize(
    "name,params,q,r",
    [  # q, r from the variance argument (He et al. Eq. 8, 12, 15; CReLU/AVR derived in activations.py)
        ("relu", {}, 0.5, 0.5),
        ("prelu", {"slope": 0.25}, (1 + 0.25**2) / 2, (1 + 0.25**2) / 2),
        ("leaky_relu", {"slope": 0.01}, (1 + 0.01**2) / 2, (1 + 0.01**2) / 2),
        ("avr", {}, 1.0, 1.0),
        ("crelu", {}, 0.5, 1.0),
    ],
)
def test_gains_equal_the_variance_argument(name, params, q, r):
    q_mc, r_mc = _moments(name, params)
    assert q_mc == pytest.approx(q, rel=0.02) and r_mc == pytest.approx(r, rel=0.02)
    act = make_activation(name, **params)(1)
    assert act.forward_gain() == pytest.approx(1 / math.sqrt(q)) and act.backward_gain() == pytest.approx(
        1 / math.sqrt(r)
    )


def test_unknown_activation_lists_the_valid_names():
    valid = "avr, crelu, custom, elu, gelu, hardswish, identity, leaky_relu, mish, prelu, prelu_shared, relu, selu"
    with pytest.raises(KeyError, match=f"valid: {valid}, silu, softplus, tanh"):
        make_activation("swish")


def test_wrong_activation_parameter_is_refused():
    with pytest.raises(TypeError, match="relu"):
        make_activation("relu", slope=0.3)


def test_registry_holds_every_activation_of_the_two_papers():
    assert {"relu", "prelu", "prelu_shared", "crelu", "avr", "leaky_relu"} <= set(ACTIVATIONS.names())


# ------------------------------------------------------------------ PReLU's fused CPU backward (fused.py)


def _prelu_grads(y: torch.Tensor, slope: torch.Tensor, upstream: torch.Tensor, use_fused: bool):
    y, slope = y.clone().requires_grad_(), slope.clone().requires_grad_()
    out = fused.prelu(y, slope) if use_fused else F.prelu(y, slope)
    out.backward(upstream)
    return out.detach(), y.grad, slope.grad


@pytest.mark.parametrize(
    ("shape", "channels_last", "slopes"),
    [((8, 6, 5, 7), True, 6), ((8, 6, 5, 7), False, 6), ((8, 6, 5, 7), True, 1), ((16, 10), False, 10)],
)
def test_fused_prelu_backward_equals_pytorchs(shape, channels_last, slopes):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(shape, generator=gen)
    y[0, 0] = 0.0  # at y == 0 both take the slope branch
    upstream = torch.randn(shape, generator=gen)
    if channels_last:
        y, upstream = (t.contiguous(memory_format=torch.channels_last) for t in (y, upstream))
    slope = torch.linspace(0.05, 0.5, slopes)
    out, grad_y, grad_slope = _prelu_grads(y, slope, upstream, use_fused=True)
    ref_out, ref_y, ref_slope = _prelu_grads(y, slope, upstream, use_fused=False)
    assert fused._library is not None and fused._enabled  # the CPU kernel ran, not the fallback
    assert torch.equal(out, ref_out) and torch.equal(grad_y, ref_y)
    assert torch.allclose(grad_slope, ref_slope, rtol=1e-5, atol=1e-5)  # sums in another order


def test_fused_prelu_falls_back_with_a_warning_and_the_same_numbers(monkeypatch, caplog):
    def broken():
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(fused, "_build_and_load", broken)
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "_build_failed", False)
    monkeypatch.setattr(fused, "_enabled", True)
    y, upstream, slope = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5), torch.full((3,), 0.25)
    with caplog.at_level("WARNING", logger="rectnet"):
        _, grad_y, grad_slope = _prelu_grads(y, slope, upstream, use_fused=True)
    _, ref_y, ref_slope = _prelu_grads(y, slope, upstream, use_fused=False)
    assert "could not be built" in caplog.text and not fused._enabled
    assert torch.equal(grad_y, ref_y) and torch.allclose(grad_slope, ref_slope, atol=1e-6)


def test_unfused_block_records_a_twice_differentiable_prelu_and_restores_the_setting():
    y, slope = torch.randn(4, 3, 5, 5, requires_grad=True), torch.full((3,), 0.25, requires_grad=True)
    with fused.unfused():
        out = fused.prelu(y, slope)
    assert fused._enabled  # the setting before the block
    (grad_y,) = torch.autograd.grad(out.pow(2).sum(), y, create_graph=True)
    # d/dy of 2·prelu(y)·prelu'(y) summed: 2·prelu'(y)², i.e. 2 where y > 0 and 2·0.25² elsewhere
    (second,) = torch.autograd.grad(grad_y.sum(), y)
    expected = torch.where(y > 0, torch.tensor(2.0), torch.tensor(2 * 0.25**2))
    assert torch.allclose(second, expected)


# ------------------------------------------------------------------ how deep stacks of each rectifier correlate inputs

REFERENCE_FUNCTIONS = {
    "relu": lambda t: t.clamp(min=0),
    "prelu": lambda t: torch.where(t > 0, t, 0.25 * t),
    "leaky_relu": lambda t: torch.where(t > 0, t, 0.01 * t),
    "avr": lambda t: t.abs(),
}


def _correlation_map(f, c: float, samples: int = 1 << 20) -> float:
    """E[f(u) f(v)] / E[f(u)²] for unit Gaussians u, v of correlation c (Monte Carlo, standard error ~2e-3)."""
    gen = torch.Generator().manual_seed(1)
    u, z = torch.randn(2, samples, generator=gen, dtype=torch.float64)
    return ((f(u) * f(c * u + math.sqrt(1 - c * c) * z)).mean() / f(u).pow(2).mean()).item()


@pytest.mark.parametrize("name", list(REFERENCE_FUNCTIONS))
def test_a_wide_kaiming_stack_correlates_inputs_as_the_infinite_width_theory_says(name):
    # Two independent inputs through 8 wide layers at rectnet's Kaiming gain: their cosine similarity after the
    # 8th rectifier is the correlation map iterated 8 times from 0. AVR's map starts at 2/pi (ReLU's at 1/pi),
    # which is why deep AVR features look alike across images at init (docs/recipes.md, AVR's slow start).
    width, pairs = 2048, 32
    gen = torch.Generator().manual_seed(0)
    act = make_activation(name)(width)
    h = torch.randn(2 * pairs, width, generator=gen)
    with torch.no_grad():
        for _ in range(8):
            weight = torch.randn(width, width, generator=gen) * act.forward_gain() / math.sqrt(width)
            h = act(h @ weight.T)
    measured = F.cosine_similarity(h[:pairs], h[pairs:]).mean().item()
    expected = 0.0
    for _ in range(8):
        expected = _correlation_map(REFERENCE_FUNCTIONS[name], expected)
    assert measured == pytest.approx(expected, abs=0.015)
    if name == "avr":  # closed form of the first step: E|u||v| = 2/pi for independent u, v
        assert _correlation_map(REFERENCE_FUNCTIONS[name], 0.0) == pytest.approx(2 / math.pi, abs=6e-3)


def test_fused_prelu_gives_the_same_bits_at_any_thread_count():
    # The slope gradient sums fixed blocks of elements, then the blocks in order: PReLU adds no dependence on
    # the thread count to a run's numbers.
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(32, 24, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(y.shape, generator=gen).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(_prelu_grads(y, torch.full((24,), 0.25), upstream, use_fused=True))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for result in results[1:] for a, b in zip(results[0], result, strict=True))


# ------------------------------------------------------------------ the activations beyond rectifiers (issue 24)

SIGMOID = torch.sigmoid
PHI = lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2)))  # noqa: E731  (the standard normal's cdf)
SOFTPLUS = lambda t: torch.log1p(torch.exp(t))  # noqa: E731
SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717  # Klambauer et al.

FORMULAS = {  # each paper's definition, written out here
    "gelu": lambda t: t * PHI(t),
    "silu": lambda t: t * SIGMOID(t),
    "mish": lambda t: t * torch.tanh(SOFTPLUS(t)),
    "elu": lambda t: torch.where(t > 0, t, torch.exp(t) - 1),
    "selu": lambda t: SELU_SCALE * torch.where(t > 0, t, SELU_ALPHA * (torch.exp(t) - 1)),
    "softplus": SOFTPLUS,
    "tanh": lambda t: (torch.exp(2 * t) - 1) / (torch.exp(2 * t) + 1),
    "hardswish": lambda t: t * torch.clamp(t + 3, 0, 6) / 6,
}


@pytest.mark.parametrize("name", list(FORMULAS))
def test_the_new_activations_compute_their_papers_formulas(name):
    x = torch.linspace(-6, 6, 241, dtype=torch.float64).view(1, -1, 1, 1)
    act = make_activation(name)(x.shape[1]).double()
    assert torch.allclose(act(x), FORMULAS[name](x), rtol=1e-6, atol=1e-9)
    assert act.channel_multiplier == 1 and not act.homogeneous


def test_defaults_are_stated_once_and_read_everywhere():
    from rectnet.layers.activations import AVR_INITIAL_BIAS, LEAKY_RELU_SLOPE, PRELU_INITIAL_SLOPE, parameter_defaults
    from rectnet.results.variants import SLOPE_DEFAULTS

    assert (PRELU_INITIAL_SLOPE, LEAKY_RELU_SLOPE, AVR_INITIAL_BIAS) == (0.25, 0.01, 0.5)  # §2.1; Maas et al.; rectnet
    assert SLOPE_DEFAULTS == parameter_defaults("slope") == {"prelu": 0.25, "prelu_shared": 0.25, "leaky_relu": 0.01}
    assert parameter_defaults("initial_bias") == {"avr": AVR_INITIAL_BIAS}
    assert make_activation("leaky_relu")(1).slope == LEAKY_RELU_SLOPE
    assert make_activation("avr")(1).initial_bias == AVR_INITIAL_BIAS


@pytest.mark.parametrize("name", ["prelu", "prelu_shared", "leaky_relu"])
def test_the_configs_read_the_slope_from_the_constructor(name):
    from helpers import compose_train

    from rectnet.config import to_settings
    from rectnet.layers.activations import parameter_defaults

    settings = to_settings(compose_train([f"activation={name}"]), training=False)
    assert settings.activation.slope == parameter_defaults("slope")[name]
    custom = to_settings(compose_train([f"activation={name}", "activation.slope=0.3"]), training=False)
    assert custom.activation.slope == 0.3


# ------------------------------------------------------------------ an activation the user brings

USER_MODULE = '''
import torch
from torch import nn


class SquarePlus(nn.Module):
    """(y + sqrt(y² + 4)) / 2 (Barron 2021): smooth, positive."""

    def forward(self, x):
        return (x + torch.sqrt(x * x + 4)) / 2


class Kinked(nn.Module):
    breakpoints = (1.0,)

    def forward(self, x):
        return torch.where(x > 1, 2 * x - 1, x)


def softsign(x):
    return x / (1 + x.abs())


class Needs(nn.Module):
    def __init__(self, width):
        super().__init__()


class ChannelSoftmax(nn.Module):
    def forward(self, x):
        return x.softmax(dim=1)


def subsample(x):
    return x[..., ::2]


def numpy_only(x):
    return torch.as_tensor(x.detach().numpy() * 2)


def broken(x):
    raise RuntimeError("nope")


gelu_instance = nn.GELU()
not_callable = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `user_acts` on sys.path, as a user's package would be."""
    (tmp_path / "user_acts.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_acts"
    import sys

    sys.modules.pop("user_acts", None)


def test_a_custom_module_class_a_function_or_an_instance_is_an_activation(user_module):
    from rectnet.layers.gain import derived_gains

    square = make_activation("custom", target=f"{user_module}.SquarePlus")(4)
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(square(x), (x + torch.sqrt(x * x + 4)) / 2)
    assert square.gains().source == "quadrature"
    # its gain is the quadrature of its own function, E[f²] = E[(z + sqrt(z² + 4))²]/4 = (2·E[z²] + 4)/4 = 3/2
    assert square.forward_gain() == pytest.approx(1 / math.sqrt(1.5), rel=1e-9)
    soft = make_activation("custom", target=f"{user_module}.softsign")(4)
    assert torch.allclose(soft(x), x / (1 + x.abs()))
    instance = make_activation("custom", target=f"{user_module}.gelu_instance")(4)
    assert instance.gains().forward == pytest.approx(make_activation("gelu")(4).forward_gain(), rel=1e-12)
    # torch's own classes are importable targets: the same gains as rectnet's registered activation
    torch_silu = make_activation("custom", target="torch.nn.SiLU")(4)
    assert torch_silu.gains().backward == pytest.approx(make_activation("silu")(4).backward_gain(), rel=1e-12)
    kinked = make_activation("custom", target=f"{user_module}.Kinked")(4)
    assert kinked.breakpoints == (1.0,)
    assert kinked.gains() == derived_gains(kinked.fn, (1.0,), "kinked")


def test_a_stated_gain_wins_over_the_derived_one(user_module):
    act = make_activation("custom", target=f"{user_module}.SquarePlus", gain=1.7)(4)
    assert act.gain("fan_in") == act.gain("fan_out") == 1.7 and act.gains().source == "stated"


@pytest.mark.parametrize(
    "target,message",
    [
        (None, "activation=custom needs activation.target=<module>.<name>"),
        ("no_dots", "name it as <module>.<name>"),
        ("no_such_package.act", "is not importable: No module named 'no_such_package'"),
        ("{m}.Missing", "has no attribute 'Missing'"),
        ("{m}.Needs", r"Needs\(\) failed .*constructible without arguments"),
        ("{m}.ChannelSoftmax", "is not pointwise: an output depends on other elements"),
        ("{m}.subsample", r"is not pointwise: a \(2, 3, 5, 4\) tensor comes out as \(2, 3, 5, 2\)"),
        ("{m}.broken", "fails on a .* probe tensor .RuntimeError: nope"),
        ("{m}.not_callable", "is a int, not an nn.Module class or a function"),
    ],
)
def test_a_custom_target_that_cannot_serve_is_refused_in_one_line(user_module, target, message):
    from rectnet.layers.rectifier import ActivationError

    params = {} if target is None else {"target": target.format(m=user_module)}
    with pytest.raises(ActivationError, match=message) as caught:
        make_activation("custom", **params)
    assert "\n" not in str(caught.value)


def test_a_custom_function_autograd_cannot_differentiate_needs_a_stated_gain(user_module):
    from rectnet.layers.gain import GainError

    act = make_activation("custom", target=f"{user_module}.numpy_only")(1)
    with pytest.raises(GainError, match="numpy_only: no gain can be derived, autograd cannot differentiate it"):
        act.gains()
    assert make_activation("custom", target=f"{user_module}.numpy_only", gain=1.0)(1).gains().forward == 1.0
