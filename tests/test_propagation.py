"""Variance propagation at init (He et al. 2015 §2.2) on the 30-layer plain net of Fig. 3.

Theory: with Kaiming init the per-layer variance ratio is 1 forward (Eq. 10, mode fan_in) and backward
(Eq. 14, mode fan_out), for every rectifier given its gain; Xavier's n·Var[w] = 1 with ReLU halves the forward
variance per layer (Eq. 8). The bounds are those ratios with a ±25% margin (x0.8 / x1.25) for the finite
width and the zero-padded borders of a small net (see rectnet/analysis/propagation.py).
"""

from __future__ import annotations

import json

import pytest

from rectnet.analysis.plotting import pyplot
from rectnet.analysis.propagation import LayerRecord, analyse, factors, main

# A quarter-width net at 128 pixels: the last stage's maps are 10x10, so borders matter little (~0.96).
SMALL = ["model=prelu_plain30", "model.width=0.25", "dataset.image_size=128", "trainer.batch_size=8", "init=kaiming"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _factors(*overrides: str) -> tuple[float, float]:
    result = analyse([*SMALL, *overrides])
    return result["forward_factor"], result["backward_factor"]


@pytest.mark.parametrize("act", ["relu", "prelu", "crelu", "avr"])
def test_kaiming_fan_in_keeps_the_forward_variance(act):
    forward, _ = _factors(f"activation={act}", "init.mode=fan_in")
    assert 0.8 <= forward <= 1.25


@pytest.mark.parametrize("act", ["relu", "prelu", "crelu", "avr"])
def test_kaiming_fan_out_keeps_the_backward_variance(act):
    _, backward = _factors(f"activation={act}", "init.mode=fan_out")
    assert 0.8 <= backward <= 1.25


def test_xavier_halves_the_forward_variance_with_relu():
    forward, _ = _factors("activation=relu", "init=xavier", "init.mode=fan_in")
    assert 0.5 * 0.8 <= forward <= 0.5 * 1.25


def test_factors_use_conv_pairs_within_a_segment():
    """Ratios telescope within a segment; pairs across pooling, and fc layers, are left out."""
    records = [
        LayerRecord("c1", "conv", 0, 1.0, 8.0),
        LayerRecord("c2", "conv", 0, 2.0, 4.0),
        LayerRecord("c3", "conv", 0, 4.0, 2.0),
        LayerRecord("c4", "conv", 1, 100.0, 1.0),  # after a pool: no pair with c3
        LayerRecord("fc", "linear", 2, 1e-3, 1.0),
    ]
    assert factors(records) == pytest.approx((2.0, 2.0))


def test_cli_prints_a_table_and_json(capsys, tmp_path):
    main(["--plot", str(tmp_path / "propagation.png"), *SMALL, "model.width=0.125", "dataset.image_size=64"])
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    # Fig. 3's net: 27 conv + 3 fc layers; 3 conv pairs in the 128-filter stage and 21 in the 256-filter one.
    assert len(record["layers"]) == len(record["forward_var"]) == len(record["backward_var"]) == 30
    assert record["pairs"] == 3 + 21
    assert {"forward_factor", "backward_factor", "model", "activation", "init", "mode"} <= record.keys()
    assert (tmp_path / "propagation.png").is_file() == (pyplot() is not None)  # the dev install has matplotlib
