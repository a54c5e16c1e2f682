"""Fault injection: each fault a run can meet (a full disk, a killed process, a corrupt checkpoint, a busy run
directory, ...) is injected here and its exact outcome asserted.

Tiny synthetic runs (helpers.TINY) on the CPU. Each test names the fault it injects; the outcome is the
refusal, the fallback, the identical resume or the message text.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY, compose_train, run_cli

from rectnet.config import ConfigError
from rectnet.data.cifar import CIFAR10, DatasetError, load_cifar
from rectnet.engine import checkpoint as ckpt
from rectnet.engine import rundir
from rectnet.engine.agreement import NonFiniteStateError
from rectnet.engine.checkpoint import CheckpointError, CheckpointWriteError
from rectnet.engine.distributed import Dist
from rectnet.engine.train import run

HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread: tiny tensors gain nothing from two on a shared CPU."""


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _model(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def _same_model(a: Path, b: Path) -> bool:
    x, y = _model(a), _model(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted 3-epoch reference run that resumed runs must match tensor for tensor."""
    run_dir = tmp_path_factory.mktemp("straight")
    run(compose_train([*TINY, "trainer.epochs=3"], run_dir))
    return run_dir


# ---------------------------------------------------------------------------------------------------------
# 1. Two processes, one run directory

HOLD = """
import sys, time
from pathlib import Path
from rectnet.engine import rundir
rundir.claim(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def _hold(run_dir: Path) -> subprocess.Popen:
    """Another process that owns `run_dir` until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_run_in_an_owned_run_directory_is_refused_until_the_owner_dies(tmp_path):
    owner = _hold(tmp_path)
    try:
        with pytest.raises(rundir.RunDirError, match=f"in use by process {owner.pid} on host {HOST} "):
            run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written: no metrics, no FAILED
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    # kill -9 leaves no stale lock: the kernel dropped the flock, and the record names this host
    assert run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))["epochs"] == 1
    assert json.loads((tmp_path / ".lock").read_text())["released"] is True


@pytest.mark.slow
def test_two_train_py_on_one_run_dir_the_second_exits_naming_the_first(tmp_path):
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *TINY, "trainer.epochs=100000", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = tmp_path / ".lock"
        deadline = time.monotonic() + 120
        while not (tmp_path / ".hydra" / "overrides.yaml").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        overrides = (tmp_path / ".hydra" / "overrides.yaml").read_text()
        second = run_cli([*TINY, "seed=1", f"hydra.run.dir={tmp_path}"])
        assert second.returncode == 1
        assert _last_line(second) == (
            f"RunDirError: the run directory {tmp_path} is in use by "
            + rundir._describe(json.loads(lock.read_text()))
            + ": two runs in one folder would mix their metrics and checkpoints; wait for it to end, stop it, or "
            "choose another hydra.run.dir"
        )
        assert f"process {first.pid} on host {HOST}" in second.stderr
        assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == overrides  # refused before Hydra wrote
    finally:
        first.kill()
        first.wait()


HOLD_AND_FORK = """
import os, sys, time
from pathlib import Path
from rectnet.engine import rundir
rundir.claim(Path(sys.argv[1]))
child = os.fork()  # as DataLoader workers are forked from the training process
if child == 0:
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_forked_worker_does_not_keep_the_lock_of_a_killed_owner(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE)
    worker = int(owner.stdout.readline())
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    try:
        held, taken = rundir.claim(tmp_path)  # the worker still runs, with its copy of the lock file closed
        held.release()
        assert taken
    finally:
        os.kill(worker, signal.SIGKILL)


def _foreign_record(path: Path, beat: int = 0) -> None:
    """The record an owner on node-b writes (replaced atomically: a reader never sees half of it)."""
    record = {"host": "node-b", "pid": 4242, "started": "1", "started_at": 0.0, "beat": beat, "released": False}
    tmp = path.with_name("record.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


def test_an_owner_on_another_host_is_seen_through_its_heartbeat_where_flock_is_node_local(tmp_path, monkeypatch):
    # A node-local flock (Lustre localflock, NFS nolock) lets the claim through; the record must refuse it.
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.05)
    lock = tmp_path / ".lock"
    _foreign_record(lock)
    stop = threading.Event()

    def beat() -> None:  # the owner on node-b, alive
        n = 0
        while not stop.wait(0.02):
            n += 1
            _foreign_record(lock, n)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        with pytest.raises(rundir.RunDirError, match="in use by process 4242 on host node-b .*heartbeat"):
            rundir.claim(tmp_path)
    finally:
        stop.set()
        beating.join()
    # the owner died without releasing (kill -9, node crash): its heartbeat stands still, the claim takes over
    held, taken = rundir.claim(tmp_path)
    try:
        assert taken and json.loads(lock.read_text())["host"] == HOST
    finally:
        held.release()


def test_of_two_nodes_taking_over_from_a_dead_owner_at_once_the_last_writer_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.2)
    lock = tmp_path / ".lock"
    _foreign_record(lock)  # node-b died without releasing

    def ours_written() -> bool:
        try:
            return json.loads(lock.read_text()).get("host") == HOST
        except ValueError:  # read in the middle of a write
            return False

    def node_c() -> None:  # took over too, and wrote its record just after ours
        while not ours_written():
            time.sleep(0.001)
        record = {"host": "node-c", "pid": 777, "started": "1", "started_at": 0.0, "beat": 0, "released": False}
        lock.write_text(json.dumps(record))

    competitor = threading.Thread(target=node_c)
    competitor.start()
    try:
        with pytest.raises(rundir.RunDirError, match="claimed at the same time by process 777 on host node-c"):
            rundir.claim(tmp_path)
    finally:
        competitor.join()


def test_without_flock_a_live_owner_on_this_host_is_found_by_pid(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        record = {"host": HOST, "pid": owner.pid, "started": rundir._process_start(owner.pid), "released": False}
        (tmp_path / ".lock").write_text(json.dumps(record))
        with pytest.raises(rundir.RunDirError, match=f"in use by process {owner.pid} on host {HOST}"):
            rundir.claim(tmp_path)
    finally:
        owner.kill()
        owner.wait()
    held, taken = rundir.claim(tmp_path)  # the recorded owner is dead
    held.release()
    assert taken


class _Rank1(Dist):
    def broadcast(self, obj):  # rank 0 claimed without error
        return None


def test_only_rank_zero_claims_the_run_directory(tmp_path):
    assert rundir.claim_for(tmp_path / "run", _Rank1(rank=1, world_size=2)) is None
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------
# 2. A torn metrics.jsonl


def test_a_torn_metrics_line_and_nul_bytes_are_dropped_on_resume_and_the_resume_is_identical(
    tmp_path, straight, caplog
):
    run(compose_train([*TINY, "trainer.epochs=2"], tmp_path))
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("ab") as f:  # epoch 3 cut short by a power cut, then the zeroed blocks it leaves
        f.write(b'{"epoch": 3, "lr": 0.01, "train/lo' + b"\x00" * 512)
    with caplog.at_level(logging.WARNING, logger="rectnet"):
        results = run(compose_train([*TINY, "trainer.epochs=3"], tmp_path))
    assert results["epochs"] == 3 and _epochs(tmp_path) == [1, 2, 3]
    assert f"{metrics}: dropped 1 unreadable line(s) (a write cut short)" in caplog.text
    assert _same_model(tmp_path / "checkpoints" / "last.pt", straight / "checkpoints" / "last.pt")


def test_a_finished_run_whose_last_metrics_line_is_torn_resumes_without_error(tmp_path):
    run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-20])  # no newline, no closing brace
    results = run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    assert results["epochs"] == 1 and results["final"] == {} and metrics.read_text() == ""


# ---------------------------------------------------------------------------------------------------------
# 3. A silently corrupted checkpoint


def _flip_byte_in_member(path: Path, suffix: str) -> str:
    """Flip one byte in the middle of the stored data of the archive member ending in `suffix`."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    raw = bytearray(path.read_bytes())
    header = info.header_offset  # local file header: 30 bytes, then the name and the extra field (torch pads)
    name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
    offset = header + 30 + name_len + extra_len + info.file_size // 2
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    return info.filename


def test_a_flipped_byte_in_last_pt_falls_back_to_prev_pt_naming_the_file(tmp_path, straight, caplog):
    run(compose_train([*TINY, "trainer.epochs=2"], tmp_path))
    last = tmp_path / "checkpoints" / "last.pt"
    member = _flip_byte_in_member(last, "data/0")  # the first tensor's bytes
    torch.load(last, weights_only=True)  # the fault is real: torch alone loads it without a word
    with caplog.at_level(logging.WARNING):
        results = run(compose_train([*TINY, "trainer.epochs=3"], tmp_path))
    assert f"{last} is corrupted: the content of {member} does not match its CRC-32" in caplog.text
    assert f"resuming from the previous checkpoint {tmp_path / 'checkpoints' / 'prev.pt'}" in caplog.text
    assert results["epochs"] == 3 and _epochs(tmp_path) == [1, 2, 3]  # epoch 2 redone from prev.pt
    assert _same_model(last, straight / "checkpoints" / "last.pt")


def test_when_neither_checkpoint_loads_the_message_names_both_and_what_to_do(tmp_path):
    run(compose_train([*TINY, "trainer.epochs=2"], tmp_path))
    folder = tmp_path / "checkpoints"
    _flip_byte_in_member(folder / "last.pt", "data.pkl")
    (folder / "prev.pt").write_bytes((folder / "prev.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError) as caught:
        run(compose_train([*TINY, "trainer.epochs=3"], tmp_path))
    message = str(caught.value)
    assert message.startswith(f"neither checkpoint can be resumed from: {folder / 'last.pt'} is corrupted")
    assert f"; {folder / 'prev.pt'} is not a readable checkpoint (BadZipFile" in message
    assert message.endswith(
        "resume from another file with trainer.resume=<path>, or start afresh in another hydra.run.dir"
    )


# ---------------------------------------------------------------------------------------------------------
# 4. Non-finite weights


def _first_optimized() -> str:
    """The name of the parameter the optimizer lists first (the one the injected overflow hits)."""
    from rectnet.config import to_settings
    from rectnet.engine.optim import make_optimizer
    from rectnet.models.build import build_model

    settings = to_settings(compose_train(TINY))
    model = build_model(settings, settings.dataset.num_classes)
    first = make_optimizer(model, settings.optim).param_groups[0]["params"][0]
    return next(name for name, p in model.named_parameters() if p is first)


def test_a_step_that_overflows_the_weights_is_never_saved_and_the_message_is_true(tmp_path, monkeypatch):
    run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()
    real_step = torch.optim.SGD.step

    def overflowing_step(self, closure=None):  # what a huge learning rate does: the loss was finite, the update is not
        out = real_step(self, closure)
        with torch.no_grad():
            self.param_groups[0]["params"][0].mul_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", overflowing_step)
    with pytest.raises(NonFiniteStateError) as caught:  # step 2's loss would be NaN: the save after step 1 stops it
        run(compose_train([*TINY, "trainer.epochs=2", "trainer.checkpoint_every_steps=1"], tmp_path))
    assert str(caught.value) == (
        f"the weights or optimizer state hold NaN or inf at epoch 2, step 1 (model.{_first_optimized()}): not saved; "
        "checkpoints/last.pt still holds the last good state. Lower optim.lr or check the data."
    )
    assert last.read_bytes() == before and not any(ckpt.nonfinite_entries(_model(last), {}))


def test_a_checkpoint_holding_inf_is_treated_as_damaged(tmp_path, caplog):
    run(compose_train([*TINY, "trainer.epochs=2"], tmp_path))
    last = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].fill_(float("inf"))
    torch.save(state, last)  # a valid archive: only the finiteness check can tell
    with caplog.at_level(logging.WARNING):
        assert run(compose_train([*TINY, "trainer.epochs=2"], tmp_path))["epochs"] == 2
    assert f"{last} is damaged: NaN or inf in model.{name}; resuming from the previous" in caplog.text
    assert _epochs(tmp_path) == [1, 2]


# ---------------------------------------------------------------------------------------------------------
# 5. Code execution from a dataset file


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "batch_label": b"x", "filenames": [b"a"]}
    for name in CIFAR10.train_files + CIFAR10.test_files:
        (folder / name).write_bytes(pickle.dumps(good, protocol=2))
    marker = tmp_path / "owned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({**good, "labels": _Exploit(marker)}, protocol=2))
    with pytest.raises(DatasetError) as caught:
        load_cifar(CIFAR10, tmp_path, 10, download=False)
    assert not marker.exists()
    assert str(caught.value) == (
        f"{folder / 'data_batch_3'} refers to posix.system, which CIFAR batch files never contain (only dicts, "
        "lists, strings, bytes and numpy arrays): refused to load it, since unpickling it could run code. "
        "Replace the file with an official copy."
    )
    (folder / "data_batch_3").write_bytes(pickle.dumps(good, protocol=2))
    assert len(load_cifar(CIFAR10, tmp_path, 10, download=False).train) == 10  # five files of two images


# ---------------------------------------------------------------------------------------------------------
# 6. An empty run directory, the repository as run directory


@pytest.mark.slow
def test_an_empty_run_dir_is_refused_before_anything_is_written(tmp_path):
    proc = run_cli([*TINY, "hydra.run.dir="])
    assert proc.returncode == 1
    assert _last_line(proc) == (
        "RunDirError: the run directory is empty (hydra.run.dir= or run_dir=): the run would write into the "
        "current folder; give it a folder of its own, e.g. hydra.run.dir=runs/try1"
    )
    assert not (ROOT / ".hydra").exists() and not (ROOT / "train.log").exists()


def test_the_repository_as_run_dir_is_refused(tmp_path):
    with pytest.raises(rundir.RunDirError, match=f"the run directory {ROOT} is a source repository"):
        run(compose_train(TINY, ROOT))
    assert not (ROOT / "checkpoints").exists() and not (ROOT / ".lock").exists()


# ---------------------------------------------------------------------------------------------------------
# Faults that kept the data but hid the reason


def test_disk_full_while_writing_a_checkpoint_says_so_and_keeps_the_previous_one(tmp_path, monkeypatch, straight):
    run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    folder = tmp_path / "checkpoints"
    before = (folder / "last.pt").read_bytes()
    real_temporary = ckpt.temporary_path

    def on_full_disk(path: Path) -> Path:  # the write goes to /dev/full: every write(2) fails with ENOSPC
        tmp = real_temporary(path)
        if path.name == ".last.pt.new":
            tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(ckpt, "temporary_path", on_full_disk)
    (tmp_path / "FAILED").symlink_to("/dev/full")  # the disk is full for the error report too
    with pytest.raises(CheckpointWriteError) as caught:
        run(compose_train([*TINY, "trainer.epochs=2"], tmp_path))
    assert str(caught.value) == (
        f"no space left on device while writing {folder / 'last.pt'}; the previous {folder / 'last.pt'} is intact. "
        "Free space and resume."
    )
    assert (folder / "last.pt").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == [
        "best.pt",
        "last.pt",
    ]
    monkeypatch.undo()
    run(compose_train([*TINY, "trainer.epochs=3"], tmp_path))
    assert _same_model(folder / "last.pt", straight / "checkpoints" / "last.pt")


@pytest.fixture
def read_only_run_dir(tmp_path):
    """An existing run directory on a read-only filesystem (a tmpfs remounted read-only; needs root)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (mount / "run").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "run"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_read_only_run_dir_is_named_as_not_writable(read_only_run_dir):
    proc = run_cli([*TINY, f"hydra.run.dir={read_only_run_dir}"])
    assert proc.returncode == 1
    assert _last_line(proc) == (
        f"RunDirError: the run directory {read_only_run_dir} is not writable (read-only file system); "
        "pick another hydra.run.dir"
    )


def test_temporary_files_of_a_killed_write_are_removed_on_the_next_start(tmp_path):
    run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    left = [
        tmp_path / "checkpoints" / ".last.pt.new.tmp-99999",
        tmp_path / "checkpoints" / ".best.pt.tmp-12345",
        tmp_path / "checkpoints" / ".last.pt.new",
        tmp_path / ".results.json.tmp",
        tmp_path / ".metrics.jsonl.tmp",
    ]
    for path in left:
        path.write_bytes(b"half a write")
    run(compose_train([*TINY, "trainer.epochs=1"], tmp_path))
    assert not any(path.exists() for path in left)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,reason",
    [
        (["optim.lr=-1"], "ConfigError: optim.lr must be > 0, got -1.0"),
        (["optim.lr=1e400"], "ConfigError: optim.lr must be a finite number, got inf"),
        (["dataset.synthetic_noise=-0.5"], "ConfigError: dataset.synthetic_noise must be >= 0, got -0.5"),
        (["trainer.resume=/nonexistent/last.pt"], "CheckpointError: checkpoint /nonexistent/last.pt does not exist"),
    ],
)
def test_a_user_error_is_one_line_and_the_last_one(tmp_path, args, reason):
    proc = run_cli([*TINY, *args, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 1 and _last_line(proc) == reason
    assert "Traceback" not in proc.stderr + proc.stdout and "Error executing job" not in proc.stderr
    assert json.loads((tmp_path / ".lock").read_text())["released"] is True  # released before the exit


@pytest.mark.slow
def test_hydra_full_error_keeps_the_traceback(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "optim.lr=-1", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert _last_line(proc) == "rectnet.config.ConfigError: optim.lr must be > 0, got -1.0"


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.momentum=inf", "optim.momentum must be a finite number, got inf"),
        ("optim.weight_decay=nan", "optim.weight_decay must be a finite number, got nan"),
        ("model.width=inf", "model.width must be a finite number, got inf"),
        ("activation.slope=-inf", "activation.slope must be a finite number, got -inf"),
        ("schedule.threshold=-0.1", "schedule.threshold must be >= 0, got -0.1"),
        ("schedule.min_lr=-1", "schedule.min_lr must be >= 0, got -1.0"),
        ("trainer.stop_at_val_loss=-1", "trainer.stop_at_val_loss must be >= 0 or null, got -1.0"),
        ("model.halve_at=[0]", "model.halve_at must list weight layers >= 1, got [0]"),
        ("+model.init_std={1:0}", "model.init_std values must be > 0, got {1: 0.0}"),
        ("seed=-1", "seed must be in [0, 2**32) (numpy's seed range), got -1"),
    ],
)
def test_every_numeric_key_has_a_range(override, message):
    from rectnet.config import to_settings

    with pytest.raises(ConfigError) as caught:
        to_settings(compose_train([*TINY, override]))
    assert str(caught.value) == message


@pytest.mark.slow
def test_a_model_names_its_smallest_input_size():
    from rectnet.summary import summarize

    # All-CNN-B: 11x11/4 conv, then 3x3/2 convs at conv3 and conv6: conv6 needs a 3x3 map, so conv3 needs
    # 7x7, so conv1 must output 7: (s - 11) // 4 + 1 >= 7, s >= 35.
    with pytest.raises(ConfigError) as caught:
        summarize(["model=allcnn_b"])
    assert str(caught.value) == (
        "dataset.image_size=32 is too small for model allcnn_b: its smallest input is 35x35 "
        "(set dataset.image_size=35 or more)"
    )
    assert summarize(["model=allcnn_b", "dataset.image_size=35", "model.width=0.0625"])["input_size"] == 35
    proc = subprocess.run(
        [sys.executable, "-m", "rectnet.summary", "model=allcnn_b"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1 and _last_line(proc).startswith("ConfigError: dataset.image_size=32 is too small")


@pytest.mark.slow
def test_a_sweep_reports_each_failure_as_it_happens_and_all_at_the_end(tmp_path):
    tiny = [o.replace("epochs=2", "epochs=1") for o in TINY if not o.startswith("optim.lr=")]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            *tiny,
            "optim.lr=-1,0.01,-2",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=ROOT,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream: the order of the lines is what is tested
        text=True,
        timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    overrides = " ".join(tiny)
    job0 = f"job 0 failed ({overrides} optim.lr=-1): ConfigError: optim.lr must be > 0, got -1.0"
    job2 = f"job 2 failed ({overrides} optim.lr=-2): ConfigError: optim.lr must be > 0, got -2.0"
    assert proc.returncode == 1
    launch1 = next(i for i, line in enumerate(lines) if "#1 : " in line)
    assert lines.index(f"[sweep] {job0}") < launch1 < lines.index(f"[sweep] {job2}")  # printed as they happen
    assert lines[-3:] == [f"2 job(s) of the sweep in {tmp_path} failed:", f"  {job0}", f"  {job2}"]
    assert (tmp_path / "1" / "results.json").is_file()
