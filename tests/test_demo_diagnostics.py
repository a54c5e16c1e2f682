"""Diagnostic demo scripts: spread.py (the spread statistics by hand, a resumable two-run grid end to end),
first_step.py and bf16_gradients.py (against theory)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import pytest
from helpers import ROOT, TINY


def _demo(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "demo" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spread():
    return _demo("spread")


def test_the_spread_by_hand():
    errors = {
        (0, "fp32", 1): 10.0,
        (0, "fp32", 2): 14.0,  # seed 0: threads differ by 4
        (1, "fp32", 1): 20.0,
        (1, "fp32", 2): 20.0,  # seed 1: by 0
    }
    s = _spread().summarize(errors)
    assert (s["n"], s["mean"], s["min"], s["max"]) == (4, 16.0, 10.0, 20.0)
    assert s["std"] == pytest.approx((((10 - 16) ** 2 + 4 + 16 + 16) / 3) ** 0.5)
    # over seeds within (fp32, 1 thread): stdev(10, 20) = 7.071; within (fp32, 2): stdev(14, 20) = 4.243
    assert s["std_over_seeds"] == pytest.approx((50**0.5 + 18**0.5) / 2)
    assert s["thread_difference"] == pytest.approx(2.0)


def test_a_failed_run_is_counted_and_named_not_left_out(tmp_path):
    spread = _spread()
    ok, nan, other = (spread.run_dir(tmp_path, "v", seed, "fp32", 1) for seed in (0, 1, 2))
    for where in (ok, nan, other):
        where.mkdir(parents=True)
    (ok / "results.json").write_text(json.dumps({"final": {"top1_err": 12.5}}))
    message = "training loss is nan at epoch 2, step 36: stopped before writing anything; ..."
    (nan / "FAILED").write_text(f"NonFiniteLossError: {message}\n\nTraceback ...")
    (other / "FAILED").write_text("DatasetError: no such file\n")
    assert [spread.outcome(w) for w in (ok, nan, other)] == [12.5, "loss nan at epoch 2, step 36", "DatasetError"]
    assert spread.outcome(tmp_path / "never") is None
    args = argparse.Namespace(
        variant=[("v", [])], out=tmp_path, base=["x=1"], seeds=[0, 1, 2], threads=[1], precisions=["fp32"]
    )
    text = spread.page(args, {"v": {(s, "fp32", 1): spread.outcome(w) for s, w in enumerate((ok, nan, other))}})
    assert "| v | 3 | 2 | 12.5 ± nan | 12.5 - 12.5 | — | — |" in text  # 3 runs, 2 failed; statistics of the one left
    assert "| v | 1 | failed: loss nan at epoch 2, step 36 |" in text and "| v | 2 | failed: DatasetError |" in text


def test_a_variant_needs_a_name():
    spread = _spread()
    assert spread.variant("lr0.005=optim.lr=0.005 seed=1") == ("lr0.005", ["optim.lr=0.005", "seed=1"])
    assert spread.variant("base=") == ("base", [])
    with pytest.raises(Exception, match="NAME"):
        spread.variant("=optim.lr=0.1")


@pytest.mark.slow
def test_two_thread_counts_end_to_end_and_a_rerun_trains_nothing(tmp_path):
    base = [o for o in TINY if not o.startswith("trainer.precision")] + ["trainer.epochs=1"]
    command = [
        sys.executable,
        str(ROOT / "scripts" / "demo" / "spread.py"),
        "--out",
        str(tmp_path),
        "--variant",
        "tiny=optim.lr=0.02",
        "--base",
        *base,
        "--seeds",
        "0",
        "--threads",
        "1",
        "2",
        "--precisions",
        "fp32",
    ]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    errors = [
        json.loads((tmp_path / "tiny" / f"s0_fp32_t{t}" / "results.json").read_text())["final"]["top1_err"]
        for t in (1, 2)
    ]
    assert f"| tiny | 0 | {errors[0]:.2f} | {errors[1]:.2f} |" in first.stdout
    assert json.loads((tmp_path / "tiny" / "s0_fp32_t1" / "results.json").read_text())["config"]["optim"]["lr"] == 0.02
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert "run:" not in again.stdout  # both runs are there: nothing trains again
    assert (tmp_path / "report.md").read_text() == again.stdout.removesuffix("\n")


def test_first_step_a_zero_classifier_moves_alone_and_linearly_in_the_input_scale():
    """scripts/demo/first_step.py. Theory: at a zero class-score layer no gradient reaches the layers below; the
    softmax is uniform whatever the input, so that layer's gradient is its input's, which a ReLU net with zero
    biases scales linearly with the image (positive homogeneity)."""
    first_step = _demo("first_step").first_step
    overrides = [o for o in TINY if not o.startswith("trainer.progress")]
    one, two = (first_step(overrides, scale, batches=1) for scale in (1.0, 2.0))
    assert all(row["step"] == 0 for row in one["layers"][:-1])
    assert one["layers"][-1]["step"] > 0 and one["layers"][-1]["relative"] is None
    assert two["layers"][-1]["step"] == pytest.approx(2 * one["layers"][-1]["step"], rel=1e-5)
    assert one["loss"] == pytest.approx(2.302585, abs=1e-6)  # ln 10: the zero classifier's uniform start


def test_bf16_gradients_err_as_much_as_rounding_the_operands_and_fp32_does_not(one_thread):
    """scripts/demo/bf16_gradients.py. Theory: autocast computes each convolution from bf16-rounded operands
    (8-bit significand, relative rounding up to 2^-9) and accumulates in fp32, so its gradient error is that of
    exact arithmetic on the rounded operands (within the few roundings of its bf16 outputs), and fp32's is
    orders of magnitude smaller."""
    errors = _demo("bf16_gradients").errors
    found = errors([o for o in TINY if not o.startswith("trainer.progress")], steps=2)
    assert [row["layer"] for row in found["layers"]][:2] == ["conv1", "conv2"]
    for row in found["layers"]:
        assert row["fp32"] < 1e-4 and row["bf16_autocast"] > 1e-3, row
        assert 0.5 < row["bf16_autocast"] / row["bf16_operands"] < 2.0, row
