"""init.center (rectnet/layers/init.py): the centring bias -E[f] sum(W) and Eq. 7 with Var[f], checked against
the closed forms of ReLU's moments and by measuring a deep stack of softplus layers."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import compose_train
from torch import nn

import rectnet
from rectnet.config import ConfigError, to_settings
from rectnet.layers.activations import make_activation
from rectnet.layers.facts import weight_layers
from rectnet.layers.init import InitSpec, init_model
from rectnet.models import create

RELU_MEAN = 1 / math.sqrt(2 * math.pi)  # E[max(z, 0)], z ~ N(0, 1)
RELU_VARIANCE = 0.5 - RELU_MEAN**2  # E[max(z, 0)^2] = 1/2


def _net(center: bool, act: str = "relu") -> nn.Module:
    torch.manual_seed(0)
    return create("convpool_cnn_c", width=0.25, act=act, init=InitSpec(center=center, count_dropout=False))


def test_relu_layers_get_the_closed_form_bias_and_std():
    plain, centred = weight_layers(_net(False)), weight_layers(_net(True))
    assert torch.equal(centred[0].module.bias, torch.zeros_like(centred[0].module.bias))  # reads the input
    assert centred[0].module.weight.std().item() == pytest.approx(plain[0].module.weight.std().item(), rel=1e-6)
    for a, b in zip(plain[1:-1], centred[1:-1], strict=True):
        weight = b.module.weight.detach()
        assert torch.allclose(b.module.bias, -RELU_MEAN * weight.sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)
        ratio = b.module.weight.std().item() / a.module.weight.std().item()
        assert ratio == pytest.approx(math.sqrt(0.5 / RELU_VARIANCE), rel=1e-5)  # same draw, rescaled
    assert not centred[-1].module.weight.any() and not centred[-1].module.bias.any()  # the zero classifier


def _stack(center: bool, depth: int = 12, width: int = 1024) -> list[tuple[float, float]]:
    """(mean, variance) of every pre-activation of a deep softplus MLP on Gaussian input, measured: the mean over
    everything, and the variance between inputs (per unit, averaged over units: the part that tells inputs
    apart)."""
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), make_activation("softplus")(width)]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    init_model(model, InitSpec(center=center, head_scale=1.0))
    x, found = torch.randn(512, width), []
    with torch.no_grad():
        for module in model:
            x = module(x)
            if isinstance(module, nn.Linear):
                found.append((x.mean().item(), x.var(dim=0).mean().item()))
    return found


def test_a_centred_softplus_stack_keeps_mean_zero_and_unit_variance():
    centred, plain = _stack(True), _stack(False)
    for mean, variance in centred[1:]:
        assert abs(mean) < 0.05 and 0.8 < variance < 1.25
    # Without it each unit sits at its own offset (softplus's mean times sum(W), a draw of N(0, ~0.7)) and what
    # tells inputs apart passes through f'(offset): a factor E[f'(z)²] / E[f(z)²] per layer (the gain is
    # 1/sqrt(E[f²])), 0.32 for softplus, here by Monte Carlo
    z = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factor = (torch.sigmoid(z) ** 2).mean().item() / (nn.functional.softplus(z) ** 2).mean().item()
    for (_, before), (_, after) in zip(plain[1:-2], plain[2:-1], strict=True):
        assert after / before == pytest.approx(factor, rel=0.1)


def test_a_converted_model_is_centred():
    from test_activation_families import SmallNet

    torch.manual_seed(0)
    model, _ = rectnet.convert(SmallNet(), make_activation("relu"), InitSpec(center=True), input_size=(3, 16, 16))
    weight = model.conv2.weight.detach()
    assert torch.allclose(model.conv2.bias, -RELU_MEAN * weight.sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)


def test_lsuv_refuses_it_in_one_line():
    with pytest.raises(ConfigError, match="init.center") as err:
        to_settings(compose_train(["init=lsuv", "init.center=true"]))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["rectnet", "timm"])
def test_train_py_with_it_on_every_family(family, tmp_path):
    from test_activation_families import RECTNET_NET, TIMM_NET, TWO_STEPS

    from rectnet.engine.train import run

    net = RECTNET_NET if family == "rectnet" else TIMM_NET
    results = run(compose_train([*TWO_STEPS, *net, "activation=softplus", "init.center=true"], tmp_path))
    assert math.isfinite(results["final"]["loss"])


@pytest.mark.parametrize(
    "overrides, center",
    [
        (["activation=softplus"], True),  # its config asks for it
        (["activation=softplus", "init=xavier"], True),
        (["activation=softplus", "init.center=false"], False),
        (["activation=softplus", "init=lsuv"], False),  # LSUV sets the scales on data
        (["activation=relu"], False),  # the papers' init
        (["activation=relu", "init.center=true"], True),
    ],
)
def test_who_turns_it_on(overrides, center):
    assert to_settings(compose_train(overrides)).init.center is center
