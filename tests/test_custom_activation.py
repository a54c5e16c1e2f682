"""An activation the user brings (issue 24 item 4), end to end: `activation=custom activation.target=<module>.<name>`
through train.py, in model=timm and in rectnet.convert, with its gain derived from its own function (or stated),
and refused in one line when it does not import or is not pointwise."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch
from helpers import TINY, compose_train, run_cli

import rectnet
from rectnet.config import ConfigError, to_settings
from rectnet.layers.activations import make_activation
from rectnet.layers.custom import Custom
from rectnet.layers.facts import weight_layers
from rectnet.layers.init import fans
from rectnet.models.build import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

PACKAGE = "userlab"
SOURCE = '''
import torch
from torch import nn


class SquarePlus(nn.Module):
    """(y + sqrt(y² + 4)) / 2 (Barron 2021): a smooth rectifier, E[f(z)²] = 3/2 under N(0, 1)."""

    def forward(self, x):
        return (x + torch.sqrt(x * x + 4)) / 2


def scaled_tanh(x):
    return 1.7159 * torch.tanh(2 * x / 3)  # LeCun et al. 1998


class ChannelNorm(nn.Module):
    def forward(self, x):
        return x / x.norm(dim=1, keepdim=True)
'''
SQUAREPLUS_FORWARD_GAIN = 1 / math.sqrt(1.5)  # E[(z + sqrt(z² + 4))²] / 4 = (2 E[z²] + 4) / 4


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package `userlab.acts` in a folder on PYTHONPATH (for train.py's process) and on sys.path (in-process)."""
    folder = tmp_path / "site"
    (folder / PACKAGE).mkdir(parents=True)
    (folder / PACKAGE / "__init__.py").write_text("")
    (folder / PACKAGE / "acts.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    yield f"{PACKAGE}.acts"
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_train_py_trains_with_a_custom_activation(user_package, tmp_path):
    target = f"{user_package}.SquarePlus"
    proc = run_cli([*TINY, "activation=custom", f"activation.target={target}", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["activation"] | {"dropout": None} == {
        "name": "custom",
        "target": target,
        "gain": None,
        "slope": None,
        "initial_bias": None,
        "dropout": None,
        "center": False,
    }
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [epoch["train/loss"] for epoch in epochs if "train/loss" in epoch]
    assert len(losses) == 2 and all(map(math.isfinite, losses)) and losses[1] < losses[0]  # it learns


def _settings(*overrides: str):
    return to_settings(compose_train([*TINY, *overrides]))


def test_the_rectnet_net_gets_the_derived_gain(user_package):
    settings = _settings("activation=custom", f"activation.target={user_package}.SquarePlus", "init.head_scale=1")
    torch.manual_seed(0)
    layers = weight_layers(build_model(settings, 10))
    assert all(isinstance(layer.after, Custom) for layer in layers[:-1])
    assert layers[0].after.gains().forward == pytest.approx(SQUAREPLUS_FORWARD_GAIN, rel=1e-9)
    for layer in layers[1:4]:  # conv2, conv3 read SquarePlus; conv4 too, after a pool and dropout (keep 0.5 ... )
        expected = SQUAREPLUS_FORWARD_GAIN * math.sqrt(layer.facts.keep_in / fans(layer.module.weight)[0])
        assert layer.module.weight.std().item() == pytest.approx(expected, rel=0.1)


def test_a_timm_model_takes_it_with_a_stated_gain(user_package):
    settings = _settings(
        "model=timm",
        "model.name=resnet18",
        "model.cifar_stem=true",
        "+model.kwargs={channels:[8,8,16,16],layers:[1,1,1,1]}",
        "model.width=1",
        "model.dropout=null",
        "activation=custom",
        f"activation.target={user_package}.scaled_tanh",
        "activation.gain=1.25",
    )
    torch.manual_seed(0)
    model = build_model(settings, 10)
    sites = [m for m in model.modules() if isinstance(m, Custom)]
    assert sites and all(site.gains().forward == 1.25 for site in sites)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert math.isfinite(loss.item())


def test_rectnet_convert_takes_it(user_package):
    import timm

    act = make_activation("custom", target=f"{user_package}.SquarePlus")
    model, report = rectnet.convert(timm.create_model("resnet18", num_classes=10), act, input_size=(3, 32, 32))
    assert {site.now for site in report.sites} == {"custom"}
    stem = model.get_submodule("layer1.0.conv2")  # reads layer1.0.act1 through a BN: Eq. 10 with that activation
    assert isinstance(model.get_submodule("layer1.0.act1"), Custom)
    assert stem.weight.std().item() == pytest.approx(SQUAREPLUS_FORWARD_GAIN / math.sqrt(9 * 64), rel=0.1)


@pytest.mark.parametrize(
    "target,says",
    [
        ("{p}.Missing", "activation.target={p}.Missing is not importable: module {p} has no attribute 'Missing'"),
        ("{p}.ChannelNorm", "activation.target={p}.ChannelNorm is not pointwise"),
    ],
)
def test_a_target_that_cannot_serve_is_a_config_error_for_every_model_source(user_package, target, says):
    target, says = target.format(p=user_package), says.format(p=user_package)
    for source in ([], ["model=timm", "model.name=resnet18", "model.width=1", "model.dropout=null"]):
        with pytest.raises(ConfigError, match=says.replace(".", r"\.").replace("(", r"\(")):
            _settings(*source, "activation=custom", f"activation.target={target}")


def test_train_py_refuses_a_module_it_cannot_import_in_one_line(tmp_path):
    proc = run_cli([*TINY, "activation=custom", "activation.target=nowhere_pkg.Act", f"hydra.run.dir={tmp_path}"])
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("ConfigError: activation.target=nowhere_pkg.Act is not importable"), last
