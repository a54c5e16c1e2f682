"""The checkpoint and curve analyses on inputs whose answer is known by construction: PReLU slopes read back
(He et al. Table 1), filter pairing (CReLU Figs. 2-3), invariance scores (Fig. 4), outgoing-weight pair
correlations (Table 6) and convergence curves (He et al. Figs. 2-3)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from rectnet.analysis import curves, invariance, pair_correlation, pairing, slopes
from rectnet.analysis.plotting import pyplot
from rectnet.analysis.slopes import TABLE1
from rectnet.analysis.trained import build_from_config, load_model
from rectnet.layers.activations import PReLU, make_activation
from rectnet.layers.facts import weight_layers
from rectnet.models.spec import CLASSES, Conv, GlobalAvgPool, Linear, build
from rectnet.results.runs import read_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(model: str, activation: str, width: float, **model_extra) -> dict:
    return {
        "model": {"name": model, "width": width, "act_at": None, "halve_at": [], "base_act": "relu", **model_extra},
        "activation": {"name": activation, "slope": 0.25 if activation.startswith("prelu") else None},
        "dataset": {"name": "synthetic", "num_classes": 10, "image_size": 16, "num_train": 300, "num_test": 100},
        "seed": 0,
    }


def save_checkpoint(run_dir, config: dict, edit=None):
    """A run directory with checkpoints/last.pt as train.py writes it (model, config, epoch); `edit(model)`
    sets known weights first."""
    model = build_from_config(config)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    path = run_dir / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": config, "epoch": 7}, path)
    return run_dir


# ---------------------------------------------------------------------------------------------------------
# slopes (He et al. 2015 Table 1)


def _prelus(model: nn.Module) -> list[PReLU]:
    return [m for m in model.modules() if isinstance(m, PReLU)]


def test_channel_shared_slopes_read_back_under_table1_names(tmp_path, capsys):
    values = list(TABLE1.values())

    def set_slopes(model):
        for module, (shared, _) in zip(_prelus(model), values, strict=True):
            module.weight.fill_(shared)

    run = save_checkpoint(tmp_path, _config("prelu_small14", "prelu_shared", 1 / 16), set_slopes)
    slopes.main([str(run), "--out", str(tmp_path / "slopes.txt")])
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads(printed[-1])
    assert (tmp_path / "slopes.txt").read_text().splitlines() == printed[:-1]  # the table, as printed
    assert [r["layer"] for r in result["layers"]] == list(TABLE1)
    for record, (shared, _) in zip(result["layers"], values, strict=True):
        assert record["mode"] == "channel-shared"
        assert record["mean"] == pytest.approx(shared) and record["paper"] == shared


def test_channel_wise_slopes_give_their_mean_and_the_channel_wise_paper_column(tmp_path):
    def set_slopes(model):
        for module in _prelus(model):
            module.weight.copy_(torch.linspace(0.0, 1.0, module.weight.numel()))

    run = save_checkpoint(tmp_path, _config("prelu_small14", "prelu", 1 / 16), set_slopes)
    records = slopes.slope_records(load_model(run))
    conv1 = records[0]
    assert (conv1.layer, conv1.spec, conv1.mode, conv1.channels) == ("conv1", "7x7, 4, /2", "channel-wise", 4)
    assert (conv1.mean, conv1.min, conv1.max) == (pytest.approx(0.5), 0.0, 1.0)
    assert conv1.paper == TABLE1["conv1"][1]


def test_slopes_of_a_model_without_prelu_is_an_error(tmp_path):
    run = save_checkpoint(tmp_path, _config("convpool_cnn_c", "relu", 0.125))
    with pytest.raises(SystemExit, match="no PReLU layers"):
        slopes.main([str(run)])


def test_weight_layer_names_follow_each_paper():
    def names(model_name: str) -> list[str]:
        model = build_from_config(_config(model_name, "relu", 1 / 16))
        return [w.name for w in weight_layers(model)]

    assert names("prelu_plain30")[14:16] == ["conv3_10", "conv3_11"]  # stage 3 holds 22 convs
    assert names("prelu_a")[:3] == ["conv1", "conv21", "conv22"] and names("prelu_a")[-1] == "fc3"
    assert names("vgg_cifar")[-2:] == ["fc14", "fc15"]  # CReLU paper models: index among weight layers


# ---------------------------------------------------------------------------------------------------------
# pairing (CReLU §2.1, Figs. 2-3)


def test_filters_built_as_plus_minus_pairs_have_mu_minus_one(tmp_path):
    def paired_conv1(model):
        conv1 = weight_layers(model)[0].module
        half = conv1.out_channels // 2
        v = torch.randn(half, *conv1.weight.shape[1:])
        conv1.weight.copy_(torch.cat([v, -v]))

    run = save_checkpoint(tmp_path, _config("convpool_cnn_c", "relu", 0.125), paired_conv1)
    loaded = load_model(run)
    results = pairing.analyse_model(loaded.model, ["conv1", "conv2"], bins=10)
    conv1, conv2 = (r.summary() for r in results)
    assert conv1["learned_mean"] == pytest.approx(-1.0) and conv1["learned_std"] == pytest.approx(0.0, abs=1e-9)
    assert conv1["random_mean"] > -0.9  # 12 random 27-dim directions are far from antipodal
    assert conv2["learned_mean"] > -0.9

    paths = pairing.write_outputs(results, tmp_path / "out", "test")
    rows = paths[1].read_text().splitlines()[1:]
    learned_conv1 = [int(r.split(",")[-1]) for r in rows if r.startswith("conv1,learned")]
    assert sum(learned_conv1) == 12 and len(learned_conv1) == 10


def test_pairing_similarity_is_the_most_negative_cosine_to_another_filter():
    filters = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    assert pairing.pairing_similarity(filters).tolist() == [-1.0, 0.0, -1.0]


# ---------------------------------------------------------------------------------------------------------
# invariance (CReLU §4.2, Goodfellow et al. 2009)


def test_a_global_average_unit_scores_the_maximum_and_a_pixel_unit_scores_low():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1000, 1, 8, 8, generator=generator)
    shifts = [t for t in invariance.default_transforms(max_shift=2, angles=()) if t.kind == "translation"]
    moved = [invariance.translate(images, t.dy, t.dx, circular=True) for t in shifts]

    average = invariance.invariance_scores(
        images.mean(dim=(1, 2, 3))[:, None], [m.mean(dim=(1, 2, 3))[:, None] for m in moved]
    )
    assert average.item() == pytest.approx(1 / 0.01)  # fires on every shifted copy: L = 1, G = 1%

    pixel = invariance.invariance_scores(images[:, 0, 0, :1], [m[:, 0, 0, :1] for m in moved])
    assert pixel.item() < 10  # a shifted copy puts an unrelated pixel there: fires at about the global rate


def test_thresholds_fire_on_the_top_one_percent_and_layer_scores_average_the_top_fifth():
    responses = torch.arange(200, dtype=torch.float64)[:, None]
    assert ((responses > invariance.firing_thresholds(responses, 0.01)).sum()) == 2
    scores = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, math.nan])
    assert invariance.top_fraction_mean(scores, 0.2) == pytest.approx(9.5)  # NaN (never fires) is left out


def test_translate_fills_with_zeros_or_wraps_and_rotate_keeps_pixels():
    x = torch.arange(4.0).view(1, 1, 1, 4)
    assert invariance.translate(x, 0, 1).flatten().tolist() == [0, 0, 1, 2]
    assert invariance.translate(x, 0, -1, circular=True).flatten().tolist() == [1, 2, 3, 0]
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(invariance.rotate(images, 0.0), images)
    assert torch.equal(invariance.rotate(images, 90.0), torch.rot90(images, 1, (2, 3)))  # nearest: pixels kept


def _mean_unit_net() -> nn.Module:
    """conv1: one 1x1 filter summing the channels (ReLU after it), then global pooling and a classifier."""
    model = build([Conv(1, 1), GlobalAvgPool(), Linear(CLASSES, act=None)], make_activation("relu"), 10)
    with torch.no_grad():
        conv = model.features[0]
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    return model.eval()


def test_measure_scores_a_spatially_averaged_unit_invariant_to_circular_shifts():
    model = _mean_unit_net()
    layers = [w for w in weight_layers(model) if w.is_conv]
    images = torch.randn(500, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    shifts = invariance.default_transforms(max_shift=2, angles=())
    (mean_pooled,) = invariance.measure(model, layers, images, shifts, pool="mean", circular=True)
    assert mean_pooled.layer_scores()["translation"] == pytest.approx(100.0)
    (centre,) = invariance.measure(model, layers, images, shifts, pool="center", circular=True)
    assert centre.layer_scores()["translation"] < 10


def test_invariance_cli_on_a_checkpoint_and_synthetic_data(tmp_path, capsys):
    run = save_checkpoint(tmp_path, _config("convpool_cnn_c", "crelu", 0.125))
    invariance.main([str(run), "--synthetic", "--num-images", "100", "--max-shift", "1", "--angles", "5"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 100 and len(result["transforms"]) == 6
    assert set(result["layers"]) == {f"conv{i}" for i in range(1, 10)}
    assert set(result["layers"]["conv1"]) == {"translation", "rotation", "all"}
    assert (run / "analysis" / "invariance.json").is_file()


# ---------------------------------------------------------------------------------------------------------
# pair correlation (CReLU Table 6)


def test_phase_correlations_on_constructed_outgoing_weights():
    w = torch.randn(8, 30, dtype=torch.float64)
    same, _ = pair_correlation.phase_correlations(torch.cat([w, w]))  # AVR-like: both phases weighed alike
    opposite, _ = pair_correlation.phase_correlations(torch.cat([w, -w]))  # linear-like
    assert same.tolist() == pytest.approx([1.0] * 8) and opposite.tolist() == pytest.approx([-1.0] * 8)

    pos, neg = torch.randn(2, 3, 30, dtype=torch.float64)
    pair, nonpair = pair_correlation.phase_correlations(torch.cat([pos, neg]))
    expected = torch.corrcoef(torch.cat([pos, neg]))[:3, 3:]
    assert pair.tolist() == pytest.approx(expected.diagonal().tolist())
    assert sorted(nonpair.tolist()) == pytest.approx(sorted(expected[~torch.eye(3, dtype=torch.bool)].tolist()))


def test_pair_correlation_of_a_crelu_checkpoint(tmp_path, capsys):
    def avr_like_conv2(model):  # conv2 weighs conv1's negative phase exactly as its positive phase
        conv2 = weight_layers(model)[1].module
        d = conv2.in_channels // 2
        conv2.weight[:, d:] = conv2.weight[:, :d]

    run = save_checkpoint(tmp_path, _config("convpool_cnn_c", "crelu", 0.125), avr_like_conv2)
    pair_correlation.main([str(run)])
    layers = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["layers"]
    conv1, conv2 = layers[0], layers[1]
    assert conv1["layer"] == "conv1" and conv1["pair_mean"] == pytest.approx(1.0) and conv1["filters"] == 12
    assert abs(conv2["pair_mean"]) < 0.5  # untouched random weights


def test_a_crelu_classifier_has_no_outgoing_weights_and_is_skipped():
    config = _config("allcnn_b", "crelu", 1 / 16, halve_at=list(range(1, 13)))
    stats, skipped = pair_correlation.analyse_model(build_from_config(config))
    assert [s.layer for s in stats] == [f"conv{i}" for i in range(1, 12)] and skipped == ["conv12"]


# ---------------------------------------------------------------------------------------------------------
# curves (He et al. 2015 Figs. 2-3)


def _metrics_run(folder, init: str, errors: list[float], seed: int = 0):
    (folder / ".hydra").mkdir(parents=True)
    config = {
        "dataset": {"name": "cifar10", "num_classes": 10},
        "model": {"name": "prelu_plain30", "width": 0.125, "act_at": None, "halve_at": [], "base_act": "relu"},
        "activation": {"name": "relu", "slope": None},
        "init": {"name": init, "mode": "fan_in"},
        "seed": seed,
    }
    (folder / "results.json").write_text(json.dumps({"status": "completed", "config": config}))
    lines = [json.dumps({"epoch": e, "test/top1_err": v, "train/loss": v / 40}) for e, v in enumerate(errors, 1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_curves_table_and_summary_of_kaiming_vs_xavier(tmp_path, capsys):
    _metrics_run(tmp_path / "k", "kaiming", [85.0, 70.0, 60.0])
    _metrics_run(tmp_path / "x", "xavier", [90.0, 90.0])
    out = tmp_path / "curves"
    curves.main([str(tmp_path), "--below", "75", "--out", str(out)])
    summary = {s["label"]: s for s in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]}
    kaiming = summary["prelu_plain30 width 0.125 relu kaiming/fan_in seed 0"]
    xavier = summary["prelu_plain30 width 0.125 relu xavier/fan_in seed 0"]
    assert (kaiming["final"], kaiming["first_epoch_below"], kaiming["best_epoch"]) == (60.0, 2, 3)
    assert (xavier["final"], xavier["first_epoch_below"], xavier["chance"]) == (90.0, None, 90.0)
    rows = (out / "curves.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and rows[3] == "3,60,"  # xavier has no epoch 3
    assert (out / "curves.png").is_file() == (pyplot() is not None)  # the dev install has matplotlib
    curves.main([str(tmp_path), "--metric", "train/loss", "--out", str(out)])
    losses = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    assert [s["chance"] for s in losses] == [None, None]  # no chance-level error line for a loss


def test_the_figure_draws_the_seeds_of_a_configuration_in_one_colour_under_one_legend_entry(tmp_path):
    for name, init, seed in [("k0", "kaiming", 0), ("x0", "xavier", 0), ("k1", "kaiming", 1), ("k2", "kaiming", 2)]:
        _metrics_run(tmp_path / name, init, [80.0, 70.0], seed)
    groups = curves.seed_groups(curves.collect(read_runs([tmp_path]), "test/top1_err"))
    assert {name: sorted(c.run.seed for c in members) for name, members in groups.items()} == {
        "prelu_plain30 width 0.125 relu kaiming/fan_in": [0, 1, 2],
        "prelu_plain30 width 0.125 relu xavier/fan_in": [0],
    }
    plt = pyplot()
    if plt is None:
        pytest.skip("matplotlib is not installed")
    fig, ax = plt.subplots()
    curves._draw([c for members in groups.values() for c in members], "test/top1_err", fig, ax)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "prelu_plain30 width 0.125 relu kaiming/fan_in (3 runs)",
        "prelu_plain30 width 0.125 relu xavier/fan_in",
    ]
    assert len({line.get_color() for line in ax.get_lines()}) == 2 and len(ax.get_lines()) == 4
    plt.close(fig)


def test_pairing_cli_writes_its_histograms(tmp_path, capsys):
    run = save_checkpoint(tmp_path / "run", _config("convpool_cnn_c", "relu", 0.125))
    pairing.main([str(run), "--layers", "conv1", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1])["layers"][0]["layer"] == "conv1"
    assert any((tmp_path / "out").glob("*.png")) == (pyplot() is not None)  # the dev install has matplotlib
