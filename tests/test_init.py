"""Initialization: every layer's empirical std against the closed forms of He et al. §2.2 and Glorot."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rectnet.layers.activations import make_activation
from rectnet.layers.facts import weight_layers
from rectnet.layers.init import InitSpec, init_model
from rectnet.models import create


def _conv_stds(model: nn.Module) -> list[float]:
    return [layer.module.weight.std().item() for layer in weight_layers(model)]


# ConvPool-CNN-C filters: 3x(3x3,96), 3x(3x3,192), 3x3,192, 1x1,192, 1x1,10 (Springenberg et al. 2014).
CONVPOOL = [
    (3, 96, 3),
    (96, 96, 3),
    (96, 96, 3),
    (96, 192, 3),
    (192, 192, 3),
    (192, 192, 3),
    (192, 192, 3),
    (192, 192, 1),
    (192, 10, 1),
]  # (c_in, d, k)


@pytest.mark.parametrize(
    "act,mode,expected",
    [
        # Eq. 10: std = sqrt(2 / (k² c_in)); the first layer uses it too ("for simplicity", §2.2)
        ("relu", "fan_in", [math.sqrt(2 / (k * k * c)) for c, d, k in CONVPOOL]),
        # Eq. 14: std = sqrt(2 / (k² d)); the classifier is followed by no rectifier: gain 1
        ("relu", "fan_out", [math.sqrt(2 / (k * k * d)) for c, d, k in CONVPOOL[:-1]] + [math.sqrt(1 / 10)]),
        # Eq. 15: std = sqrt(2 / ((1 + a²) k² c_in)), a = 0.25
        ("prelu", "fan_in", [math.sqrt(2 / (1.0625 * k * k * c)) for c, d, k in CONVPOOL]),
        # AVR: q = 1, std = sqrt(1 / (k² c_in))
        ("avr", "fan_in", [math.sqrt(1 / (k * k * c)) for c, d, k in CONVPOOL]),
        # CReLU forward: gain sqrt(2) on the doubled fan-in (every layer after the first reads 2c channels)
        (
            "crelu",
            "fan_in",
            [math.sqrt(2 / (k * k * c * (1 if i == 0 else 2))) for i, (c, d, k) in enumerate(CONVPOOL)],
        ),
        # CReLU backward: gain 1 on the layer's own filters
        ("crelu", "fan_out", [math.sqrt(1 / (k * k * d)) for c, d, k in CONVPOOL]),
    ],
)
def test_kaiming_std_per_layer(act, mode, expected):
    # the paper's rule on every layer: the classifier by the rule too, dropout not counted
    torch.manual_seed(0)
    model = create("convpool_cnn_c", act=act, init=InitSpec("kaiming", mode, head_scale=1.0, count_dropout=False))
    for measured, theory in zip(_conv_stds(model), expected, strict=True):
        assert measured == pytest.approx(theory, rel=0.05)


def test_xavier_is_blind_to_the_rectifier_and_uniform():
    torch.manual_seed(0)
    for act in ("relu", "crelu"):
        uniform = InitSpec("xavier", "fan_in", "uniform", head_scale=1.0)
        model = create("convpool_cnn_c", act=act, init=uniform)
        for layer in weight_layers(model):
            w = layer.module.weight
            fan_in = w[0].numel()
            assert w.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.05)  # n Var[w] = 1
            assert w.abs().max().item() <= math.sqrt(3 / fan_in) + 1e-7  # U(-b, b), b = sqrt(3/n)


def test_xavier_avg_is_glorots_harmonic_fan():
    torch.manual_seed(0)
    model = create("convpool_cnn_c", act="relu", init=InitSpec("xavier", "avg"))
    conv4 = weight_layers(model)[3].module.weight  # 96 -> 192, 3x3
    assert conv4.std().item() == pytest.approx(math.sqrt(2 / (9 * 96 + 9 * 192)), rel=0.05)


# ConvPool-CNN-C's dropout: 0.2 before conv1, 0.5 after pool1 (before conv4) and pool2 (before conv7)
KEEP_IN = [0.8, 1, 1, 0.5, 1, 1, 0.5, 1, 1]
KEEP_OUT = [1, 1, 0.5, 1, 1, 0.5, 1, 1, 1]


@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_dropout_scales_the_gain_by_the_keep_probability(act):
    # Eq. 7 with inverted dropout: E[x²] grows by 1/(1-p), so n Var[w] = (1-p)/q (forward: the layer after
    # the dropout) and n̂ Var[w] = (1-p)/r (backward: the layer before it)
    torch.manual_seed(0)
    doubled = act == "crelu"
    fan_in = create("convpool_cnn_c", act=act, init=InitSpec("kaiming", "fan_in", head_scale=1.0))
    fan_out = create("convpool_cnn_c", act=act, init=InitSpec("kaiming", "fan_out", head_scale=1.0))
    r = 1.0 if doubled else 0.5
    for i, (c, d, k) in enumerate(CONVPOOL):
        c_read = c * (2 if doubled and i else 1)
        forward = math.sqrt(2 * KEEP_IN[i] / (k * k * c_read))
        backward = math.sqrt(KEEP_OUT[i] / (r * k * k * d)) if i < 8 else math.sqrt(1 / (k * k * d))
        assert weight_layers(fan_in)[i].module.weight.std().item() == pytest.approx(forward, rel=0.05), i
        assert weight_layers(fan_out)[i].module.weight.std().item() == pytest.approx(backward, rel=0.05), i


@pytest.mark.parametrize("init", ["kaiming", "xavier"])
def test_the_classifier_starts_at_zero_and_head_scale_scales_the_rule(init):
    torch.manual_seed(0)
    zero = create("convpool_cnn_c", act="prelu", width=0.25, init=init).train()
    assert torch.count_nonzero(weight_layers(zero)[-1].module.weight) == 0
    loss = nn.functional.cross_entropy(zero(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    assert loss.item() == pytest.approx(math.log(10), rel=1e-6)  # zero scores: the loss is chance exactly
    torch.manual_seed(0)
    tenth = create("convpool_cnn_c", act="prelu", width=0.25, init=InitSpec(init, head_scale=0.1))
    torch.manual_seed(0)
    rule = create("convpool_cnn_c", act="prelu", width=0.25, init=InitSpec(init, head_scale=1.0))
    tenth_w, rule_w = (weight_layers(m)[-1].module.weight for m in (tenth, rule))
    assert torch.allclose(tenth_w, 0.1 * rule_w)  # the same draw, scaled
    for a, b, c in zip(weight_layers(zero)[:-1], weight_layers(tenth)[:-1], weight_layers(rule)[:-1], strict=True):
        assert torch.equal(a.module.weight, b.module.weight) and torch.equal(b.module.weight, c.module.weight)


def test_a_classifier_followed_by_a_rectifier_keeps_the_rule():
    # CReLU (all): a classifier whose scores pass through a rectifier is not scaled down
    model = create("allcnn_b", act="crelu", num_classes=10, width=0.125)
    last = weight_layers(model)[-1]
    assert last.after is not None
    assert last.module.weight.std().item() == pytest.approx(math.sqrt(2 / last.module.weight[0].numel()), rel=0.1)


def test_a_fixed_std_of_zero_is_kept():
    model = create("convpool_cnn_c", width=0.25, init_std={2: 0.0}, init=InitSpec(head_scale=1.0))
    assert torch.count_nonzero(weight_layers(model)[1].module.weight) == 0
    assert torch.count_nonzero(weight_layers(model)[-1].module.weight) > 0


def test_biases_are_zero_and_fixed_std_overrides_apply():
    model = create("convpool_cnn_c", init_std={9: 0.001})
    layers = weight_layers(model)
    assert all(torch.all(layer.module.bias == 0) for layer in layers)
    assert layers[-1].module.weight.std().item() == pytest.approx(0.001, rel=0.2)


def test_layers_that_feed_avr_start_with_its_bias_and_every_other_bias_is_zero():
    # AVR at conv1-3 only (the CReLU paper's partial rows), ReLU after conv4-8, the classifier last.
    mixed = weight_layers(create("convpool_cnn_c", width=0.25, act="avr", act_at=[1, 2, 3]))
    assert [torch.unique(layer.module.bias).tolist() for layer in mixed] == [[0.5]] * 3 + [[0.0]] * 6
    zero = weight_layers(create("convpool_cnn_c", width=0.25, act="avr", initial_bias=0.0))
    assert all(torch.all(layer.module.bias == 0) for layer in zero)
    with pytest.raises(TypeError, match="relu"):
        create("convpool_cnn_c", width=0.25, act="relu", initial_bias=0.5)


def _plain_stack(act: str, depth: int = 12, channels: int = 64) -> nn.Sequential:
    factory = make_activation(act)
    layers, c_in = [], channels
    for _ in range(depth):
        layers += [nn.Conv2d(c_in, channels, 3, padding=1, bias=False), factory(channels)]
        c_in = factory.out_channels(channels)
    return nn.Sequential(*layers)


def _forward_ratio(model: nn.Sequential) -> float:
    """Geometric mean of Var[y_{l+1}] / Var[y_l] over consecutive conv responses."""
    x = torch.randn(8, 64, 16, 16)
    variances = []
    with torch.no_grad():
        for module in model:
            x = module(x)
            if isinstance(module, nn.Conv2d):
                variances.append(x.var().item())
    ratios = [b / a for a, b in zip(variances[:-1], variances[1:], strict=True)]
    return math.exp(sum(map(math.log, ratios)) / len(ratios))


@pytest.mark.parametrize("act", ["relu", "prelu", "crelu", "avr"])
def test_kaiming_fan_in_keeps_forward_variance(act):
    torch.manual_seed(0)
    model = _plain_stack(act)
    init_model(model, InitSpec("kaiming", "fan_in"))
    assert 0.85 < _forward_ratio(model) < 1.15  # Eq. 10: a per-layer factor of 1


def test_xavier_halves_forward_variance_per_relu_layer():
    torch.manual_seed(0)
    model = _plain_stack("relu")
    init_model(model, InitSpec("xavier", "fan_in"))
    assert 0.42 < _forward_ratio(model) < 0.58  # §2.2: n Var[w] = 1 leaves 1/2 per ReLU layer


# ------------------------------------------------------------ activations beyond rectifiers (rectnet/layers/gain.py)


@pytest.mark.parametrize("act", ["gelu", "tanh", "hardswish"])
def test_a_non_homogeneous_activation_gets_its_derived_gains_and_the_first_layer_gain_one(act):
    # fan_in: layers after f get 1/sqrt(E[f(z)²]); the first layer reads the unit-variance input and gets gain 1,
    # which starts the net at the fixed point q* = 1 (a rectifier's first layer keeps He et al.'s rule, above).
    # fan_out: 1/sqrt(E[f'(z)²]) on the layer's own filters; the classifier, followed by no activation, gets 1.
    gains = make_activation(act)(1).gains()
    plain = {"head_scale": 1.0, "count_dropout": False}
    torch.manual_seed(0)
    fan_in = create("convpool_cnn_c", act=act, init=InitSpec("kaiming", "fan_in", **plain))
    expected = [(1.0 if i == 0 else gains.forward) / math.sqrt(k * k * c) for i, (c, d, k) in enumerate(CONVPOOL)]
    for measured, theory in zip(_conv_stds(fan_in), expected, strict=True):
        assert measured == pytest.approx(theory, rel=0.05)
    fan_out = create("convpool_cnn_c", act=act, init=InitSpec("kaiming", "fan_out", **plain))
    expected = [gains.backward / math.sqrt(k * k * d) for c, d, k in CONVPOOL[:-1]] + [math.sqrt(1 / 10)]
    for measured, theory in zip(_conv_stds(fan_out), expected, strict=True):
        assert measured == pytest.approx(theory, rel=0.05)


def test_a_stated_gain_sets_every_layer_after_the_activation():
    torch.manual_seed(0)
    plain = InitSpec(head_scale=1.0, count_dropout=False)
    model = create("convpool_cnn_c", act="silu", gain=math.sqrt(2), init=plain)
    stds = _conv_stds(model)
    assert stds[0] == pytest.approx(1 / math.sqrt(27), rel=0.05)  # the first layer reads the input: gain 1
    for measured, (c, _, k) in zip(stds[1:], CONVPOOL[1:], strict=True):
        assert measured == pytest.approx(math.sqrt(2 / (k * k * c)), rel=0.05)  # ReLU's gain, as stated


@pytest.mark.parametrize("act", ["gelu", "selu", "tanh"])
def test_kaiming_fan_in_keeps_forward_variance_for_smooth_activations(act):
    torch.manual_seed(0)
    model = _plain_stack(act)
    init_model(model, InitSpec("kaiming", "fan_in"))
    assert 0.85 < _forward_ratio(model) < 1.15  # the fixed point q* = 1: a per-layer factor of 1
