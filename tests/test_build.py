"""Config -> model (rectnet/models/build.py): every field of the `init` group reaches the weights, for rectnet's
nets and for model=timm (issue 22: the init settings were unpacked and renamed twice on the way, and a field
dropped there would have left its default in place without a sound).

Each case sets every field away from its default. The expected stds are computed by hand from each layer's
shape: He et al. 2015's std = gain / sqrt(fan) with fan_out = k²·d (Eq. 14), gain sqrt(2) where a ReLU acts on
the layer's responses and 1 where nothing does (the classifier); Glorot's sqrt(2 / (fan_in + fan_out)) for
xavier's `avg`; and the class-score layer at head_scale times its rule.
"""

from __future__ import annotations

import math

import pytest
import torch

from rectnet.layers.facts import weight_layers
from rectnet.models.build import build_model
from rectnet.summary import compose_settings

pytestmark = pytest.mark.usefixtures("one_thread")

# Kaiming with every other field off its default; xavier (the name) with its own mode, `avg`.
KAIMING = [
    "init=kaiming",
    "init.mode=fan_out",
    "init.distribution=uniform",
    "init.head_scale=0.5",
    "init.count_dropout=false",
]
XAVIER = ["init=xavier", "init.mode=avg", "init.distribution=normal", "init.head_scale=0.5"]

# ConvPool-CNN-C at full width, ReLU (the default model), 10 classes: conv1 3->96 and conv3 96->96 (3x3, each
# followed by a ReLU; conv3 also by pool1 and a dropout of 0.5, which count_dropout=false leaves uncounted, else
# its gain would take a factor sqrt(0.5)), conv4 96->192 (3x3), the class-score conv 192->10 (1x1, followed by
# nothing).
CONVPOOL = {
    "kaiming": {0: math.sqrt(2 / (9 * 96)), 2: math.sqrt(2 / (9 * 96)), 8: 0.5 * math.sqrt(1 / 10)},
    "xavier": {3: math.sqrt(2 / (9 * 96 + 9 * 192)), 8: 0.5 * math.sqrt(2 / (192 + 10))},
}
# resnet18 with one block per stage at widths 8-16 and a CIFAR stem, 100 classes: the stem conv 3->64 (3x3,
# then BN and a ReLU), the classifier 16->100 (followed by nothing).
TIMM_NET = [
    "model=timm",
    "model.name=resnet18",
    "model.cifar_stem=true",
    "+model.kwargs={channels:[8,8,16,16],layers:[1,1,1,1]}",
]
RESNET = {
    "kaiming": {0: math.sqrt(2 / (9 * 64)), -1: 0.5 * math.sqrt(1 / 100)},
    "xavier": {0: math.sqrt(2 / (27 + 9 * 64)), -1: 0.5 * math.sqrt(2 / (16 + 100))},
}


def _check(weight: torch.Tensor, std: float, distribution: str) -> None:
    bound = math.sqrt(3) * std  # U(-b, b) has std b / sqrt(3)
    largest = weight.abs().max().item()
    if distribution == "uniform":  # the largest of >= 1600 draws lies within 2% of the bound
        assert 0.98 * bound < largest <= bound * (1 + 1e-6)
    else:
        assert weight.std().item() == pytest.approx(std, rel=0.05)
        assert largest > bound  # a normal's tails pass where a uniform of that std ends


@pytest.mark.parametrize(
    ("family", "num_classes", "expected"),
    [([], 10, CONVPOOL), (TIMM_NET, 100, RESNET)],
    ids=["rectnet", "timm"],
)
@pytest.mark.parametrize("init", [KAIMING, XAVIER], ids=["kaiming", "xavier"])
def test_every_init_field_reaches_the_weights(family, num_classes, expected, init):
    settings = compose_settings([*family, *init])
    torch.manual_seed(0)
    layers = weight_layers(build_model(settings, num_classes))
    if family:
        assert layers[0].module.weight.shape == (64, 3, 3, 3)  # the shapes the expected stds are computed for
        assert layers[-1].module.weight.shape == (100, 16)
    for index, std in expected[settings.init.name].items():
        _check(layers[index].module.weight, std, settings.init.distribution)
