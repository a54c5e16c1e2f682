"""scripts/reproduce/crelu_table1_mini.sh --dry-run: Table 1 in miniature (issue 20) launches one run at a time,
seed by seed across the rows, each row at WIDTH_SCALE times its width with the recipe's milestones (200, 250,
300 of 350 epochs) compressed to EPOCHS, then the curves and the tables at that width scale. The expected
widths, milestones and order are written here by hand, not computed the script's way."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import ROOT

from rectnet.results import progress

SCRIPT = ROOT / "scripts" / "reproduce" / "crelu_table1_mini.sh"
MINI_ENV = (
    "WIDTH_SCALE",
    "EPOCHS",
    "SEEDS",
    "OTHER_SEEDS",
    "DOUBLE_SEEDS",
    "THREADS",
    "CHECKPOINT_EVERY",
    "PAGE",
    "JOBS",
    "ONLY",
)


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
    """Each `env RECTNET_RUN_DIR=... python train.py OVERRIDE...` as a dict (the run directory included)."""
    return [
        dict(a.split("=", 1) for a in c[1:2] + c[4:]) for c in commands if c[0] == "env" and c[3].endswith("train.py")
    ]


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
        assert "hydra.sweep.dir" not in train  # one single run per command: two workers may train side by side
        assert "dataset.num_train" not in train and "dataset.num_test" not in train  # the whole splits
    # each run in the directory a sweep of its overrides would use: Hydra's override_dirname, keys sorted, the
    # ones that do not change the run (dataset.root, trainer.threads, trainer.checkpoint_every_steps) left out
    name = "dataset=cifar10,experiment=convpool_baseline,model.width=0.25,schedule.milestones=[6,7,9],seed=0,"
    assert trains[0]["RECTNET_RUN_DIR"] == f"{sweep}/{name}trainer.epochs=10,trainer.precision=fp32"
    name = "dataset=cifar10,experiment=convpool_crelu_half,model.width=0.125,schedule.milestones=[6,7,9],seed=2,"
    assert trains[12]["RECTNET_RUN_DIR"] == f"{sweep}/{name}trainer.epochs=10,trainer.precision=fp32"
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


def test_only_runs_the_rows_it_names_and_the_sweep_log_says_so(tmp_path):
    env = {"ONLY": "crelu,avr", "SEEDS": "0,1", "OTHER_SEEDS": "0"}
    done = _dry_run(tmp_path / "sweep", env)
    assert done.returncode == 0, done.stderr
    trains = _trains(_commands(done.stdout))
    assert [(t["experiment"], t["seed"]) for t in trains] == [
        ("convpool_crelu", "0"),
        ("convpool_avr", "0"),
        ("convpool_crelu", "1"),  # AVR has no seed 1 (OTHER_SEEDS=0); the baseline is not named
    ]
    # not a dry run (commands.txt, which the page quotes, must name the filter), on a sweep whose one run is
    # finished already: nothing trains
    sweep = tmp_path / "real"
    name = "dataset=cifar10,experiment=convpool_crelu_half,model.width=0.125,schedule.milestones=[6,7,9],seed=0,"
    finished = sweep / f"{name}trainer.epochs=10,trainer.precision=fp32"
    finished.mkdir(parents=True)
    record = {"status": "completed", "epochs": 10, "config": {"trainer": {"epochs": 10}}}
    (finished / "results.json").write_text(json.dumps(record))
    env = {**os.environ, "ONLY": "crelu_half", "SEEDS": "0", "OTHER_SEEDS": "0", "PAGE": "", "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(SCRIPT), "--sweep-dir", str(sweep)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert "train.py" not in done.stdout
    assert " ONLY=crelu_half scripts/reproduce/crelu_table1_mini.sh" in (sweep / "commands.txt").read_text()


def test_a_filter_that_leaves_nothing_to_run_is_refused(tmp_path):
    done = _dry_run(tmp_path / "sweep", {"ONLY": "double"})  # + (double) has no seeds by default
    assert done.returncode == 2 and not _commands(done.stdout)
    assert "nothing to run: no row of ONLY=double has a seed" in done.stderr


def test_more_threads_than_cores_is_said_and_a_full_share_is_not(tmp_path):
    cores = len(os.sched_getaffinity(0))  # what nproc counts
    for jobs, threads, said in ((cores, 1, False), (2, cores, True)):  # at the limit; JOBS x THREADS over it
        done = _dry_run(tmp_path / "sweep", {"JOBS": str(jobs), "THREADS": str(threads)})
        assert done.returncode == 0, done.stderr
        assert ("OpenMP threads will wait on each other" in done.stderr) == said, (jobs, threads)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WIDTH_SCALE", "0"),
        ("WIDTH_SCALE", "quarter"),
        ("EPOCHS", "0"),
        ("EPOCHS", "ten"),
        ("SEEDS", "0 1"),
        ("JOBS", "0"),
        ("ONLY", "relu"),  # the baseline's row is baseline; relu is no row's name
        ("ONLY", "crelu avr"),
    ],
)
def test_a_malformed_setting_is_refused_before_anything_runs(tmp_path, name, value):
    done = _dry_run(tmp_path / "sweep", {name: value})
    assert done.returncode == 2 and name in done.stderr
    assert not _commands(done.stdout)


# ---------------------------------------------------------------------------------------------------------
# JOBS: runs trained side by side (common.sh's run_queue), on a CIFAR-10 of 16 random images per file


def _tiny_cifar(root) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (16, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 16))}
        (folder / name).write_bytes(pickle.dumps(batch | {"batch_label": b"x", "filenames": [b"a"] * 16}, protocol=2))


def _name(experiment: str, seed: int, epochs: int = 1) -> str:
    """The run directory name, written out by hand (Hydra's override_dirname: the keys sorted)."""
    milestones = {1: "[1,1,1]", 30: "[17,21,26]"}[epochs]
    return (
        f"dataset=cifar10,experiment={experiment},model.width=0.25,schedule.milestones={milestones},seed={seed},"
        f"trainer.batch_size=16,trainer.epochs={epochs},trainer.precision=fp32"  # log_every_steps: left out
    )


def _mini(tmp_path, jobs: int, epochs: int = 1) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in (*MINI_ENV, "DRY_RUN", "LAUNCHER", "GPUS", "SWEEP_DIR")}
    env |= {"EPOCHS": str(epochs), "SEEDS": "0,1", "OTHER_SEEDS": "", "PAGE": "", "JOBS": str(jobs)}
    args = ["bash", str(SCRIPT), "--sweep-dir", str(tmp_path / "sweep"), f"dataset.root={tmp_path / 'data'}"]
    return [*args, "trainer.batch_size=16", "trainer.log_every_steps=1"], env | {"OMP_NUM_THREADS": "1"}


def _completed(run) -> bool:
    return (run / "results.json").is_file() and json.loads((run / "results.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_two_jobs_share_the_runs_and_pass_over_one_another_invocation_holds(tmp_path):
    _tiny_cifar(tmp_path / "data")
    sweep = tmp_path / "sweep"
    runs = [_name(e, s) for s in (0, 1) for e in ("convpool_baseline", "convpool_crelu")]
    (sweep / ".claims").mkdir(parents=True)
    with open(sweep / ".claims" / runs[3], "w") as held:  # another invocation trains CReLU seed 1
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        args, env = _mini(tmp_path, jobs=2)
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    taken = [line.split(": ", 1) for line in done.stderr.splitlines() if line.startswith("worker ")]
    assert sorted(run for _, run in taken) == sorted(f"{r} (new)" for r in runs[:3])  # each run once
    assert {worker for worker, _ in taken} == {"worker 1", "worker 2"}
    assert f"still training in another invocation on this sweep: {runs[3]}" in done.stderr
    assert [_completed(sweep / r) for r in runs] == [True, True, True, False]
    assert all(len((sweep / r / "metrics.jsonl").read_text().splitlines()) == 1 for r in runs[:3])
    before = {r: (sweep / r / "results.json").read_text() for r in runs[:3]}
    # the claim released: one worker trains what is left and nothing else
    args, env = _mini(tmp_path, jobs=1)
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    trained = [c for c in _commands(again.stdout) if c[0] == "env"]
    assert [c[1] for c in trained] == [f"RECTNET_RUN_DIR={sweep / runs[3]}"]
    assert all(_completed(sweep / r) for r in runs)
    assert before == {r: (sweep / r / "results.json").read_text() for r in runs[:3]}
    assert "still training" not in again.stderr
    assert len((sweep / "tables" / "runs.csv").read_text().splitlines()) == 1 + 4  # the tables have all four


@pytest.mark.slow
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm", "ctrl_c"])
def test_a_stop_signal_stops_every_worker_at_a_checkpoint_and_a_rerun_finishes_the_same(tmp_path, ctrl_c):
    """SIGTERM to the script (a scheduler, `kill`), or Ctrl-C: SIGINT to the terminal's whole foreground process
    group, which holds the script but not its workers (each in a group of its own)."""
    _tiny_cifar(tmp_path / "data")
    sweep = tmp_path / "sweep"
    args, env = _mini(tmp_path, jobs=2, epochs=30)  # long enough that neither run ends before the signal
    script = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True
    )  # its own process group, as a terminal's foreground job
    first = [sweep / _name("convpool_baseline", 0, 30), sweep / _name("convpool_crelu", 0, 30)]
    deadline = time.monotonic() + 300
    while not all("epoch 2/30" in _read(run / "train.log") for run in first):
        assert script.poll() is None and time.monotonic() < deadline, script.communicate()[1][-3000:]
        time.sleep(0.2)
    live = {p.run: p for p in progress.collect([sweep])}  # what the sweep's progress line says, as it trains
    assert [(live[r.name].state, live[r.name].holder[:4]) for r in first] == [("training", "pid ")] * 2
    # seed 1 has no directory yet: queued (queue.txt), at the pace of its seed-0 run over all 30 epochs
    later = [_name("convpool_baseline", 1, 30), _name("convpool_crelu", 1, 30)]
    assert [(live[r].state, live[r].estimated, live[r].epochs) for r in later] == [("queued", True, 30)] * 2
    assert [live[r].left_s for r in later] == [30 * live[r.name].seconds_per_epoch for r in first]
    if ctrl_c:
        os.killpg(script.pid, signal.SIGINT)
    else:
        script.send_signal(signal.SIGTERM)
    _, stderr = script.communicate(timeout=120)
    assert script.returncode == (130 if ctrl_c else 143), stderr[-3000:]
    for run in first:
        assert (run / "checkpoints" / "last.pt").is_file() and not (run / "FAILED").exists()
        assert not _completed(run) and "stopping on SIGTERM" in _read(run / "train.log")
        with open(sweep / ".claims" / run.name, "w") as claim:  # released: its train.py has ended
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not (sweep / "tables").exists()  # stopped before the tables
    assert f"how far it has got, at any time: python -m rectnet.results.progress {sweep}" in stderr
    after = {p.run: p.state for p in progress.collect([sweep])}
    assert [after[run] for run in [*(r.name for r in first), *later]] == ["stopped"] * 2 + ["queued"] * 2
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for run in first:
        assert _completed(run)
        epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 31))  # resumed, no epoch twice
    assert {p.state for p in progress.collect([sweep])} == {"completed"}


def _read(path) -> str:
    return path.read_text() if path.is_file() else ""


@pytest.mark.slow
def test_an_archive_outlives_the_sweep_directory(tmp_path):
    """ARCHIVE (common.sh): every completed run's records are archived as it ends; a fresh clone, whose sweep
    directory is gone, trains nothing and tables the same runs."""
    _tiny_cifar(tmp_path / "data")
    sweep, kept = tmp_path / "sweep", tmp_path / "kept"
    runs = [_name(e, 0) for e in ("convpool_baseline", "convpool_crelu")]
    args, env = _mini(tmp_path, jobs=2)
    env |= {"ARCHIVE": str(kept), "SEEDS": "0"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(_completed(kept / r) and not (kept / r / "checkpoints").exists() for r in runs)
    results = {r: (kept / r / "results.json").read_text() for r in runs}
    tables = (sweep / "tables" / "runs.csv").read_text()

    shutil.rmtree(sweep)  # a fresh clone: the git-ignored sweep directory is gone, the committed archive is not
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 run(s) copied" in again.stderr  # restored into the new sweep directory
    assert [c for c in _commands(again.stdout) if c[0] == "env"] == []  # nothing trained
    assert results == {r: (sweep / r / "results.json").read_text() for r in runs}
    assert (sweep / "tables" / "runs.csv").read_text() == tables
