"""python -m rectnet.results.progress: each run's state, epochs, pace and time left, read from the run directories.

Expected values are worked out by hand from the metrics.jsonl lines the tests write (time_s: seconds since the
attempt started), and the states from lock records of live and dead processes made here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TINY, compose_train
from omegaconf import OmegaConf

from rectnet.engine import rundir
from rectnet.engine.train import run
from rectnet.results import progress
from rectnet.results.runs import read_json

CONFIG = "dataset: {name: synthetic}\nmodel: {name: convpool_cnn_c}\nactivation: {name: relu}\ntrainer: {epochs: 10}\n"


def _run_dir(root: Path, name: str, times: list[float] = (), config: str = CONFIG) -> Path:
    path = root / name
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(config)
    lines = [{"epoch": i + 1, "time_s": t, "test/top1_err": 90.0 - i} for i, t in enumerate(times)]
    if lines:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _lock(path: Path, pid: int, host: str | None = None, released: bool = False) -> None:
    started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] if pid == os.getpid() else "1"
    record = {"host": host or socket.gethostname(), "pid": pid, "started": started, "beat": 3, "released": released}
    (path / ".lock").write_text(json.dumps(record) + "\n")


def _checkpoint(path: Path) -> None:
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "last.pt").write_bytes(b"checkpoint")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([], None),
        ([70.0], 70.0),  # one epoch in the attempt: its time, start-up included
        ([100.0, 205.0, 310.0], 105.0),  # differences only: the first epoch's start-up is left out
        ([100.0, 200.0, 300.0, 50.0, 150.0, 262.0], 106.0),  # the latest attempt, from where time_s falls back
        ([100.0, 200.0, 30.0], 30.0),  # a resumed attempt with one (partial) epoch so far
        ([100.0, 200.0, 1300.0, 1400.0, 1500.0], 100.0),  # epoch 3 paused for 1000 s: not the pace
    ],
)
def test_epoch_seconds_is_the_latest_attempts_pace(times, expected):
    assert progress.epoch_seconds([{"epoch": i + 1, "time_s": t} for i, t in enumerate(times)]) == expected


def test_each_state_with_its_epochs_pace_and_time_left(tmp_path):
    sweep = tmp_path / "sweep"
    training = _run_dir(sweep, "a_training", [100.0, 200.0, 300.0, 400.0])  # 4 of 10 epochs, 100 s each
    _lock(training, os.getpid())  # this process: alive, on this host
    os.utime(training / "metrics.jsonl", (time.time() - 30, time.time() - 30))  # epoch 5 under way for 30 s
    stopped = _run_dir(sweep, "b_stopped", [100.0, 200.0, 300.0, 400.0, 50.0, 170.0, 290.0])  # 7 done, 120 s each
    _lock(stopped, _dead_pid())  # killed (never released), its process gone
    _checkpoint(stopped)
    started = _run_dir(sweep, "c_started")  # claimed and killed before any checkpoint
    _lock(started, _dead_pid())
    elsewhere = _run_dir(sweep, "d_elsewhere", [60.0])
    _lock(elsewhere, 12345, host="another-node")
    os.utime(elsewhere / ".lock", (time.time() - 3600, time.time() - 3600))  # its node went quiet an hour ago
    failed = _run_dir(sweep, "e_failed", [100.0, 200.0])
    (failed / "FAILED").write_text("RuntimeError: boom\n")
    released = _run_dir(sweep, "f_released", [100.0, 200.0])
    _lock(released, os.getpid(), released=True)
    _checkpoint(released)

    found = {p.run: p for p in progress.collect([sweep])}
    assert {name: p.state for name, p in found.items()} == {
        "a_training": "training",
        "b_stopped": "stopped",
        "c_started": "started",
        "d_elsewhere": "training",
        "e_failed": "failed",
        "f_released": "stopped",
    }
    assert found["a_training"].holder == f"pid {os.getpid()}"
    assert found["d_elsewhere"].holder in [f"host another-node, last heartbeat 1:00:0{s} ago" for s in (0, 1, 2)]
    assert (found["a_training"].epochs_done, found["a_training"].epochs) == (4, 10)
    assert found["a_training"].left_s == pytest.approx(6 * 100 - 30, abs=2)
    assert (found["b_stopped"].seconds_per_epoch, found["b_stopped"].left_s) == (120.0, 3 * 120.0)
    assert found["b_stopped"].top1_err == 90.0 - 6
    assert found["c_started"].left_s is None and found["c_started"].epochs_done == 0
    assert found["d_elsewhere"].left_s == pytest.approx(
        9 * 60.0 - (time.time() - (elsewhere / "metrics.jsonl").stat().st_mtime), abs=2
    )
    assert found["e_failed"].left_s is None  # not trained on as it is: a re-run retries it

    text = progress.render(list(found.values())).splitlines()
    assert text[1].split()[:4] == ["training", "4/10", "87.00", "100"]
    assert text[1].split()[4] in ("0:09:29", "0:09:30")  # 570 s, less the moments since the mtime was set
    assert text[1].endswith(f"a_training  (pid {os.getpid()})")
    assert text[3].split() == ["started", "0/10", "—", "—", "—", "c_started"]
    assert text[-1].startswith("6 runs: 2 training, 2 stopped, 1 started, 0 queued, 1 failed, 0 completed; ")
    assert "(1 without one: no epoch logged by it or its other seeds, or no readable config)" in text[-1]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("a=1,seed=3,schedule.milestones=[17,21,26]", "a=1,schedule.milestones=[17,21,26]"),
        ("seed=12,a=1", ",a=1"),
        ("a=1,seed=0", "a=1"),
        ("a=1,model.seed=3", "a=1,model.seed=3"),  # another key ending in seed: not the run's seed
        ("sweep/seed=3,a=1", "sweep/,a=1"),  # the folder is kept; only the last component loses its seed
        ("a=1", "a=1"),
    ],
)
def test_the_other_seeds_of_a_run_share_its_name_without_the_seed(name, key):
    assert progress.other_seeds_key(name) == key


def test_queued_runs_and_runs_without_an_epoch_take_the_pace_of_their_other_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    _checkpoint(_run_dir(sweep, "lr=0.1,seed=0", [100.0, 200.0, 300.0]))  # 100 s per epoch
    _checkpoint(_run_dir(sweep, "lr=0.1,seed=1", [50.0, 170.0, 290.0, 410.0]))  # 120 s per epoch
    _lock(_run_dir(sweep, "lr=0.1,seed=3"), _dead_pid())  # started, killed before its first epoch
    queue = ["lr=0.1,seed=0", "lr=0.1,seed=2", "lr=0.2,seed=0", "lr=0.1,seed=3", "lr=0.1,seed=2"]
    queue += ["", "..", "/etc", "../sweep/x"]  # no run's name: passed over
    (sweep / "queue.txt").write_text("".join(f"{name}\n" for name in queue))
    found = {p.run: p for p in progress.collect([tmp_path])}  # a folder above the sweep: queue.txt is found
    assert {name: (p.state, p.estimated) for name, p in found.items()} == {
        "sweep/lr=0.1,seed=0": ("stopped", False),
        "sweep/lr=0.1,seed=1": ("stopped", False),
        "sweep/lr=0.1,seed=3": ("started", True),
        "sweep/lr=0.1,seed=2": ("queued", True),  # listed twice, shown once
        "sweep/lr=0.2,seed=0": ("queued", False),  # no other seed to learn from
    }
    positions = {name: p.queue_position for name, p in found.items()}  # queue.txt's order, the duplicate dropped
    assert positions == {
        "sweep/lr=0.1,seed=0": 0,
        "sweep/lr=0.1,seed=2": 1,
        "sweep/lr=0.2,seed=0": 2,
        "sweep/lr=0.1,seed=3": 3,
        "sweep/lr=0.1,seed=1": None,  # not queued by a script
    }
    queued = found["sweep/lr=0.1,seed=2"]
    assert (queued.epochs_done, queued.epochs, queued.seconds_per_epoch, queued.left_s) == (0, 10, 110.0, 1100.0)
    started = found["sweep/lr=0.1,seed=3"]
    assert (started.epochs, started.seconds_per_epoch, started.left_s) == (10, 110.0, 1100.0)  # its own epochs
    alone = found["sweep/lr=0.2,seed=0"]
    assert (alone.epochs, alone.seconds_per_epoch, alone.left_s) == (None, None, None)
    text = progress.render(list(found.values())).splitlines()
    assert [line.split()[:5] for line in text if "seed=2" in line] == [["queued", "0/10", "—", "~110", "0:18:20"]]
    # 7 + 6 epochs left at 100 and 120 s, and two runs at 110 s x 10: 700 + 720 + 2200 s
    assert text[-1].startswith("5 runs: 0 training, 2 stopped, 1 started, 2 queued, 0 failed, 0 completed; 1:00:20")
    assert "(2 at the pace of their other seeds, ~) with a known pace (1 without one" in text[-1]


def _at(state: str, left: float | None) -> progress.RunProgress:
    return progress.RunProgress(f"run {state} {left}", state, 0, 10, None, None, left, None)


def test_the_grid_finishes_when_the_last_worker_does_if_as_many_train_at_once_as_now():
    # two workers, free after 100 and 300 s; then in order: 200 s (to the first: free at 300), unknown (skipped),
    # 50 s (free at 300 and 300: either, 350), 0 s; completed and failed runs take no worker
    runs = [_at("training", 100.0), _at("completed", 0.0), _at("training", 300.0), _at("queued", 200.0)]
    runs += [_at("started", None), _at("stopped", 50.0), _at("failed", None), _at("queued", 0.0)]
    assert progress.time_to_finish(runs) == 350.0
    assert "; with 2 runs at a time as now, done in 0:05:50; failed runs are retried" in progress.summary(runs)
    assert progress.time_to_finish([_at("training", 70.0), _at("queued", 30.0)]) == 100.0  # one worker
    assert progress.time_to_finish([_at("stopped", 70.0), _at("queued", 30.0)]) is None  # nobody training


def test_the_waiting_runs_take_the_workers_in_queue_txt_order_and_unlisted_runs_last():
    # workers free after 100 and 200 s; listed: C (1000 s, not in queue.txt), A (300 s, queued second), B (50 s,
    # queued first). Queue order: B to the first worker (150), A to it again (450), C to the second (1200).
    # The listed order would give 1100 (C 1100, A 500, B 550), A before B 1250 (A 400, B 250, C 1250).
    runs = [_at("training", 100.0), _at("training", 200.0), _at("stopped", 1000.0), _at("queued", 300.0)]
    runs += [_at("queued", 50.0)]
    runs[3].queue_position, runs[4].queue_position = 1, 0
    assert progress.time_to_finish(runs) == 1200.0


def test_grid_py_queue_adds_each_run_name_once_in_the_order_queued(tmp_path):
    grid = [sys.executable, str(ROOT / "scripts" / "reproduce" / "grid.py"), "queue", "--sweep-dir", str(tmp_path)]
    jobs = tmp_path / "jobs"
    jobs.write_text("experiment=convpool_crelu\x1fseed=3\nexperiment=convpool_baseline\x1fseed=3\n")
    extra = ["hydra.sweep.dir=x", "dataset.root=/data", "trainer.epochs=2"]  # a hydra key and a path: not in names
    subprocess.run([*grid, "--jobs", str(jobs), "--", *extra], check=True, cwd=ROOT, timeout=120)
    subprocess.run([*grid, "--", "experiment=convpool_crelu", "seed=3,4", *extra], check=True, cwd=ROOT, timeout=120)
    # Hydra's override_dirname, written out by hand: the keys sorted, dataset.root left out
    assert (tmp_path / "queue.txt").read_text().splitlines() == [
        "experiment=convpool_crelu,seed=3,trainer.epochs=2",
        "experiment=convpool_baseline,seed=3,trainer.epochs=2",
        "experiment=convpool_crelu,seed=4,trainer.epochs=2",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".queue.txt.lock", "jobs", "queue.txt"]


def test_a_real_run_completed_then_one_interrupted_after_its_last_checkpoint(tmp_path):
    done = tmp_path / "sweep" / "done"
    run(compose_train(TINY, done))
    interrupted = tmp_path / "sweep" / "interrupted"
    shutil.copytree(done, interrupted)
    # killed between its last checkpoint and results.json: train.py's run directory then holds Hydra's config
    (interrupted / ".hydra").mkdir()
    OmegaConf.save(read_json(done / "results.json")["config"], interrupted / ".hydra" / "config.yaml")
    (interrupted / "results.json").unlink()
    found = {p.run: p for p in progress.collect([tmp_path / "sweep"])}
    final = read_json(done / "results.json")["final"]["top1_err"]
    assert (found["done"].state, found["done"].epochs_done, found["done"].epochs, found["done"].left_s) == (
        "completed",
        2,
        2,
        0.0,
    )
    assert found["done"].top1_err == final
    assert (found["interrupted"].state, found["interrupted"].left_s) == ("stopped", 0.0)


def test_the_holder_of_a_claimed_run_directory_is_this_process_until_it_lets_go(tmp_path):
    lock, took = rundir.claim(tmp_path / "run")
    try:
        assert took and rundir.holder(tmp_path / "run") == f"pid {os.getpid()}"
    finally:
        lock.release()
    assert rundir.holder(tmp_path / "run") is None


def test_the_command_prints_the_table_and_a_json_line_and_refuses_what_it_cannot_read(tmp_path):
    sweep = tmp_path / "sweep"
    _checkpoint(_run_dir(sweep, "run", [100.0, 200.0]))
    command = [sys.executable, "-m", "rectnet.results.progress"]
    proc = subprocess.run([*command, str(sweep)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *table, last = proc.stdout.strip().splitlines()
    assert table[1].split() == ["stopped", "2/10", "89.00", "100", "0:13:20", "run"]
    counts = {"training": 0, "stopped": 1, "started": 0, "queued": 0, "failed": 0, "completed": 0}
    assert json.loads(last)["counts"] == counts
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([*command, str(empty)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == f"no run directories under {empty}"
    proc = subprocess.run([*command, str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"not a directory: {tmp_path / 'nope'}" in proc.stderr
