"""ConvPool-CNN-C against the CReLU paper's Table 1 parameter counts, and its channel arithmetic."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import rectnet  # noqa: F401  (registers the models with timm)
from rectnet.layers.activations import Rectifier
from rectnet.models import create


@pytest.mark.parametrize(
    "act,width,paper_millions",  # CReLU paper Table 1, "params" column
    [("relu", 1.0, 1.4), ("relu", 2.0, 5.6), ("avr", 1.0, 1.4), ("crelu", 1.0, 2.8), ("crelu", 0.5, 0.7)],
)
def test_parameter_counts_match_table1(act, width, paper_millions):
    model = create("convpool_cnn_c", act=act, width=width, init=None)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.03


@pytest.mark.parametrize("act", ["relu", "prelu", "prelu_shared", "crelu", "avr", "leaky_relu"])
def test_every_layer_reads_what_the_previous_activation_emits(act):
    model = create("convpool_cnn_c", act=act, width=0.25, num_classes=100)
    emitted = 3
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert module.in_channels == emitted
            emitted = module.out_channels
        elif isinstance(module, Rectifier):
            emitted *= module.channel_multiplier
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    out.sum().backward()


def test_act_at_and_halve_at_place_the_activation_per_layer():
    model = create("convpool_cnn_c", act="crelu", act_at=[1, 4], halve_at=[1, 4])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs[:5]] == [48, 96, 96, 96, 192]
    assert [c.in_channels for c in convs[:5]] == [3, 96, 96, 96, 192]  # CReLU after conv1 and conv4 doubles


def test_bad_layer_indices_are_refused():
    with pytest.raises(ValueError, match="has 9 weight layers, numbered 1..9"):
        create("convpool_cnn_c", act_at=[0, 10])


def test_timm_create_model_builds_it():
    model = timm.create_model("convpool_cnn_c", num_classes=10, act="prelu")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("convpool_cnn_c", pretrained=True)
