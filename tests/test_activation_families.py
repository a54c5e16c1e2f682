"""Every activation trains with every model family: rectnet's nets, model=timm, and a rectnet.convert()ed model.

An activation's config may carry choices that mean something only for some models (AVR's dropout rate is a
rate for rectnet's layer lists): such a choice must apply where it means something and never make a valid
combination fail (issue 22: `model=timm activation=avr` was refused). The activations are read from
configs/activation/*.yaml, so a new one is tested here without editing this file. Each combination composes
as train.py composes it and trains two steps on tiny synthetic data; its loss must be finite.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIGS, compose_train
from torch import nn

import rectnet
from rectnet.config import to_settings
from rectnet.data.synthetic import make_synthetic
from rectnet.engine.train import run
from rectnet.layers.activations import make_activation

pytestmark = pytest.mark.usefixtures("one_thread")

ACTIVATIONS = sorted(p.stem for p in (CONFIGS / "activation").glob("*.yaml"))

# An activation whose config leaves a required key open gets it here, with why; any other gets nothing.
REQUIRED = {
    "custom": ["activation.target=torch.nn.Tanh"],  # custom.yaml: the user names the function (target: null)
}

# Two steps of 16 images at 16x16, a 64-image test split: what every family's run shares.
TWO_STEPS = [
    "dataset=synthetic",
    "dataset.image_size=16",
    "dataset.num_train=64",
    "dataset.num_test=64",
    "trainer.batch_size=16",
    "trainer.epochs=1",
    "trainer.max_steps_per_epoch=2",
    "trainer.progress=none",
    "trainer.precision=fp32",
    "trainer.threads=1",
    "schedule=constant",
    "logger=none",
]
RECTNET_NET = ["model.width=0.125"]  # ConvPool-CNN-C, the default model
# resnet18's blocks, one per stage, at widths 8-16, with a CIFAR stem: a ResNet-10 that takes 16x16 images
TIMM_NET = [
    "model=timm",
    "model.name=resnet18",
    "model.cifar_stem=true",
    "+model.kwargs={channels:[8,8,16,16],layers:[1,1,1,1]}",
]


def overrides(activation: str) -> list[str]:
    return [f"activation={activation}", *REQUIRED.get(activation, [])]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_a_rectnet_net_trains(activation, tmp_path):
    results = run(compose_train([*TWO_STEPS, *RECTNET_NET, *overrides(activation)], tmp_path))
    assert math.isfinite(results["final"]["loss"])
    # the activation's own dropout rate, where it states one, is the net's (AVR's 0.1 replaces 0.2 / 0.5)
    config = results["config"]
    if config["activation"]["dropout"] is not None:
        assert config["model"]["dropout"] == config["activation"]["dropout"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_a_timm_model_trains(activation, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rectnet"):
        results = run(compose_train([*TWO_STEPS, *TIMM_NET, *overrides(activation)], tmp_path))
    assert math.isfinite(results["final"]["loss"])
    # an activation's dropout rate does not reach a timm model, and the log says so rather than staying silent
    config = results["config"]
    assert config["model"]["dropout"] is None
    noted = "is a rate for rectnet's nets" in caplog.text
    assert noted == (config["activation"]["dropout"] is not None)


class SmallNet(nn.Module):
    """What a user might bring: conv-BN-ReLU, conv-ReLU, pool, linear; plain torch.nn rectifiers."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def synthetic_batches(steps: int, batch: int = 16, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` batches of the synthetic dataset's training images, scaled to about [-1, 1]."""
    train = make_synthetic(10, size, steps * batch, 1, noise=1.5, seed=0).train
    images = train.images.float() / 128 - 1
    return list(zip(images.split(batch), train.labels.split(batch), strict=True))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_a_converted_model_trains(activation):
    # the activation as its config gives it (parameters included), the way a user calls rectnet.convert
    settings = to_settings(compose_train(overrides(activation)))
    act = make_activation(settings.activation.name, **settings.activation.params())
    torch.manual_seed(0)
    model, report = rectnet.convert(SmallNet(), act, settings.init.spec(), input_size=(3, 16, 16))
    assert {site.now for site in report.sites} == {act.name}, report.format()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for images, labels in synthetic_batches(steps=2):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert math.isfinite(loss.item())
