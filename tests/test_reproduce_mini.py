"""scripts/reproduce/crelu_table1_mini.sh --dry-run: Table 1 in miniature (issue 20) launches one run at a time,
seed by seed across the rows, each row at WIDTH_SCALE times its width with the recipe's milestones (200, 250,
300 of 350 epochs) compressed to EPOCHS, then the curves and the tables at that width scale. The expected
widths, milestones and order are written here by hand, not computed the script's way."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from helpers import ROOT

SCRIPT = ROOT / "scripts" / "reproduce" / "crelu_table1_mini.sh"
MINI_ENV = ("WIDTH_SCALE", "EPOCHS", "SEEDS", "OTHER_SEEDS", "DOUBLE_SEEDS", "THREADS", "CHECKPOINT_EVERY", "PAGE")


def _dry_run(sweep, env: dict[str, str] | None = None, *overrides: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (*MINI_ENV, "DRY_RUN", "LAUNCHER", "GPUS", "SWEEP_DIR")}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--sweep-dir", str(sweep), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=ROOT,
        check=False,
    )


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _trains(commands: list[list[str]]) -> list[dict[str, str]]:
    return [dict(a.split("=", 1) for a in c if "=" in a) for c in commands if c[1].endswith("train.py")]


def test_the_default_sweep_goes_seed_by_seed_at_quarter_width(tmp_path):
    sweep = tmp_path / "sweep"
    done = _dry_run(sweep, None, "dataset.root=data")
    assert done.returncode == 0, done.stderr
    assert not sweep.exists(), "a dry run writes nothing, not even commands.txt"
    commands = _commands(done.stdout)
    trains = _trains(commands)
    # seeds 0-2: every row but + (double) (DOUBLE_SEEDS empty); seeds 3-4: the baseline and CReLU (SEEDS 0..4)
    every_row = [("convpool_baseline", "0.25"), ("convpool_crelu", "0.25"), ("convpool_crelu_half", "0.125")]
    every_row += [("convpool_avr", "0.25"), ("convpool_prelu", "0.25")]
    both = [("convpool_baseline", "0.25"), ("convpool_crelu", "0.25")]
    expected = [(e, w, str(s)) for s in (0, 1, 2) for e, w in every_row]
    expected += [(e, w, str(s)) for s in (3, 4) for e, w in both]
    assert [(t["experiment"], t["model.width"], t["seed"]) for t in trains] == expected
    for train in trains:
        assert train["dataset"] == "cifar10" and train["dataset.root"] == "data"
        # 10 epochs: lr x0.1 at round(10 x 200/350) = round(5.71) = 6, round(7.14) = 7, round(8.57) = 9
        assert (train["trainer.epochs"], train["schedule.milestones"]) == ("10", "[6,7,9]")
        assert train["trainer.precision"] == "fp32"
        assert (train["trainer.threads"], train["trainer.checkpoint_every_steps"]) == ("1", "300")
        assert train["hydra.sweep.dir"] == str(sweep) and train["hydra.sweep.subdir"] == "${hydra.job.override_dirname}"
        assert "dataset.num_train" not in train and "dataset.num_test" not in train  # the whole splits
    # the page quotes these: paths under the checkout relative to it (the page's), others (this sweep) absolute
    assert commands[-2][1:] == ["-m", "rectnet.analysis.curves", str(sweep), "--out", f"{sweep}/curves"]
    assert commands[-1][1:] == [
        "-m",
        "rectnet.tables",
        str(sweep),
        "--width-scale",
        "0.25",
        "--out",
        f"{sweep}/tables",
        "--page",
        "docs/results/crelu_table1_mini.md",
        "--curves",
        f"{sweep}/curves",
    ]


def test_the_environment_sets_scale_epochs_seeds_and_the_double_row(tmp_path):
    env = {"WIDTH_SCALE": "0.5", "EPOCHS": "12", "SEEDS": "0", "OTHER_SEEDS": "1", "DOUBLE_SEEDS": "0"}
    env |= {"THREADS": "2", "CHECKPOINT_EVERY": "100", "PAGE": ""}
    done = _dry_run(tmp_path / "sweep", env)
    assert done.returncode == 0, done.stderr
    commands = _commands(done.stdout)
    trains = _trains(commands)
    assert [(t["experiment"], t["model.width"], t["seed"]) for t in trains] == [
        ("convpool_baseline", "0.5", "0"),
        ("convpool_crelu", "0.5", "0"),
        ("convpool_double", "1", "0"),  # 2 x 0.5
        ("convpool_crelu_half", "0.25", "1"),  # 0.5 x 0.5
        ("convpool_avr", "0.5", "1"),
        ("convpool_prelu", "0.5", "1"),
    ]
    # 12 epochs: round(12 x 200/350) = round(6.86) = 7, round(8.57) = 9, round(10.29) = 10
    assert {t["schedule.milestones"] for t in trains} == {"[7,9,10]"}
    assert {(t["trainer.threads"], t["trainer.checkpoint_every_steps"]) for t in trains} == {("2", "100")}
    tables = commands[-1]
    assert tables[tables.index("--width-scale") + 1] == "0.5" and "--page" not in tables


@pytest.mark.parametrize(
    ("name", "value"),
    [("WIDTH_SCALE", "0"), ("WIDTH_SCALE", "quarter"), ("EPOCHS", "0"), ("EPOCHS", "ten"), ("SEEDS", "0 1")],
)
def test_a_malformed_setting_is_refused_before_anything_runs(tmp_path, name, value):
    done = _dry_run(tmp_path / "sweep", {name: value})
    assert done.returncode == 2 and name in done.stderr
    assert not _commands(done.stdout)
