"""torchrun with gloo on CPU: rank-count independence, exact evaluation, and exact resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, run_cli

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         str(ROOT / "train.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def _straight_then_background(args: list[str], straight: Path, interrupted: Path) -> subprocess.Popen:
    """Run `args` to the end in `straight`, then start the same run in `interrupted` in the background."""
    assert run_cli([*args, f"hydra.run.dir={straight}"]).returncode == 0
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={interrupted}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip


# 201 test images: not divisible by 2 ranks, so padding or dropping would show in the counts
DDP_RUN = [*TINY, "dataset.num_test=201", "trainer.epochs=2"]


@pytest.mark.slow
def test_two_ranks_follow_the_one_rank_run(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_cli([*DDP_RUN, "trainer.batch_size=64", f"hydra.run.dir={one}"])
    assert single.returncode == 0, single.stderr[-2000:]
    double = _torchrun(2, [*DDP_RUN, "trainer.batch_size=64", f"hydra.run.dir={two}"])  # the global batch: 32 each
    assert double.returncode == 0, double.stderr[-3000:]

    a, b = _weights(one), _weights(two)
    # same global batches: equal up to floating-point summation order, which 16 steps at lr 0.01 amplify to
    # ~1e-6 here (measured); a batch seen twice or missed moves the weights by orders of magnitude more
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert r1["final"]["count"] == r2["final"]["count"] == 201
    assert r1["final"]["top1_err"] == pytest.approx(r2["final"]["top1_err"])
    assert r2["world_size"] == 2 and r2["hparams"]["global_batch"] == 64 and r2["hparams"]["batch_per_process"] == 32
    # rank 0 alone writes: TensorBoard files of one process (name: ...tfevents.<time>.<host>.<pid>.<n>)
    assert len({p.name.split(".")[-2] for p in (two / "tb").glob("events.out.tfevents.*")}) == 1
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2
    assert "[rank 1/2]" in double.stdout + double.stderr


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_bitwise_exact(tmp_path):
    args = [*TINY, "model.dropout=0.3", "trainer.epochs=3", "trainer.batch_size=16", "trainer.checkpoint_every_steps=4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _straight_then_background(args, straight, killed)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill -9 while last.pt holds a mid-epoch state
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") >= 1 and last.exists():
            os.kill(proc.pid, signal.SIGSTOP)  # freeze it, so what we read is what it is killed with
            if last.exists() and torch.load(last, weights_only=True)["step"] > 0:  # (absent between 2 renames)
                os.kill(proc.pid, signal.SIGKILL)
                break
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed (machine too fast for this timing)")
    assert torch.load(last, weights_only=True)["step"] > 0

    resumed = run_cli([*args, "trainer.resume=auto", f"hydra.run.dir={killed}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(straight), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    expected = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["train/loss"] for m in lines] == pytest.approx([m["train/loss"] for m in expected], rel=1e-12)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_resumed_run_is_exact(tmp_path):
    args = [*TINY, "model.dropout=0.3", "trainer.epochs=3", "trainer.batch_size=16"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    proc = _straight_then_background(args, straight, stopped)
    metrics = stopped / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # during epoch 2: finish the step, save, exit 128 + 15
    assert proc.wait(timeout=60) in (128 + signal.SIGTERM, 0)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["step"] > 0
    assert run_cli([*args, f"hydra.run.dir={stopped}"]).returncode == 0  # trainer.resume=auto by default
    a, b = _weights(straight), _weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _submitit_local_tasks(folder: Path) -> list[int]:
    """PIDs of submitit's local task processes (not their controller) whose job folder is under `folder`."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            data = environ.read_bytes()
        except OSError:
            continue
        if b"SUBMITIT_LOCAL_GLOBALID=" in data and str(folder).encode() in data:
            pids.append(int(environ.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds submitit's tasks through /proc")
def test_submitit_local_two_tasks_preempted_requeue_and_finish(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = [*TINY, "trainer.batch_size=32", "trainer.epochs=6", "trainer.threads=1"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local", *args, f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    metrics, deadline = tmp_path / "0" / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # preempt (SIGUSR2, as SLURM would) after epoch 2
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            tasks = _submitit_local_tasks(tmp_path)
            assert len(tasks) == 2
            for pid in tasks:
                os.kill(pid, signal.SIGUSR2)
            break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-3000:]
    run_dir = tmp_path / "0"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["epochs"] == 6
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 7))
    train_log = (run_dir / "train.log").read_text()
    logs = "".join(p.read_text() for p in tmp_path.glob(".submitit/*/*.out")) + train_log
    assert "stopping on SIGUSR2 after writing a checkpoint" in logs and "resumed at epoch" in logs
    assert "as rank 0 of 2" in train_log and "rank 1" not in train_log  # rank 1's lines: its console only
    assert len(list(tmp_path.glob("*/results.json"))) == 1  # both tasks, one run directory


@pytest.mark.slow
def test_every_rank_takes_a_command_that_ends_in_an_option(tmp_path):
    """Ranks other than 0 once had an override appended to their command line, after `--cfg job` here."""
    proc = _torchrun(2, [*TINY, f"hydra.run.dir={tmp_path}", "--cfg", "job"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run_dir: ${hydra:runtime.output_dir}") == 2  # each rank printed the config


@pytest.mark.slow
def test_a_standalone_launch_without_a_run_dir_is_refused_on_every_rank(monkeypatch):
    """torchrun --standalone names every launch with a fresh uuid: outputs/torchrun/<it> would never be
    found again by a relaunch, so both ranks refuse in one line before writing anything."""
    for key in ("RECTNET_RUN_DIR", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    proc = _torchrun(2, TINY)
    assert proc.returncode != 0
    assert proc.stderr.count("ConfigError: a 2-process launch needs a run directory named after its job") == 2
    assert "default_run_dir" not in proc.stderr  # no rank's traceback (torchrun prints its own summary)


@pytest.mark.slow
def test_two_node_rendezvous_on_one_machine(tmp_path):
    """Two torchrun agents (--nnodes=2, c10d rendezvous) as two nodes would run them."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=rectnet-test",
               str(ROOT / "train.py"), *DDP_RUN, "trainer.batch_size=32", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True) for _ in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-2000:] + outputs[1][-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["final"]["count"] == 201
