"""The model zoo: every paper model and variant composes, builds, runs, and has the papers' size and cost.

Expected figures come from the papers: He et al. 2015 Table 3 (complexity of models A/B/C at 224x224, in
multiply-adds) and Shang et al. 2016 Tables 1 and 5 (parameters). Full-size models are built on the meta
device (shapes only, no memory), so model C's 330M parameters cost nothing here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import rectnet  # noqa: F401  (registers the models with timm)
from rectnet.config import CONFIG_DIR, TrainConfig
from rectnet.layers.activations import Rectifier
from rectnet.layers.spp import SPP, SpatialPyramidPool
from rectnet.models import MODELS, SpecNet, create
from rectnet.models.build import build_model, build_spec_net
from rectnet.summary import compose_settings, layer_macs, layer_stats, main

PAPER_MODELS = ["prelu_small14", "prelu_plain30", "prelu_a", "prelu_b", "prelu_c", "allcnn_b", "vgg_cifar"]
VARIANTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if p.stem != "quickstart")
IMAGENET = ("prelu_", "small14_", "fig2_", "fig3_", "allcnn_b")  # experiments of the ImageNet-size models

# Shang et al. 2016: Table 1 (ConvPool-CNN-C, 10 classes) and Table 5 (All-CNN-B, 1000 classes), parameters.
# AVR keeps the baseline's filters, so its count is the baseline's (Table 1 lists 1.4M; §3.2 for ImageNet).
PAPER_PARAMS = {
    "convpool_baseline": 1.4e6,
    "convpool_double": 5.6e6,
    "convpool_avr": 1.4e6,
    "convpool_crelu": 2.8e6,
    "convpool_crelu_half": 0.7e6,
    "allcnn_b_baseline": 9.4e6,
    "allcnn_b_avr1_4": 9.4e6,
    "allcnn_b_avr1_7": 9.4e6,
    "allcnn_b_avr1_9": 9.4e6,
    "allcnn_b_crelu1_4": 10.1e6,
    "allcnn_b_crelu147": 8.6e6,
    "allcnn_b_crelu_all": 4.7e6,
}
# He et al. 2015 Table 3, complexity (multiply-adds) at 224x224.
PAPER_MACS = {
    "prelu_a_relu": 1.90e10,
    "prelu_a_prelu": 1.90e10,
    "prelu_b_prelu": 2.32e10,
    "fig2_b_kaiming": 2.32e10,
    "fig2_b_xavier": 2.32e10,
    "prelu_c_prelu": 5.30e10,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _num_classes(variant: str) -> int:
    return 1000 if variant.startswith(IMAGENET) else 10


def _meta_model(settings: TrainConfig, num_classes: int) -> SpecNet:
    """The configured model with shapes only (no init: the meta device holds no values)."""
    with torch.device("meta"):
        return build_spec_net(settings, num_classes, initialise=False)


def _check_channels(model: nn.Module, in_chans: int = 3) -> None:
    """Each weight/BN layer reads what the previous layers emit (CReLU doubles, SPP multiplies by Σn²)."""
    channels = in_chans
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert module.in_channels == channels, name
            channels = module.out_channels
        elif isinstance(module, nn.Linear):
            assert module.in_features == channels, name
            channels = module.out_features
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert module.num_features == channels, name
        elif isinstance(module, Rectifier):
            channels *= module.channel_multiplier
        elif isinstance(module, SpatialPyramidPool):
            channels *= module.bins()


@pytest.mark.parametrize("levels, bins", [((7, 3, 2, 1), 63), ((6, 3, 2, 1), 50)])
@pytest.mark.parametrize("size", [14, 18, 5, 2])
def test_spp_output_size(levels, bins, size):
    """§2.3: 63 bins for {7,3,2,1} (models A/B/C), Table 1: 50 for {6,3,2,1}, at any map size."""
    x = torch.randn(2, 8, size, size)
    layer = SPP(levels).to_module(8)
    assert layer(x).shape == (2, bins * 8)
    assert SPP(levels).out_channels(8) == bins * 8


def test_spp_bins_are_max_pools():
    """Level 1 is the global max; where n divides the map (7 on 14x14) the bins are SPP-net's 2x2/2 windows."""
    x = torch.randn(2, 4, 14, 14)
    out = SpatialPyramidPool((7, 1))(x)
    torch.testing.assert_close(out[:, : 4 * 49], nn.functional.max_pool2d(x, 2, 2).flatten(1))
    torch.testing.assert_close(out[:, 4 * 49 :], x.amax(dim=(2, 3)))


def test_every_paper_model_is_registered_with_timm():
    for name in PAPER_MODELS:
        assert name in MODELS
        assert timm.is_model(name)


@pytest.mark.parametrize("first", ["rectnet", "timm"])
def test_timm_knows_rectnets_models_whichever_is_imported_first_and_rectnet_alone_imports_neither(first):
    """rectnet registers its models with timm when timm is imported (rectnet/models/zoo.py), so that a process
    that only imports rectnet or train.py (every run, every rank) does not import timm and torchvision."""
    code = f"""
import sys
import {first}
import rectnet, train
print(sorted(name for name in ("timm", "torchvision") if name in sys.modules))
import timm
print(timm.is_model("convpool_cnn_c"), type(timm.create_model("convpool_cnn_c", width=0.125)).__name__)
"""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    imported, registered = out.stdout.splitlines()
    assert imported == ("[]" if first == "rectnet" else "['timm', 'torchvision']")
    assert registered == "True SpecNet"


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_sizes_match_the_papers(variant):
    settings = compose_settings([f"experiment={variant}"])
    model = _meta_model(settings, _num_classes(variant))
    _check_channels(model)
    params = sum(p.numel() for p in model.parameters())
    if variant in PAPER_PARAMS:
        assert params == pytest.approx(PAPER_PARAMS[variant], rel=0.03)
    if variant in PAPER_MACS:
        macs = sum(s.macs for s in layer_stats(model, 224))
        assert macs == pytest.approx(PAPER_MACS[variant], rel=0.015)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_forward_backward(variant):
    """Every variant, built and initialised as train.py builds it, trains one step at a small input."""
    name = compose_settings([f"experiment={variant}"]).model.name
    overrides = [f"experiment={variant}", "dataset.num_classes=10"]
    if name.startswith("prelu_"):  # 75M-330M parameters at full width, mostly fc1: 1/8 width keeps it fast
        overrides.append("model.width=0.125")
    settings = compose_settings(overrides)
    model = build_model(settings, 10)
    _check_channels(model)
    size = 64 if name == "allcnn_b" else 32  # All-CNN-B's three stride-2 convs need >= 35 pixels
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", PAPER_MODELS)
@pytest.mark.parametrize("act", ["relu", "prelu", "crelu", "avr"])
def test_timm_create_model(name, act):
    model = timm.create_model(name, num_classes=10, act=act, width=0.125)
    _check_channels(model)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)  # 2 images: BatchNorm1d needs more than one


def test_crelu_classifier_emits_num_classes_after_its_activation():
    """CReLU (all), the reading that fits Shang et al. 2016 Table 5's 4.7M: conv12 gets 500 filters, its CReLU
    gives the 1000 logits."""
    with torch.device("meta"):
        model = create("allcnn_b", num_classes=1000, act="crelu", halve_at=range(1, 13), init=None)
    last_conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    assert last_conv.out_channels == 500
    assert model(torch.zeros(1, 3, 224, 224, device="meta")).shape == (1, 1000)
    with pytest.raises(ValueError, match="classes"):
        create("allcnn_b", num_classes=11, act="crelu", init=None)


def test_classifier_without_activation_keeps_num_classes():
    """ConvPool-CNN-C's class-score conv has no activation, so CReLU elsewhere leaves its filters alone."""
    with torch.device("meta"):
        model = create("convpool_cnn_c", num_classes=10, act="crelu", init=None)
    assert [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1].out_channels == 10


def test_vgg_crelu_halves_the_listed_layers():
    """Shang et al. 2016 §3.1: CReLU at conv1,3,5 with half the filters: 32 filters read as 64 channels."""
    with torch.device("meta"):
        model = create("vgg_cifar", num_classes=10, act="crelu", act_at=[1, 3, 5], halve_at=[1, 3, 5], init=None)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs[:6]] == [32, 64, 64, 128, 128, 256]
    assert [c.in_channels for c in convs[1:6]] == [64, 64, 128, 128, 256]


def test_paper_fc_init_std():
    """He et al. §3: fc1/fc2 std 0.01, fc3 0.001 (prelu_a_relu's literal pairing), convs follow the init policy."""
    literal = ["dataset.per_pixel_mean=true", "+model.init_std={17: 0.01, 18: 0.01, 19: 0.001}"]
    settings = compose_settings(["experiment=prelu_a_relu", "model.width=0.125", *literal])
    model = build_model(settings, 10)
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [fc.init_std for fc in fcs] == [0.01, 0.01, 0.001]
    assert fcs[0].weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_layer_macs_formulas():
    """Conv: output elements x (in/groups) x k x k; linear: in x out (per image)."""
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert layer_macs(conv, conv(torch.zeros(1, 4, 5, 5))) == 8 * 25 * 2 * 9
    linear = nn.Linear(10, 4)
    assert layer_macs(linear, linear(torch.zeros(1, 10))) == 40
    assert layer_macs(nn.ReLU(), torch.zeros(1, 3)) == 0


def test_summary_cli_last_line_is_json(capsys):
    main(["experiment=convpool_baseline"])
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["model"] == "convpool_cnn_c"
    assert record["input_size"] == 32
    assert record["params"] == pytest.approx(1.4e6, rel=0.03)
    assert record["macs"] > 0
    assert any(line.startswith("features.") for line in lines)


@pytest.mark.slow
def test_summary_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "rectnet.summary", "model=allcnn_b", "model.width=0.25", "dataset.image_size=64"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1])["model"] == "allcnn_b"
