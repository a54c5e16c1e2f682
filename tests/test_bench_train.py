"""scripts/bench/train.py at its smallest sizes: every (width, precision) cell is in its JSON line, with every
variant asked for, and each ratio is the quotient of two images/s figures printed in the same cell."""

from __future__ import annotations

import importlib
import json

import pytest
from helpers import ROOT

TINY = ["--batch", "4", "--images", "16", "--steps", "1", "--rounds", "1", "--gemm-n", "16", "--threads", "1"]


def bench_train(argv: list[str], capsys, monkeypatch) -> dict:
    """The script's last printed line, as JSON (what a reader of its output gets). Imported as bench.train with
    scripts/ on sys.path: the plain loop's child process (spawned) imports its function from there."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    returned = importlib.import_module("bench.train").main(argv)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(returned))
    return printed


def check_ratios(cell: dict) -> None:
    rates = cell["images_per_s"]
    for name, ratio in cell["ratios"].items():
        numerator, denominator = name.split("_over_")
        assert ratio == round(rates[numerator] / rates[denominator], 3), (cell["key"], name)


def test_every_cell_every_variant_and_ratios_from_the_printed_figures(capsys, monkeypatch, one_thread):
    # conftest makes trainer.precision=auto read fp32 here: `auto` merges into the fp32 cell and says so
    activations = ["relu", "prelu", "prelu_shared", "crelu"]
    widths = ["0.125", "0.25"]
    argv = [*TINY, "--widths", *widths, "--precisions", "fp32", "auto", "bf16", "--activations", *activations]
    result = bench_train([*argv, "--no-plain", "--clock", "cpu"], capsys, monkeypatch)

    assert result["precision_auto"] == "fp32" and "no native bf16" in result["precision_auto_reason"]
    assert result["clock"] == "cpu" and result["threads"] == 1
    cells = {cell["key"]: cell for cell in result["cells"]}
    assert set(cells) == {f"w{w}/{p}" for w in widths for p in ("fp32", "bf16")}
    assert cells["w0.25/fp32"]["asked_as"] == ["fp32", "auto"] and cells["w0.25/bf16"]["asked_as"] == ["bf16"]
    for cell in cells.values():
        variants = {*activations, "prelu_unfused"}
        assert set(cell["images_per_s"]) == set(cell["warmup_step_ms"]) == variants
        assert all(rate > 0 for rate in cell["images_per_s"].values())
        assert {"prelu_over_relu", "prelu_shared_over_relu", "prelu_unfused_over_relu"} <= set(cell["ratios"])
        check_ratios(cell)
    for name, column in result["ratio_table"].items():
        assert column == {key: cell["ratios"][name] for key, cell in cells.items()}


@pytest.mark.slow
def test_the_plain_loop_runs_beside_in_fp32_cells(capsys, monkeypatch, one_thread):
    argv = [*TINY, "--widths", "0.125", "--precisions", "fp32", "bf16", "--activations", "relu", "prelu"]
    cells = {cell["key"]: cell for cell in bench_train(argv, capsys, monkeypatch)["cells"]}
    fp32, bf16 = cells["w0.125/fp32"], cells["w0.125/bf16"]
    assert {"plain", "plain_model_only"} <= set(fp32["images_per_s"]) and "plain" not in bf16["images_per_s"]
    assert {"relu_over_plain", "relu_over_plain_model_only", "prelu_over_relu"} <= set(fp32["ratios"])
    check_ratios(fp32)
    check_ratios(bf16)
