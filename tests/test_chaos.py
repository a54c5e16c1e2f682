"""scripts/checks/chaos.py --faults: its judge fails a case on a traceback, on a fault accepted with exit 0, on a
hang, a signal, a refusal that names nothing or a refused valid run; its state checks catch a silent fresh
start and a refusal that lost a file; and a few of its cases run on this tree all survive, while the same
cases fail once train.py is sabotaged (so the whole path, not only the judge, can fail)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import ROOT

RUN_DIR = Path("/runs/probe")


@pytest.fixture(scope="module")
def chaos():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "checks" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts its own folder on sys.path: its sibling modules below import by name
    return module


@pytest.fixture(scope="module")
def faults(chaos):
    """The lab: Case, judge, run_case, the state checks, the fixture runs."""
    return importlib.import_module("faults")


@pytest.fixture(scope="module")
def fault_launcher(chaos):
    """Outcome, HUNG_S, Launcher."""
    return importlib.import_module("fault_launcher")


@pytest.fixture(scope="module")
def fault_state(chaos):
    """The checkpoint, disk and nonfinite cases."""
    return importlib.import_module("fault_state")


@pytest.fixture(scope="module")
def fault_inputs(chaos):
    """The data and config cases."""
    return importlib.import_module("fault_inputs")


def _case(faults, expect: str, says: tuple[str, ...] = ()):
    return faults.Case("probe", "config", faults.tiny([]), expect, says)


# ---------------------------------------------------------------------------------------------------------
# 1. The judge: what the user saw


def test_a_traceback_fails_the_case_whatever_the_exit_status(faults, fault_launcher):
    output = "Traceback (most recent call last):\n  File \"train.py\", line 17, in main\nKeyError: 'slope'\n"
    refused = _case(faults, faults.REFUSE, ("activation.slope",))
    assert faults.judge(refused, fault_launcher.Outcome(1, output), RUN_DIR) == "a traceback, exit 1: KeyError: 'slope'"
    finished = _case(faults, faults.FINISH)
    assert (
        faults.judge(finished, fault_launcher.Outcome(0, output), RUN_DIR) == "a traceback, exit 0: KeyError: 'slope'"
    )


def test_exit_0_after_a_fault_no_run_can_honour_fails_the_case(faults, fault_launcher):
    trained = fault_launcher.Outcome(0, "[2026-01-01][rectnet][INFO] - finished: test top-1 error 90.00%\n")
    assert faults.judge(_case(faults, faults.REFUSE, ("data_batch_2",)), trained, RUN_DIR) == (
        "exit 0: the fault was accepted"
    )
    # a damaged last.pt beside an intact prev.pt may be survived by training on: the state checks judge how
    assert faults.judge(_case(faults, faults.EITHER), trained, RUN_DIR) is None


def test_a_refusal_survives_only_when_its_last_line_names_what_is_wrong(faults, fault_launcher):
    case = _case(faults, faults.REFUSE, ("{run_dir}/checkpoints", "space"))
    named = fault_launcher.Outcome(
        1,
        "[2026-01-01][rectnet][INFO] - model convpool_cnn_c\n"
        "CheckpointWriteError: no room for this run's checkpoints in /runs/probe/checkpoints: 0.3 MB free. Free "
        "Space or pick another hydra.run.dir\n",
    )
    assert faults.judge(case, named, RUN_DIR) is None  # "Space": matched whatever the case
    vague = fault_launcher.Outcome(1, "checkpoints in /runs/probe/checkpoints, low space\nRuntimeError: write failed\n")
    assert faults.judge(case, vague, RUN_DIR) == (
        "exit 1, the message does not name /runs/probe/checkpoints, space: RuntimeError: write failed"
    )


def test_an_error_hydra_reports_is_read_as_its_block_after_the_last_log_record(faults, fault_launcher):
    logged = "[2026-01-01 00:00:00,000][rectnet][INFO] - lr 0.01 (optim.lr)\n"
    hydra = (
        "In 'train': Could not find 'activation/swish'\n\n"
        "Available options in 'activation':\n\tavr\n\tcrelu\n\tleaky_relu\n\tprelu\n\tprelu_shared\n\trelu\n"
        "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf\n\tprovider=main, path=file:///configs\n\n"
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
    )
    outcome = fault_launcher.Outcome(1, logged + hydra)
    assert faults.judge(_case(faults, faults.REFUSE, ("activation/swish",)), outcome, RUN_DIR) is None
    assert faults.judge(_case(faults, faults.REFUSE, ("optim.lr",)), outcome, RUN_DIR) == (
        "exit 1, the message does not name optim.lr: \tprovider=main, path=file:///configs"
    )


def test_a_hang_a_signal_and_a_refused_valid_run_fail_the_case(faults, fault_launcher):
    refused = _case(faults, faults.REFUSE)
    assert faults.judge(refused, fault_launcher.Outcome(None, ""), RUN_DIR) == (
        f"hung: still running after {fault_launcher.HUNG_S} s, killed"
    )
    assert faults.judge(refused, fault_launcher.Outcome(-9, ""), RUN_DIR) == "killed by signal 9: (no output)"
    valid = fault_launcher.Outcome(1, "ConfigError: dataset.crop_padding must be smaller, got 15\n")
    assert faults.judge(_case(faults, faults.FINISH), valid, RUN_DIR) == (
        "refused a valid run, exit 1: ConfigError: dataset.crop_padding must be smaller, got 15"
    )


# ---------------------------------------------------------------------------------------------------------
# 2. The state checks: what the run left


def _write_run(run_dir: Path, epochs: list[int], time_s: float, weight: float) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    records = [{"epoch": e, "time_s": time_s * e, "train/loss": 2.0 / e} for e in epochs]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.save({"model": {"w": torch.full((2,), weight)}}, run_dir / "checkpoints" / "last.pt")
    return run_dir


@pytest.fixture
def trial(faults, fault_launcher):
    def make(lab, run_dir: Path, code: int, before=None):
        before = faults.contents(run_dir) if before is None else before
        return faults.Trial(lab, run_dir.parent, run_dir, before, fault_launcher.Outcome(code, ""))

    return make


def test_continued_tells_a_resume_from_a_silent_fresh_start(faults, trial, tmp_path):
    lab = faults.Lab(tmp_path, 0, _write_run(tmp_path / "base", [1, 2], 0.5, 0.0), None)
    lab.reference = _write_run(tmp_path / "reference", [1, 2, 3], 0.7, 3.0)
    check = faults.continued(keeps=1)
    resumed = _write_run(tmp_path / "resumed", [1, 2, 3], 0.5, 3.0)  # epoch 1's record, timings included, kept
    assert check(trial(lab, resumed, 0)) is None
    fresh = _write_run(tmp_path / "fresh", [1, 2, 3], 0.6, 3.0)  # the same weights, but epoch 1 timed anew
    assert check(trial(lab, fresh, 0)) == (
        "epochs 1..1 trained again: a fresh start or an older checkpoint than the intact one"
    )
    appended = _write_run(tmp_path / "appended", [1, 2, 1, 2, 3], 0.5, 3.0)
    assert check(trial(lab, appended, 0)) == "metrics.jsonl lists epochs [1, 2, 1, 2, 3], not 1, 2, 3"
    drifted = _write_run(tmp_path / "drifted", [1, 2, 3], 0.5, 2.5)
    assert check(trial(lab, drifted, 0)) == "the continued run's weights differ from an uninterrupted run's"
    assert check(trial(lab, fresh, 1)) is None  # a refusal is judged by nothing_lost_on_refusal


def test_a_refusal_must_leave_every_file_though_it_may_move_one_aside(faults, trial, tmp_path):
    run_dir = _write_run(tmp_path / "run", [1, 2], 0.5, 1.0)
    lab = faults.Lab(tmp_path, 0)
    before = faults.contents(run_dir)
    (run_dir / "train.log").write_text("appended by the refused launch")  # rewritten by any launch: not counted
    last = run_dir / "checkpoints" / "last.pt"
    last.rename(last.with_name("last.pt.damaged-1"))
    assert faults.nothing_lost_on_refusal(trial(lab, run_dir, 1, before)) is None
    (run_dir / "metrics.jsonl").write_text("")
    assert faults.nothing_lost_on_refusal(trial(lab, run_dir, 1, before)) == (
        "refused, but changed or removed metrics.jsonl"
    )
    assert faults.not_trained(trial(lab, run_dir, 1, before)) == "trained before refusing (metrics.jsonl written)"


def test_the_fuzz_is_seeded_distinct_and_apart_from_the_named_cases(fault_inputs):
    drawn = fault_inputs.fuzz_overrides(15, seed=4)
    assert drawn == fault_inputs.fuzz_overrides(15, seed=4) and drawn != fault_inputs.fuzz_overrides(15, seed=5)
    assert len(set(drawn)) == 15 and fault_inputs.fuzz_overrides(25, seed=4)[:15] == drawn
    named = {o for overrides, _ in fault_inputs.CONFIG_REFUSED for o in overrides}
    assert all(o.split("=", 1)[1] in fault_inputs.FUZZ[o.split("=", 1)[0]] and o not in named for o in drawn)
    table = {f"{key}={value}" for key, values in fault_inputs.FUZZ.items() for value in values}
    assert set(fault_inputs.fuzz_overrides(10_000, seed=0)) == table - named
    fuzzed = [c for c in fault_inputs.config_cases(3, seed=4) if c.name.startswith("fuzz:")]
    assert [c.says for c in fuzzed] == [(o.split("=")[0],) for o in drawn[:3]]


def test_only_selects_categories_and_cases_and_refuses_unknown_names(chaos, faults):
    cases = chaos.catalogue(fuzz=0, seed=0)
    assert {c.category for c in cases} == set(faults.CATEGORIES)
    chosen = chaos.selected(cases, ["disk", "checkpoint/last_truncated"])
    assert [c.label for c in chosen] == ["checkpoint/last_truncated"] + [c.label for c in cases if c.category == "disk"]
    with pytest.raises(SystemExit, match="no such category or case: disk/nothing"):
        chaos.selected(cases, ["disk/nothing"])


def test_a_case_this_machine_cannot_set_up_is_skipped_not_tried(chaos, faults, fault_state, tmp_path, monkeypatch):
    refused = subprocess.CompletedProcess(["mount"], 32, b"", b"mount: only root can do that")
    monkeypatch.setattr(fault_state.subprocess, "run", lambda *args, **kwargs: refused)
    case = _by_label(chaos, "disk/disk_full_at_start")
    assert faults.run_case(case, faults.Lab(tmp_path, 0), launcher=None) == (
        case,
        None,
        "cannot mount a tmpfs here (needs root where mounting is allowed)",
    )
    run_dir = tmp_path / "disk" / "disk_full_at_start" / "run"
    assert list(run_dir.parent.iterdir()) == [run_dir]  # the copy made for the mount is gone


# ---------------------------------------------------------------------------------------------------------
# 3. Cases run through train.py


@pytest.fixture(scope="module")
def lab_and_launcher(faults, fault_launcher, tmp_path_factory):
    lab = faults.Lab(tmp_path_factory.mktemp("faults"), seed=0)
    launcher = fault_launcher.Launcher(ROOT)
    try:
        faults.make_fixtures(lab, launcher)
        yield lab, launcher
    finally:
        launcher.close()


def _by_label(chaos, label: str):
    (case,) = chaos.selected(chaos.catalogue(fuzz=0, seed=0), [label])
    return case


SURVIVED_HERE = [
    "checkpoint/last_rng_wrong_type",
    "checkpoint/interrupted_rotation",
    "checkpoint/last_pickle_runs_code",
    "disk/checkpoints_a_file",
    "data/cifar_float_pixels",
    "data/jpeg_truncated_workers2",
    "config/model.width=1e6",
    "config/valid:model.act_at=[9]",
    "nonfinite/nan_loss_resumed",
]


@pytest.mark.slow
def test_a_sample_of_the_catalogue_survives_on_this_tree(chaos, faults, lab_and_launcher):
    lab, launcher = lab_and_launcher
    failed = {}
    for label in SURVIVED_HERE:
        case, reason, skipped = faults.run_case(_by_label(chaos, label), lab, launcher)
        assert skipped is None
        if reason:
            failed[label] = reason
    assert failed == {}


# Sabotage at train.py's own import of `run` (train.py: from rectnet.engine.train import run)
CRASHES = "import rectnet.engine.train as t\nt.run = lambda cfg: {}['no such key']\n"
ACCEPTS = "import rectnet.engine.train as t\nt.run = lambda cfg: None\n"
FRESH_START = """
import shutil
import rectnet.engine.train as t
real_run = t.run
def run(cfg):
    shutil.rmtree(f"{cfg.run_dir}/checkpoints")
    return real_run(cfg)
t.run = run
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("label", "sabotage", "reason"),
    [
        ("data/cifar_float_pixels", CRASHES, "a traceback, exit 1: KeyError: 'no such key'"),
        ("data/cifar_float_pixels", ACCEPTS, "exit 0: the fault was accepted"),
        ("config/model.width=1e6", ACCEPTS, "exit 0: the fault was accepted"),
        ("checkpoint/last_truncated", FRESH_START, ("epochs 1..1 trained again", "metrics.jsonl lists epochs")),
    ],
    ids=["traceback", "accepted_data", "accepted_config", "fresh_start"],
)
def test_the_same_cases_fail_when_train_py_is_sabotaged(chaos, faults, lab_and_launcher, label, sabotage, reason):
    lab, launcher = lab_and_launcher
    case = dataclasses.replace(_by_label(chaos, label), prelude=sabotage)
    _, found, _ = faults.run_case(case, lab, launcher)
    assert found is not None and found.startswith(reason), found  # one reason, or the ways a fresh start shows


@pytest.mark.slow
def test_faults_mode_prints_one_json_line_of_its_tally(chaos, tmp_path, capsys):
    only = ["config/dataset.name=nonesuch", "config/valid:trainer.batch_size=256", "disk/checkpoints_a_file"]
    summary = chaos.main(["--faults", "--only", *only, "--fuzz", "0", "--out", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == summary
    assert set(summary) == {"tried", "survived", "skipped", "failures", "seconds", "repo", "skips"}
    assert (summary["tried"], summary["survived"], summary["skipped"], summary["failures"]) == (3, 3, 0, [])
    assert summary["repo"] == str(ROOT)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # survived cases' folders are removed
