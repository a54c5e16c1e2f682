"""Stop signals sent to a whole job (Slurm signals every process of a job step; a terminal's Ctrl-C, the
process group) reach the DataLoader's decoding workers too. They must outlive them until the training process,
which still needs batches until its next log interval, has written its checkpoint; and they must still end
when their training process ends them, or its exit would wait for them forever."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, TINY_IMAGE_FOLDER, make_image_folder, run_cli
from torch.utils.data import Dataset, default_collate

from rectnet.data.imagenet.loaders import Loader, loader_options
from rectnet.engine import checkpoint as ckpt
from rectnet.engine.preemption import workers_start_deaf_to_sigterm

pytestmark = pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="POSIX signals with sigwaitinfo")

STOP_SIGNALS = ["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT"]


class _Pids(Dataset):
    """Item i: the pid of the process that made it."""

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, index: int) -> int:
        return os.getpid()


def _alive(pid: int) -> bool:
    """Running, not exited (a zombie the parent has not reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_worker_outlives_stop_signals_from_others_and_ends_on_its_parents_sigterm():
    batches = iter(Loader(_Pids(), default_collate, batch_size=2, **loader_options(workers=1, prefetch_factor=1)))
    worker = int(next(batches)[0])
    assert worker != os.getpid()
    for name in STOP_SIGNALS:  # sent by another process (`kill`), as slurmstepd or a shell would
        subprocess.run(["kill", f"-{name.removeprefix('SIG')}", str(worker)], check=True)
        time.sleep(0.3)
        assert _alive(worker), f"the worker died of {name}"
        assert int(next(batches)[0]) == worker  # and still decodes
    os.kill(worker, signal.SIGTERM)  # from its parent: how DataLoader and multiprocessing end a worker
    assert _wait_gone(worker, 10), "the worker ignored its parent's SIGTERM"
    del batches


def _blocked(pid: int) -> set[int]:
    """The signals that process `pid`'s main thread blocks."""
    mask = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigBlk"))
    bits = int(mask.split()[1], 16)
    return {n for n in range(1, 65) if bits >> (n - 1) & 1}


def test_processes_started_for_workers_block_sigterm_from_birth_and_the_parent_is_as_it_was():
    # every thread of a worker inherits it, native ones made before worker_init_fn too (seen in this test process
    # after in-process ImageNet runs: without the block, a foreign SIGTERM landed on that thread and killed the worker)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with workers_start_deaf_to_sigterm():
        child = subprocess.Popen(["sleep", "30"])
    outside = subprocess.Popen(["sleep", "30"])
    try:
        assert signal.SIGTERM in _blocked(child.pid) and signal.SIGTERM not in _blocked(outside.pid)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
    finally:
        for process in (child, outside):
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    "ending",
    ["sys.exit(3)", "os.kill(os.getpid(), signal.SIGKILL)"],  # left to the interpreter's exit; no exit at all
    ids=["exit", "killed"],
)
def test_workers_end_with_their_process_however_it_ends(tmp_path, ending):
    script = tmp_path / "end_with_workers.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys
            sys.path.insert(0, {str(ROOT / "tests")!r})
            from torch.utils.data import default_collate
            from rectnet.data.imagenet.loaders import Loader, loader_options
            from test_worker_signals import _Pids
            options = loader_options(workers=2, prefetch_factor=1)
            batches = iter(Loader(_Pids(), default_collate, batch_size=2, **options))
            print(int(next(batches)[0]), flush=True)
            {ending}
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode in (3, -signal.SIGKILL), done.stderr[-2000:]
    assert _wait_gone(int(done.stdout.split()[0]), 15)  # a killed parent: PyTorch's watchdog, every 5 s


# 80 images in batches of 4: 20 steps an epoch, a log interval (where a stop is saved) every 2
WORKERS = [
    *TINY,
    *TINY_IMAGE_FOLDER,
    "dataset.workers=1",
    "trainer.batch_size=4",
    "trainer.log_every_steps=2",
    "trainer.epochs=40",
    "trainer.threads=1",
]


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] not in ("Z", "X"):
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return table


def _group(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    return [pid for pid, (_, group) in _processes().items() if group == pgid]


def _tree(root: int) -> list[int]:
    """`root` and its live descendants: the processes Slurm signals in a job step (its cgroup)."""
    table, tree = _processes(), [root]
    for pid in tree:
        tree += [child for child, (parent, _) in table.items() if parent == pid]
    return tree


def _four_cores(tmp_path: Path) -> dict[str, str]:
    """Environment under which Python processes see 4 usable CPUs, so that two ranks keep a decoding worker
    each (rectnet.data.imagenet.resources leaves a rank's own core to training) on a 2-core machine."""
    folder = tmp_path / "four_cores"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import os\nos.sched_getaffinity = lambda pid: set(range(4))\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def _start(command: list[str], run_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`command` in its own process group (as a job step is), until its first epoch is logged."""
    proc = subprocess.Popen(
        [*command, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.05)
    return proc


def _check_stopped_and_resume(err: str, name: str, run_dir: Path, args: list[str]) -> None:
    """The run said where it stopped, saved exactly there, left no worker behind, and the same command resumes."""
    last = run_dir / "checkpoints" / "last.pt"
    said = re.search(rf"stopped on {name} at epoch (\d+), step (\d+): {re.escape(str(last))} holds it", err)
    assert said, err[-3000:]
    assert "DataLoader worker" not in err and "exited unexpectedly" not in err
    assert err.count("press Ctrl-C again") == (name == "SIGINT")  # said by the training process, not its workers
    saved = ckpt.load(last)
    assert (saved["epoch"] + 1, saved["step"]) == (int(said[1]), int(said[2]))
    resumed = run_cli([*args, f"trainer.epochs={said[1]}", f"hydra.run.dir={run_dir}"])  # to the epoch's end
    assert resumed.returncode == 0, resumed.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR2", "SIGINT"])
def test_a_signal_to_the_whole_job_saves_a_checkpoint_with_decoding_workers(tmp_path, name):
    root = make_image_folder(tmp_path / "tree", classes=2, train=40, val=4)
    run_dir, args = tmp_path / "run", [*WORKERS, f"dataset.root={root}"]
    proc = _start([sys.executable, str(ROOT / "train.py"), *args], run_dir)
    assert len(_group(proc.pid)) >= 2, "no decoding worker to signal"
    os.killpg(proc.pid, getattr(signal, name))  # every process of the job, workers included
    err = proc.communicate(timeout=120)[1]
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 128 + getattr(signal, name) and "Traceback" not in err, err[-3000:]
    assert _wait_gone(proc.pid, 1) and not _group(proc.pid), "processes of the run outlived it"
    _check_stopped_and_resume(err, name, run_dir, args)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_torchrun_stopped_with_sigterm_saves_a_checkpoint_with_decoding_workers(tmp_path):
    # under srun every process of the step gets it: torchrun's agent, the ranks, their decoding workers
    root = make_image_folder(tmp_path / "tree", classes=2, train=40, val=4)
    run_dir, args = tmp_path / "run", [*WORKERS, f"dataset.root={root}"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = _start([*launch, str(ROOT / "train.py"), *args], run_dir, _four_cores(tmp_path))
    tree = _tree(proc.pid)
    assert len(tree) >= 5, "torchrun, 2 ranks and their decoding workers"
    for pid in tree:
        os.kill(pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert "SignalException: Process" in err  # torchrun's own way to say it was stopped
    _check_stopped_and_resume(err, "SIGTERM", run_dir, args)
