"""rectnet.convert and model=timm: rectifiers, CReLU's half construction, data-flow init, training, bad input.

Expected values come from hand counts and from He et al. 2015's gains (Eq. 10/14/15) applied by hand to the
data flow written in each test model's `forward`, never from the code under test.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import TINY, compose_train, run_cli
from torch import nn

import rectnet
from rectnet.config import ConfigError
from rectnet.convert import ConversionError, create_timm
from rectnet.engine.train import run
from rectnet.layers.activations import CReLU, PReLU, Rectifier, ReLU
from rectnet.layers.facts import weight_layers
from rectnet.layers.init import InitSpec

pytestmark = pytest.mark.usefixtures("one_thread")

SQRT2 = math.sqrt(2.0)


class SmallRes(nn.Module):
    """stem conv-BN-ReLU, one residual block (conv-BN-ReLU, conv-BN, sum, ReLU), pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(x)))))
        x = self.relu3(x + y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# Hand counts. SmallRes: conv1 3·8·9 = 216, conv2 and conv3 8·8·9 = 576 each, three BNs 2·8 = 16 each,
# fc 8·10 + 10 = 90.
SMALLRES_PARAMS = 216 + 576 + 576 + 3 * 16 + 90  # 1506
# CReLU half: relu1 and relu2 follow conv -> BN with nothing else reading them: conv1 3·4·9 = 108 and
# conv2 8·4·9 = 288 (it still reads 8 channels: CReLU doubled conv1's 4), BN1 and BN2 2·4 = 8 each; relu3
# follows the sum and stays ReLU, conv3 keeps 576 and BN3 16.
SMALLRES_CRELU_PARAMS = 108 + 8 + 288 + 8 + 576 + 16 + 90  # 1094
SMALLRES_PRELU_PARAMS = SMALLRES_PARAMS + 3 * 8  # one slope per channel at each of the three sites


def test_crelu_halves_the_convs_it_can_and_keeps_every_width():
    model = SmallRes()
    out_before = model.eval()(torch.zeros(2, 3, 12, 12)).shape
    model, report = rectnet.convert(model, "crelu", input_size=(3, 12, 12))
    assert [type(m) for m in (model.relu1, model.relu2, model.relu3)] == [CReLU, CReLU, ReLU]
    assert (model.conv1.out_channels, model.bn1.num_features) == (4, 4)
    assert (model.conv2.in_channels, model.conv2.out_channels, model.bn2.num_features) == (8, 4, 4)
    assert (model.conv3.in_channels, model.conv3.out_channels, model.bn3.num_features) == (8, 8, 8)
    assert model.eval()(torch.zeros(2, 3, 12, 12)).shape == out_before
    assert [s.index for s in report.halved] == [1, 2]
    assert "not CReLU" in report.sites[2].note and "add" in report.sites[2].note
    assert (report.params_before, report.params_after) == (SMALLRES_PARAMS, SMALLRES_CRELU_PARAMS)
    assert sum(p.numel() for p in model.parameters()) == SMALLRES_CRELU_PARAMS


def test_prelu_everywhere_adds_one_slope_per_channel():
    model, report = rectnet.convert(SmallRes(), "prelu", input_size=(3, 12, 12))
    assert all(isinstance(m, PReLU) and m.weight.numel() == 8 for m in (model.relu1, model.relu2, model.relu3))
    assert report.params_after == SMALLRES_PRELU_PARAMS == sum(p.numel() for p in model.parameters())


class Scrambled(nn.Module):
    """Registered head, conv_b, act_late, conv_a, norm_a, act_early; data flow conv_a -> norm_a -> act_early ->
    conv_b -> act_late -> pool -> head. Registration order pairs conv_b with nothing before it and the head
    with no role; the data flow says otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(128, 100)
        self.conv_b = nn.Conv2d(256, 128, 3, padding=1, bias=False)
        self.act_late = nn.ReLU()
        self.conv_a = nn.Conv2d(3, 256, 3, padding=1, bias=False)
        self.norm_a = nn.BatchNorm2d(256)
        self.act_early = nn.ReLU()

    def forward(self, x):
        x = self.act_late(self.conv_b(self.act_early(self.norm_a(self.conv_a(x)))))
        return self.head(x.mean((2, 3)))


PRELU_GAIN = math.sqrt(2 / (1 + 0.25**2))  # Eq. 15 with the initial slope 0.25


@pytest.mark.parametrize(
    ("activation", "act_at", "early", "late"),
    [
        # (backward/forward gain of act_early, of act_late): ReLU sqrt(2) (Eq. 10/14), AVR 1, PReLU Eq. 15
        ("avr", [2], SQRT2, 1.0),
        ("prelu", [1], PRELU_GAIN, SQRT2),
    ],
)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_init_pairs_each_layer_with_the_rectifier_of_its_data_flow(activation, act_at, early, late, mode):
    torch.manual_seed(0)
    init = InitSpec("kaiming", mode, head_scale=1.0)
    model, report = rectnet.convert(Scrambled(), activation, init, act_at=act_at, input_size=(3, 8, 8))
    assert [s.where for s in report.sites] == ["act_early", "act_late"]  # data-flow order, not registration
    # By hand from forward(): conv_a reads pixels (first-layer rule: the rectifier after it, through the norm),
    # conv_b reads act_early and is followed by act_late, head reads act_late and is followed by nothing.
    if mode == "fan_in":
        expected = {"conv_a": early / math.sqrt(3 * 9), "conv_b": early / math.sqrt(256 * 9), "head": late / 128**0.5}
    else:
        expected = {"conv_a": early / math.sqrt(256 * 9), "conv_b": late / math.sqrt(128 * 9), "head": 1 / 100**0.5}
    for name, std in expected.items():
        measured = getattr(model, name).weight.std().item()
        assert measured == pytest.approx(std, rel=0.05), name
    # Registration order would have paired them otherwise: the test tells the two apart.
    registered = {w.facts.module: w for w in weight_layers(model)}
    assert registered["conv_b"].before is None and registered["head"].after is None


def test_init_after_a_norm_takes_the_gain_of_the_rectifier_after_the_norm():
    """conv -> BN -> ReLU: Eq. 14's sqrt(2) (docs/convert.md: pre-norm variance 1, the BN's initial running var)."""
    torch.manual_seed(0)
    model, _ = rectnet.convert(Scrambled(), "relu", InitSpec("kaiming", "fan_in"), input_size=(3, 8, 8))
    model.eval()  # BN with its initial running statistics (mean 0, var 1)
    x = torch.randn(64, 3, 8, 8)
    y = model.conv_b(model.act_early(model.norm_a(model.conv_a(x))))
    # Var[y] = n Var[w] E[x²] = (2/n) · n · ½ Var[norm out] = 1 when the norm's output has unit variance: in eval
    # at init the norm is the identity, so that holds when conv_a's own responses have unit variance (Eq. 10).
    var_a = model.conv_a(x).var().item()
    assert y.var().item() == pytest.approx(var_a, rel=0.15)


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return -x


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.gate, self.fc = nn.Conv2d(3, 8, 3), nn.ReLU(), Gate(), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.gate(self.relu(self.conv(x))).mean((2, 3)))


def test_untraceable_model_falls_back_to_module_replacement_naming_the_module():
    with pytest.warns(UserWarning, match="tracing stopped in module 'gate'") as caught:
        model, report = rectnet.convert(Untraceable(), "prelu", input_size=(3, 8, 8))
    assert {w.filename for w in caught.list} == {__file__}
    assert isinstance(model.relu, PReLU) and not report.traced and report.stopped_at == "gate"
    with pytest.raises(ConversionError, match="CReLU needs the data flow.*'gate'"):
        rectnet.convert(Untraceable(), "crelu", input_size=(3, 8, 8))


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.act, self.fc = (
            nn.Conv2d(3, 64, 3),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.Linear(64, 4),
        )

    def forward(self, x):
        return self.fc(self.act(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


def test_functional_rectifier_is_reported_left_alone_and_still_sets_the_gain():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="function call in forward"):
        model, report = rectnet.convert(Functional(), "avr", input_size=(3, 8, 8))
    assert report.sites[1].now == "avr" and "left as relu" in report.sites[0].note
    # conv2 reads F.relu's output: fan_in gain sqrt(2) (ReLU), not AVR's 1
    assert model.conv2.weight.std().item() == pytest.approx(SQRT2 / math.sqrt(64 * 9), rel=0.05)


def test_torchvision_resnet_shared_relu_is_not_halved_and_its_slopes_are_shared():
    tv = torchvision.models.resnet18(num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = rectnet.convert(tv, "crelu", input_size=(3, 32, 32))
    # torchvision's BasicBlock calls one `relu` module after bn1 and after the sum: only the stem's converts
    assert [s.where for s in report.halved] == ["relu"]
    assert all("called at 2 places" in s.note for s in report.sites[1:])
    with pytest.warns(UserWarning, match="share one set of prelu parameters") as caught:
        rectnet.convert(torchvision.models.resnet18(num_classes=10), "prelu", input_size=(3, 32, 32))
    # one warning for the conversion, a line for each of the 8 blocks' shared `relu` (the stem's is called once)
    (warning,) = caught.list
    assert warning.filename == __file__  # at the caller's line, not inside rectnet.convert
    lines = str(warning.message).splitlines()
    assert lines[0] == "converting ResNet to prelu:"
    expected = [f"layer{i}.{j}.relu" for i in range(1, 5) for j in range(2)]
    assert [line.split()[0] for line in lines[1:]] == expected


def test_timm_resnet_cifar_stem_and_crelu():
    model, report = create_timm(
        "resnet18", 10, image_size=32, cifar_stem=True, kwargs={"channels": (8, 16, 32, 64)}, activation="crelu"
    )
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)  # 32 / 8: three stride-2 stages
    # 17 rectifiers: the stem's, and act1/act2 of 8 blocks; CReLU on the stem and every act1, ReLU after each sum
    assert len(report.sites) == 17 and len(report.halved) == 9
    assert all(isinstance(b.act1, CReLU) and isinstance(b.act2, ReLU) for b in model.modules() if hasattr(b, "act2"))
    assert model.layer2[0].conv1.out_channels == 8 and model.layer2[0].conv2.in_channels == 16
    assert report.params_after < report.params_before


def test_timm_mobilenet_depthwise_convs_are_not_halved():
    model, report = create_timm("mobilenetv2_050", 10, image_size=32, activation="crelu")
    notes = {s.where: s.note for s in report.sites}
    assert "grouped conv" in notes["blocks.1.0.bn2.act"]  # after the depthwise conv
    assert not notes["blocks.1.0.bn1.act"] and isinstance(model.blocks[1][0].bn1.act, CReLU)  # after the 1x1
    assert model.blocks[1][0].bn1.num_features == model.blocks[1][0].conv_pw.out_channels
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_every_rectifier_becomes_the_activation_in_timm_convnext_with_relu():
    model, report = create_timm("convnext_atto", 10, image_size=32, kwargs={"act_layer": "relu"}, activation="prelu")
    rectifiers = [m for m in model.modules() if isinstance(m, (nn.ReLU, Rectifier))]
    assert rectifiers and all(isinstance(m, PReLU) for m in rectifiers) and len(rectifiers) == len(report.sites)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: create_timm("resnet81", 10), "close matches: resnet18"),
        (lambda: create_timm("timm", 10), "model=timm needs an architecture"),
        (lambda: create_timm("resnet18", 10, image_size=32, act_at=[18]), r"rectifiers 1\.\.17.*\[18\]"),
        (lambda: create_timm("resnet18", 10, kwargs={"nonsense": 1}), "does not take model.kwargs"),
        (lambda: create_timm("vgg11", 10, cifar_stem=True), "never forks"),
        (lambda: create_timm("efficientnet_b0", 10), "no rectifier"),
        (
            lambda: rectnet.convert(
                nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 2)), "crelu", input_size=(3, 2, 2)
            ),
            "no rectifier of this network can take the half construction",
        ),
        (lambda: rectnet.convert(SmallRes(), "relu", base_act="crelu"), "base_act"),
    ],
)
def test_bad_input_is_refused_with_the_reason(call, message):
    with pytest.raises(ConversionError, match=message):
        call()


def test_config_refuses_rectnet_only_keys_for_timm():
    from rectnet.config import to_settings

    with pytest.raises(ConfigError, match="model.width is for rectnet's nets"):
        to_settings(compose_train(["model=timm", "model.width=0.5"]))
    with pytest.raises(ConfigError, match="model.cifar_stem is for model=timm"):
        to_settings(compose_train(["model.cifar_stem=true"]))


# TINY's data and trainer, with a ResNet-10 (resnet18's blocks, one per stage) at widths 8-16 and a CIFAR stem
TIMM_TINY = [
    *(o for o in TINY if not o.startswith("model.")),  # model.width/dropout are for rectnet's nets
    "model=timm",
    "model.name=resnet18",
    "model.cifar_stem=true",
    "+model.kwargs={channels:[8,8,16,16],layers:[1,1,1,1]}",  # `+`: keys into a dict, as for model.init_std
]


def _tiny(extra: list[str]) -> list[str]:
    return [*TIMM_TINY, *extra]


def test_one_step_trains_two_timm_families_with_slopes_in_tensorboard(tmp_path):
    resnet = run(
        compose_train(
            _tiny(["activation=prelu", "trainer.epochs=1", "trainer.max_steps_per_epoch=1"]), tmp_path / "resnet"
        )
    )
    mobilenet = [*TIMM_TINY[:-3], "model.name=mobilenetv2_050", "dataset.image_size=32", "activation=crelu"]
    mobile = run(compose_train([*mobilenet, "trainer.epochs=1", "trainer.max_steps_per_epoch=1"], tmp_path / "mobile"))
    for results in (resnet, mobile):
        assert math.isfinite(results["final"]["loss"])
    state = torch.load(tmp_path / "mobile" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert state["blocks.1.0.conv_pw.weight"].shape[0] * 2 == state["blocks.1.0.conv_dw.weight"].shape[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "resnet" / "tb"), size_guidance={"histograms": 0})
    events.Reload()
    assert any("act1" in tag for tag in events.Tags()["histograms"])


def test_resume_of_a_converted_model_is_bit_for_bit(tmp_path):
    recipe = _tiny(["activation=crelu", "trainer.epochs=2", "trainer.max_steps_per_epoch=3"])
    run(compose_train(recipe, tmp_path / "straight"))
    run(compose_train([*recipe, "trainer.epochs=1"], tmp_path / "cut"))
    run(compose_train([*recipe, "trainer.resume=auto"], tmp_path / "cut"))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["layer1.0.conv1.weight"].shape[0] == 4  # the halved conv was saved and restored as such

    from rectnet.results.runs import read_runs
    from rectnet.results.table import group_runs, other_runs

    groups = group_runs(read_runs([tmp_path]))
    (line,) = other_runs(groups, set())
    assert line.variant.model.startswith("timm:resnet18[cifar_stem") and line.cells["top-1"].n == 2


def test_summary_and_propagation_build_timm_models(capsys):
    from rectnet.analysis.propagation import analyse
    from rectnet.summary import summarize

    overrides = [o for o in _tiny(["dataset.image_size=16"]) if not o.startswith("trainer.")]
    record = summarize(overrides)
    assert record["model"] == "resnet18" and record["params"] > 0
    result = analyse([*overrides, "trainer.batch_size=8"])
    # conv1, two convs in each of 4 blocks, 4 shortcut convs (every stage changes width or stride), fc
    assert len(result["layers"]) == 14 and all(v > 0 for v in result["forward_var"])


def test_the_stability_probe_measures_a_converted_timm_model(capsys):
    from rectnet.analysis.sharpness import main as sharpness

    sharpness(["--iters", "4", *_tiny(["activation=crelu", "trainer.batch_size=16"])])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["lambda_max"] > 0 and result["stable"] == (result["lr"] < result["lr_max_stable"])
    assert sum(row["share"] for row in result["layers"]) == pytest.approx(1.0, abs=0.02)  # every parameter counted


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.name=resnt18"], "close matches: resnet18"),
        (["model.act_at=[99]"], "rectifiers 1..9"),
    ],
)
def test_cli_bad_timm_input_exits_nonzero(tmp_path, args, message):
    proc = run_cli([*_tiny(args), f"hydra.run.dir={tmp_path}"])
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_torchrun_trains_a_converted_timm_model(tmp_path):
    """Every rank builds and converts the same network; DDP's gradient sync needs identical parameter lists."""
    import json
    import os
    import subprocess
    import sys

    from helpers import ROOT

    args = [*_tiny(["activation=crelu", "trainer.epochs=1", "dataset.num_test=101"]), f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["world_size"] == 2 and results["final"]["count"] == 101


def test_rectifiers_inside_a_closed_timm_leaf_are_converted_but_not_halved():
    """timm marks VGG's ConvMlp head notrace (fx cannot trace it): its ReLUs still become the activation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = create_timm("vgg11", 10, image_size=32, activation="crelu", kwargs={"mlp_ratio": 0.0625})
    inside = [s for s in report.sites if s.where.startswith("pre_logits.")]
    assert len(inside) == 2 and all("keeps closed" in s.note for s in inside)
    assert len(report.halved) == 8  # the eight convs of the features
    assert report.layers[-1].reads == f"#{inside[-1].index}"  # the classifier reads the head's last rectifier
