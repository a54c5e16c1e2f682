"""scripts/checks/gpu_check.py on a CPU machine: its CPU stand-in (the multi-process stages with gloo), its failure
reports and the killing of a launch that outlives its timeout. Its --dry-run: tests/test_gpu_paths.py."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT, TINY

STANDIN_STAGES = ["ddp_1rank", "ddp_nranks", "ddp_imagenet", "ddp_nan", "ddp_stop", "ddp_resume"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "checks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_launch(gpu_check):
    """The sibling module gpu_check.py imported (it puts its own folder on sys.path): Stage, Launch, launching."""
    return importlib.import_module("gpu_launch")


def _check(gpu_launch, stages, budget_s: float = 300):
    args = argparse.Namespace(budget_s=budget_s)
    return gpu_launch.Check({s.name: s for s in stages}, args, time.monotonic() + budget_s)


def test_a_failing_stage_says_why_and_the_stages_that_need_it_fail_too(gpu_check, gpu_launch):
    def missed(check, stage, row):
        row.at_most("weight_disagreement", 0.5, 0.02)
        row.at_least("speedup", 0.9, None)  # no threshold (the CPU stand-in's): shown, not checked

    def broken(check, stage, row):
        raise KeyError("final")

    stages = [
        gpu_launch.Stage("ddp_nranks", missed),
        gpu_launch.Stage("ddp_compile", lambda check, stage, row: None, needs=("ddp_1rank", "ddp_nranks")),
        gpu_launch.Stage("ddp_imagenet", broken),
    ]
    check = _check(gpu_launch, stages)
    check.passed.add("ddp_1rank")
    rows = [gpu_check.run_stage(check, stage) for stage in stages]
    assert rows[0]["ok"] is False and rows[0]["reason"] == "weight_disagreement 0.5 is above the maximum 0.02"
    assert (rows[0]["weight_disagreement"], rows[0]["max_weight_disagreement"]) == (0.5, 0.02)
    assert (rows[0]["speedup"], rows[0]["min_speedup"]) == (0.9, None)
    assert rows[1]["reason"] == "needs ddp_nranks, which did not pass"
    assert rows[2]["reason"].startswith("KeyError: 'final' (File ") and "in broken" in rows[2]["reason"]
    assert check.passed == {"ddp_1rank"} and all("wall_s" in row for row in rows)


def test_no_stage_starts_once_the_budget_is_spent(gpu_check, gpu_launch):
    row = gpu_check.run_stage(_check(gpu_launch, [], budget_s=-1), gpu_launch.Stage("ddp_1rank", None))
    assert row["reason"] == "not started: the time budget (--budget-s -1) is spent"


@pytest.mark.slow
def test_a_torchrun_launch_that_outlives_its_timeout_is_killed_with_its_ranks(gpu_launch, tmp_path):
    """torchrun starts every rank in a session of its own: killing the agent's group alone left them running."""
    run_dir = tmp_path / "run"
    launch = gpu_launch.Launch(
        "slow", "torchrun", 2, (*TINY, "trainer.epochs=50"), run_dir, tmp_path / "logs", timeout_s=1
    )
    seen = []

    def wait_for_the_ranks(agent):  # past the launch's 1 s: it is then killed at once
        while len(seen) < 2 and agent.poll() is None:
            seen[:] = gpu_launch.training_processes(run_dir).values()
            time.sleep(0.1)

    with pytest.raises(gpu_launch.Failed, match=r"slow: still running after 1 s \(its timeout: a hang\?\); killed"):
        gpu_launch.run_launch(_check(gpu_launch, []), launch, wait_for_the_ranks)
    assert len(seen) == 2 and gpu_launch.training_processes(run_dir) == {}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="finds the ranks through /proc")
def test_the_cpu_standin_runs_every_multi_process_stage_on_two_ranks(gpu_launch, tmp_path):
    """Launching, the per-rank logs, SIGUSR1 to LOCAL_RANK 1 alone, the comparisons and the report, as a GPU node
    runs them, with gloo and tiny sizes (about 2 minutes on 2 cores)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-standin", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, [row for row in rows if not row.get("ok", True)] + [proc.stderr[-2000:]]
    machine, stages, summary = rows[0], {row["stage"]: row for row in rows[1:-1]}, rows[-1]
    assert machine["cpu_standin"] and machine["nproc"] == 2 and summary == {**summary, "ok": True, "failed": []}
    assert list(stages) == STANDIN_STAGES and all(row["ok"] for row in stages.values())

    nranks = stages["ddp_nranks"]
    assert nranks["devices"] == ["cpu", "cpu"] and (nranks["batch_per_process"], nranks["global_batch"]) == (16, 32)
    assert nranks["weight_disagreement"] < 1e-3 and nranks["min_speedup"] is None  # thresholds off
    nan = stages["ddp_nan"]
    assert nan["exit_codes"] == [1, 1]
    assert nan["message"].startswith("NonFiniteLossError: training loss is not finite on rank(s) [0, 1] at epoch 1")
    stop = stages["ddp_stop"]
    assert stop["signalled_local_rank"] == 1 and stop["stops"]["1"] == ["SIGUSR1"] and len(stop["stops"]) == 2
    assert stop["checkpoint_step"] > 0 and stop["position"] == stop["checkpoint_step"] * 32
    resume = stages["ddp_resume"]
    assert [r["world_size"] for r in resume["resumed_from"]] == [[2, 1]] and resume["weight_disagreement"] < 1e-3
    assert gpu_launch.training_processes(tmp_path / "ddp_stop") == {}
