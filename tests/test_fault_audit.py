"""Faults of the fault-injection audit: a disk that is full or read-only before the run starts, Ctrl-C, a
damaged checkpoint rotation or checkpoint structure, and a relaunch that would rewrite a finished run's record.

Each test injects one fault and asserts the outcome: a one-line refusal before training (and before Hydra
writes), the fallback to the intact checkpoint, or a resume identical to the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, compose_train, run_cli

from rectnet.engine import checkpoint as ckpt
from rectnet.engine import rundir
from rectnet.engine.checkpoint import CheckpointError, CheckpointWriteError
from rectnet.engine.train import run


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread: tiny tensors gain nothing from two on a shared CPU."""


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_model(a: Path, b: Path) -> bool:
    x, y = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    """A finished 2-epoch run (last.pt: epoch 2, prev.pt: epoch 1), copied by the tests that damage it."""
    run_dir = tmp_path_factory.mktemp("two_epochs")
    run(compose_train(TINY, run_dir))
    return run_dir


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory) -> Path:
    """The uninterrupted 3-epoch run that continued runs must match tensor for tensor."""
    run_dir = tmp_path_factory.mktemp("three_epochs")
    run(compose_train([*TINY, "trainer.epochs=3"], run_dir))
    return run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns(".lock"))
    return to


@contextlib.contextmanager
def _tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs at `where` (mounting needs root: skipped without it)."""
    where.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> None:
    """Write until the filesystem is full."""
    with contextlib.suppress(OSError), (disk / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def _fds_on(path: Path) -> list[int]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                fds.append(int(fd))
    return fds


# ---------------------------------------------------------------------------------------------------------
# 1. What the run will write is checked before training (and, under train.py, before Hydra writes)


@pytest.mark.slow
def test_a_full_disk_at_start_up_is_refused_in_one_line_before_hydra_writes(tmp_path):
    with _tmpfs(tmp_path / "disk") as disk:
        _fill(disk)
        run_dir = disk / "run"
        proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"])
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert _last_line(proc) == (
            f"RunDirError: the run directory {run_dir} has no room to write (no space left on device): free space "
            "there or pick another hydra.run.dir"
        )
        assert "Traceback" not in proc.stdout + proc.stderr and "Callback" not in proc.stderr
        assert not (run_dir / ".hydra").exists() and not (run_dir / "train.log").exists()


def test_a_lock_record_that_cannot_be_written_is_refused_and_its_file_closed(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)  # only the lock record is written with pwrite
    with pytest.raises(rundir.RunDirError) as caught:
        rundir.claim(tmp_path)
    assert str(caught.value) == (
        f"the run directory {tmp_path} has no room to write (no space left on device): free space there or pick "
        "another hydra.run.dir"
    )
    assert _fds_on(tmp_path / ".lock") == [] and not rundir._HELD
    monkeypatch.undo()
    held, taken = rundir.claim(tmp_path)  # nothing left behind holds it
    held.release()
    assert taken


def test_checkpoints_as_a_plain_file_is_refused_before_training(tmp_path):
    (tmp_path / "checkpoints").write_text("someone's notes")
    with pytest.raises(rundir.RunDirError) as caught:
        run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    assert str(caught.value) == (
        f"{tmp_path / 'checkpoints'} is a file, not a folder: the run writes its checkpoints there; move the file "
        "away or pick another hydra.run.dir"
    )
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained
    assert (tmp_path / "checkpoints").read_text() == "someone's notes"


def test_a_read_only_checkpoints_folder_is_refused_before_training(tmp_path):
    with _tmpfs(tmp_path / "checkpoints") as folder:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        with pytest.raises(rundir.RunDirError) as caught:
            run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    assert str(caught.value) == (
        f"{folder} is not writable (read-only file system): the run writes its checkpoints there; make it "
        "writable or pick another hydra.run.dir"
    )
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_cleanup_that_fails_too_does_not_hide_the_write_error(tmp_path, monkeypatch):
    real_temporary, real_unlink = ckpt.temporary_path, Path.unlink

    def on_full_disk(path: Path) -> Path:  # every write(2) to /dev/full fails with ENOSPC
        tmp = real_temporary(path)
        tmp.symlink_to("/dev/full")
        return tmp

    def unlink(self, missing_ok=False):  # a read-only remount between the write and its cleanup
        if self.name.startswith(".last.pt.tmp-"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok)

    monkeypatch.setattr(ckpt, "temporary_path", on_full_disk)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(CheckpointWriteError) as caught:
        ckpt.atomic_save({"epoch": 1}, tmp_path / "last.pt")
    assert str(caught.value) == (
        f"no space left on device while writing {tmp_path / 'last.pt'}; no earlier last.pt existed. "
        "Free space and resume."
    )


def test_too_little_room_for_the_checkpoints_is_refused_before_training(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=300_000))
    with pytest.raises(CheckpointWriteError) as caught:
        run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    assert re.fullmatch(
        rf"no room for this run's checkpoints in {re.escape(str(tmp_path / 'checkpoints'))}: 0\.3 MB free, about "
        r"\d+\.\d MB needed \(4 checkpoints of about \d+\.\d MB: best\.pt, last\.pt, prev\.pt and the one being "
        r"written; none there yet\)\. Free space or pick another hydra\.run\.dir",
        str(caught.value),
    ), str(caught.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_checkpoint_size_estimate_is_close_to_the_real_size(two_epochs):
    from rectnet.config import to_settings
    from rectnet.engine.optim import make_optimizer
    from rectnet.models.build import build_model

    settings = to_settings(compose_train(TINY))
    model = build_model(settings, settings.dataset.num_classes)
    estimate = ckpt.estimated_size(model, make_optimizer(model, settings.optim), world_size=1)
    real = (two_epochs / "checkpoints" / "last.pt").stat().st_size
    assert real <= estimate <= 1.25 * real, (estimate, real)


# ---------------------------------------------------------------------------------------------------------
# 2. Ctrl-C


def _start(args: list[str], run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _wait_for_epoch_1(proc: subprocess.Popen, run_dir: Path) -> None:
    """Until epoch 1 is logged and its checkpoint written (metrics.jsonl's line comes first)."""
    metrics, last, deadline = run_dir / "metrics.jsonl", run_dir / "checkpoints" / "last.pt", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1 and last.exists():
            return
        time.sleep(0.01)


def _read_until(proc: subprocess.Popen, text: str) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if text in line:
            break
    return lines


# 1024 images in batches of 16: 64 steps an epoch, a log interval (where a stop is saved) every 16
CTRL_C = [
    *TINY,
    "model.dropout=0.3",
    "dataset.num_train=1024",
    "trainer.batch_size=16",
    "trainer.log_every_steps=16",
    "trainer.threads=1",
]


def test_a_sigint_inherited_as_ignored_stays_ignored_and_the_other_stop_signals_are_taken():
    """`cmd &` in a script or `nohup ... &`: the shell starts it with SIGINT ignored; a Ctrl-C in that terminal is
    meant for the foreground job, not for it (README, Reliability)."""
    from rectnet.engine.preemption import StopSignals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stops = StopSignals(announce=False).install()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == stops._record
        stops.uninstall()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.slow
def test_ctrl_c_saves_says_how_to_resume_and_the_resumed_run_is_exact(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli([*CTRL_C, f"hydra.run.dir={straight}"]).returncode == 0
    proc = _start(CTRL_C, stopped)
    _wait_for_epoch_1(proc, stopped)
    proc.send_signal(signal.SIGINT)  # early in epoch 2: saved at its next log interval
    lines = _read_until(proc, "press Ctrl-C again")
    rest = proc.stderr.read().strip().splitlines()
    code = proc.wait(timeout=120)
    if code == 0:
        pytest.skip("the run finished before the signal arrived")
    last = stopped / "checkpoints" / "last.pt"
    assert code == 130, "\n".join(lines + rest)[-3000:]
    said = re.fullmatch(
        rf"stopped on SIGINT at epoch 2, step (\d+): {re.escape(str(last))} holds it; the same "
        "command resumes",
        rest[-1],
    )
    assert said, rest[-20:]
    assert "Traceback" not in "\n".join(lines + rest) and "KeyboardInterrupt" not in "\n".join(lines + rest)
    saved = ckpt.load(last)
    assert (saved["epoch"], saved["step"]) == (1, int(said[1])) and saved["step"] % 16 == 0
    resumed = run_cli([*CTRL_C, f"hydra.run.dir={stopped}"])  # the same command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _epochs(stopped) == [1, 2]
    assert _same_model(last, straight / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_saving_and_corrupts_nothing(tmp_path):
    args = [*CTRL_C, "dataset.num_train=4096", "trainer.log_every_steps=256"]  # epoch 2's save: 256 steps away
    proc = _start(args, tmp_path)
    _wait_for_epoch_1(proc, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    after_epoch_1 = last.read_bytes()
    proc.send_signal(signal.SIGINT)
    _read_until(proc, "press Ctrl-C again")
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read().strip().splitlines()
    code = proc.wait(timeout=120)
    if code == 0:
        pytest.skip("the run finished before the signals arrived")
    assert code == 130 and rest[-1] == (
        f"stopped on a second SIGINT without saving: {last} holds the last checkpoint (the end of epoch 1); the "
        "same command resumes from it"
    ), rest[-20:]
    assert "Traceback" not in "\n".join(rest)
    assert last.read_bytes() == after_epoch_1  # not saved, not damaged
    assert not list((tmp_path / "checkpoints").glob(".*"))
    resumed = run_cli([*args, f"hydra.run.dir={tmp_path}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _epochs(tmp_path) == [1, 2]


# eval.py with scoring held up until the test sends its signal: a real SIGINT, delivered mid-evaluation
SLOW_EVAL = """
import sys, time
from rectnet.engine import eval_command, scoring
def held(self, *args, **kwargs):
    print("scoring", flush=True)
    time.sleep(120)
scoring.Evaluator.__call__ = held
sys.exit(eval_command.main(sys.argv[1:]))
"""


def test_ctrl_c_during_eval_py_says_so_in_one_line_and_leaves_an_earlier_result_as_it_was(tmp_path, two_epochs):
    run_dir = _copy(two_epochs, tmp_path / "run")
    earlier = run_dir / "eval_center.json"
    earlier.write_text('{"top1_err": 12.5}\n')  # what an earlier evaluation left
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EVAL, f"run_dir={run_dir}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout.readline().strip() == "scoring", proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "eval.py: interrupted before every image was scored; no result file was written"
    )
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert earlier.read_text() == '{"top1_err": 12.5}\n'
    assert sorted(p.name for p in run_dir.glob("*eval*")) == ["eval_center.json"]  # no temporary file either


# ---------------------------------------------------------------------------------------------------------
# 3. Damaged state


@pytest.mark.parametrize("name", ["last.pt", "prev.pt"])
def test_a_directory_in_place_of_a_checkpoint_is_moved_aside_and_the_run_continues(
    tmp_path, two_epochs, three_epochs, name, caplog
):
    run_dir = _copy(two_epochs, tmp_path / "run")
    folder = run_dir / "checkpoints"
    (folder / name).unlink()
    (folder / name).mkdir()
    (folder / name / "keep").write_text("what was in there")
    with caplog.at_level(logging.WARNING):
        results = run(compose_train([*TINY, "trainer.epochs=3"], run_dir))
    (aside,) = folder.glob(f"{name}.damaged-*")
    assert (aside / "keep").read_text() == "what was in there"
    assert f"{folder / name} is a directory, not a checkpoint: moved aside to {aside}" in caplog.text
    assert results["epochs"] == 3 and _epochs(run_dir) == [1, 2, 3]
    assert (folder / "last.pt").is_file() and (folder / "prev.pt").is_file()
    assert _same_model(folder / "last.pt", three_epochs / "checkpoints" / "last.pt")
    assert not list(folder.glob(".*"))  # the newer state is last.pt, not a temporary the next start deletes


def test_an_interrupted_rotation_is_completed_on_the_next_start(tmp_path, two_epochs, three_epochs, caplog):
    """Killed between save_last's two renames: last.pt is gone, .last.pt.new holds the newer, complete state."""
    run_dir = _copy(two_epochs, tmp_path / "run")
    folder = run_dir / "checkpoints"
    os.replace(folder / "prev.pt", folder / "older.pt")
    os.replace(folder / "last.pt", folder / ".last.pt.new")
    os.replace(folder / "older.pt", folder / "prev.pt")
    with caplog.at_level(logging.WARNING):
        results = run(compose_train([*TINY, "trainer.epochs=3"], run_dir))
    assert f"{folder / '.last.pt.new'} holds the newest checkpoint (an interrupted rotation)" in caplog.text
    assert results["resumed_from"][0]["epoch"] == 2  # not epoch 1 (prev.pt): the newer state was kept
    assert _epochs(run_dir) == [1, 2, 3]
    assert _same_model(folder / "last.pt", three_epochs / "checkpoints" / "last.pt")


DAMAGES = {
    "model": [],
    "rng": [{"python": 1}],
    "fingerprint": 3,
    "partial": "x",
    "optimizer": {"state": [], "param_groups": 1},
    "epoch": "2",
    "resumes": [3],
    "attempts": "x",
    "records": {"train_loss_at_best": "low"},
    "schedule": None,
}


@pytest.mark.parametrize("key", list(DAMAGES))
def test_a_checkpoint_entry_of_the_wrong_type_is_damage_and_prev_pt_is_used(tmp_path, two_epochs, key, caplog):
    folder = _copy(two_epochs, tmp_path / "run") / "checkpoints"
    state = torch.load(folder / "last.pt", weights_only=True)
    state[key] = DAMAGES[key]
    torch.save(state, folder / "last.pt")  # every key present, every CRC right
    with caplog.at_level(logging.WARNING):
        path, chosen = ckpt.choose_resume("auto", folder)
    assert path == folder / "prev.pt" and chosen["epoch"] == 1
    assert f"{folder / 'last.pt'} is damaged: {key}" in caplog.text
    with pytest.raises(CheckpointError, match=rf"is damaged: {key}"):
        ckpt.load(folder / "last.pt")


def test_a_resume_past_a_wrongly_typed_last_pt_continues_from_prev_pt(tmp_path, two_epochs, three_epochs):
    run_dir = _copy(two_epochs, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["rng"] = [{"python": 1}]
    torch.save(state, last)
    assert run(compose_train([*TINY, "trainer.epochs=3"], run_dir))["epochs"] == 3
    assert _epochs(run_dir) == [1, 2, 3]
    assert _same_model(last, three_epochs / "checkpoints" / "last.pt")


# ---------------------------------------------------------------------------------------------------------
# 4. A relaunch with another value rewrites nothing


@pytest.mark.slow
def test_relaunching_a_finished_run_with_another_lr_leaves_its_record_byte_identical(tmp_path):
    assert run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={tmp_path}"]).returncode == 0
    record = [
        tmp_path / ".hydra" / "config.yaml",
        tmp_path / ".hydra" / "overrides.yaml",
        tmp_path / ".hydra" / "hydra.yaml",
        tmp_path / "results.json",
        tmp_path / "train.log",
        tmp_path / "metrics.jsonl",
        *sorted((tmp_path / "checkpoints").iterdir()),
    ]
    before = {path: path.read_bytes() for path in record}
    proc = run_cli([*TINY, "trainer.epochs=1", "optim.lr=0.5", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 1
    assert _last_line(proc) == (
        f"ResumeMismatchError: {tmp_path / 'checkpoints' / 'last.pt'} was written by a different run (optim.lr: "
        "0.01 -> 0.5): resuming would continue that run under this config. Choose another hydra.run.dir for a new "
        "run (optim.lr cannot change within a run: the checkpoint's optimizer/schedule state holds it)"
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    assert {path: path.read_bytes() for path in record} == before
    assert sorted((tmp_path / "checkpoints").iterdir()) == record[6:] and not (tmp_path / "FAILED").exists()
    assert json.loads((tmp_path / ".lock").read_text())["released"] is True


def test_kept_job_records_come_back_for_nested_jobs_only_where_there_was_one(tmp_path):
    from rectnet.engine.hydra_callbacks import KEPT_RECORDS, keep_job_records, restore_job_record

    jobs = [tmp_path / "0", tmp_path / "lr=0.1" / "seed=1"]  # a subdir pattern may nest folders
    for job in jobs:
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- {job.name}\n")
    (tmp_path / ".submitit" / "7" / ".hydra").mkdir(parents=True)  # bookkeeping: not a job
    keep_job_records(tmp_path)
    assert sorted(
        p.relative_to(tmp_path / KEPT_RECORDS).as_posix() for p in (tmp_path / KEPT_RECORDS).rglob("*.yaml")
    ) == [
        "0/overrides.yaml",
        "lr=0.1/seed=1/overrides.yaml",
    ]
    for job in jobs:
        (job / ".hydra" / "overrides.yaml").write_text("- optim.lr=0.5\n")  # Hydra, for the refused launch
        restore_job_record(tmp_path, job)
        assert (job / ".hydra" / "overrides.yaml").read_text() == f"- {job.name}\n"
    new = tmp_path / "2"
    (new / ".hydra").mkdir(parents=True)
    (new / ".hydra" / "overrides.yaml").write_text("- seed=2\n")
    restore_job_record(tmp_path, new)  # no record before this launch: left as Hydra wrote it
    assert (new / ".hydra" / "overrides.yaml").read_text() == "- seed=2\n"


@pytest.mark.slow
def test_relaunching_a_sweep_with_another_lr_leaves_each_jobs_record_byte_identical(tmp_path):
    """Hydra rewrites a sweep job's .hydra/ before any callback of the job runs: the refused job gets it back."""
    sweep = [*TINY, "trainer.epochs=1", "seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    assert run_cli(["-m", *sweep], timeout=600).returncode == 0
    record = sorted(
        p for job in ("0", "1") for p in [*(tmp_path / job / ".hydra").iterdir(), tmp_path / job / "results.json"]
    )
    before = {path: path.read_bytes() for path in record}
    assert b"optim.lr=0.5" not in b"".join(before.values())
    proc = run_cli(["-m", *sweep, "optim.lr=0.5"], timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.count("ResumeMismatchError") >= 2 and "(optim.lr: 0.01 -> 0.5)" in proc.stderr
    assert {path: path.read_bytes() for path in record} == before
    # the launch ended on its failed jobs, past on_multirun_end: the copy is gone and the folder let go all the same
    assert not (tmp_path / ".hydra_kept").exists()
    assert json.loads((tmp_path / ".lock").read_text())["released"] is True
