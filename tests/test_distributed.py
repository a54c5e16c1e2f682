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


# 201 test images: not divisible by 2 ranks, so padding or dropping would show in the counts
DDP_RUN = [*TINY, "dataset.num_test=201", "trainer.epochs=2"]


def test_two_ranks_follow_the_one_rank_run(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_cli([*DDP_RUN, "trainer.batch_size=64", f"hydra.run.dir={one}"])
    assert single.returncode == 0, single.stderr[-2000:]
    double = _torchrun(2, [*DDP_RUN, "trainer.batch_size=32", f"hydra.run.dir={two}"])
    assert double.returncode == 0, double.stderr[-3000:]

    a, b = _weights(one), _weights(two)
    for key in a:  # same global batches: equal up to floating-point summation order
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert r1["final"]["count"] == r2["final"]["count"] == 201
    assert r1["final"]["top1_err"] == pytest.approx(r2["final"]["top1_err"])
    assert r2["world_size"] == 2 and r2["hparams"]["global_batch"] == 64
    # rank 0 alone writes: TensorBoard files of one process (name: ...tfevents.<time>.<host>.<pid>.<n>)
    assert len({p.name.split(".")[-2] for p in (two / "tb").glob("events.out.tfevents.*")}) == 1
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2
    assert "[rank 1/2]" in double.stdout + double.stderr


def test_kill_9_mid_epoch_then_resume_is_bitwise_exact(tmp_path):
    args = [*TINY, "model.dropout=0.3", "trainer.epochs=3", "trainer.batch_size=16", "trainer.checkpoint_every_steps=4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_cli([*args, f"hydra.run.dir={straight}"]).returncode == 0

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={killed}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill at the first mid-epoch save of epoch 2
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") >= 1 and last.exists():
            state = torch.load(last, weights_only=True) if last.stat().st_size else None
            if state and state["step"] > 0:
                os.kill(proc.pid, signal.SIGKILL)
                break
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
