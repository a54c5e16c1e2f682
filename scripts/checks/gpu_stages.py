"""What gpu_check.py's stages check: what runs produce (their epochs, weights, results against ddp_1rank's), each
stage's check (`check_*`: runs it through gpu_launch.py, then fills its Row) and the stages that run in this
process (throughput, host syncs, FLOPs per image)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from gpu_launch import (
    ROOT,
    Check,
    Failed,
    Launch,
    Row,
    Stage,
    compose_config,
    devices,
    exit_codes,
    last_line,
    rank_logs,
    run_launch,
    run_to_end,
    settings_of,
    training_processes,
)

# Dense peak TFLOP/s (no sparsity) by device-name substring: bf16/fp16 tensor cores, and fp32 (no TF32).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}
# nccl_1rank: runs of these lengths share every read outside the training steps (first step, epoch end,
# checkpoint, evaluation), so the difference of their counts is what the steps themselves cost
SYNC_STEPS = (100, 300)
SYNC_LOG_EVERY = 50
STOP_SIGNAL = signal.SIGUSR1


# ---------------------------------------------------------------------------------------- what runs produce


def epochs(run_dir: Path) -> list[dict]:
    from rectnet.engine.run_log import read_jsonl

    return read_jsonl(run_dir / "metrics.jsonl")


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True, map_location="cpu")["model"]


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).square().sum()) for k in a))


def compare(check: Check, stage: Stage, row: Row, run_dir: Path, results: dict) -> None:
    """A run's final weights and test error against ddp_1rank's. The weights' distance is a fraction of how far
    the reference's last epoch moved its own (last.pt from prev.pt): scale-free, and one batch more or fewer is
    ~0.4 of it (see DDP)."""
    reference = check.run_dir("ddp_1rank")
    ref = weights(reference)
    moved = distance(ref, weights(reference, "prev.pt"))
    row.at_most("weight_disagreement", distance(weights(run_dir), ref) / moved, stage.params["weight_tol"])
    ref_final = json.loads((reference / "results.json").read_text())["final"]
    row["top1_err"], row["top1_err_1rank"] = results["final"]["top1_err"], ref_final["top1_err"]
    difference = abs(row["top1_err"] - row["top1_err_1rank"])
    row.at_most("top1_err_difference", difference, stage.params["max_error_difference"])
    row.require(results["final"]["count"] == ref_final["count"], f"{results['final']['count']} test images counted")


def summarize(row: Row, launch: Launch, results: dict) -> None:
    """What every finished torchrun stage reports: processes, batches, losses (finite), images/s of the last epoch."""
    records = epochs(launch.run_dir)
    row |= {"nproc": launch.nproc, "world_size": results["world_size"]}
    row |= {k: results["hparams"][k] for k in ("global_batch", "batch_per_process")}
    row["train_loss"] = [round(r["train/loss"], 5) for r in records]
    row["images_per_s"] = round(records[-1]["train/images_per_s"], 1)
    row.require(results["world_size"] == launch.nproc, f"ran as {results['world_size']} process(es)")
    row.require(all(map(math.isfinite, row["train_loss"])), "a training loss is not finite")


def expected_devices(launch: Launch) -> list[str]:
    """cuda:LOCAL_RANK for each rank of a GPU run, the CPU for the stand-in's."""
    cuda = "trainer.device=cuda" in launch.overrides
    return [f"cuda:{r}" if cuda else "cpu" for r in range(launch.nproc)]


# ------------------------------------------------------------------------------------- the stages' checks


def check_reference(check: Check, stage: Stage, row: Row) -> None:
    (launch,) = stage.launches
    summarize(row, launch, run_to_end(check, launch))


def check_ranks_agree(check: Check, stage: Stage, row: Row) -> None:
    (launch,) = stage.launches
    results = run_to_end(check, launch)
    summarize(row, launch, results)
    row["devices"] = devices(launch)
    row.require(row["devices"] == expected_devices(launch), "the ranks do not each train on their own device")
    compare(check, stage, row, launch.run_dir, results)
    one = epochs(check.run_dir("ddp_1rank"))[-1]["train/images_per_s"]
    row["images_per_s_1rank"] = round(one, 1)
    scaling = stage.params["min_scaling"]
    minimum = None if scaling is None or launch.nproc == 1 else scaling * launch.nproc  # 1 against 1: none
    row.at_least("speedup", row["images_per_s"] / one, minimum)


def check_imagenet(check: Check, stage: Stage, row: Row) -> None:
    from helpers import make_image_folder

    (launch,) = stage.launches
    classes, train, val, size = stage.params["sample"]
    make_image_folder(launch.run_dir.parent / "imagenet_sample", classes=classes, train=train, val=val, size=size)
    results = run_to_end(check, launch)
    summarize(row, launch, results)
    row["devices"], row["count"] = devices(launch), results["final"]["count"]
    row.require(row["devices"] == expected_devices(launch), "the ranks do not each train on their own device")
    row.require(row["count"] == classes * val, f"{row['count']} of {classes * val} validation images scored")


def check_eval(check: Check, stage: Stage, row: Row) -> None:
    run_dir = check.run_dir("ddp_imagenet")
    proc = subprocess.run(
        eval_command(run_dir, stage.params["eval"]), cwd=ROOT, capture_output=True, text=True,
        timeout=max(1.0, check.deadline - time.monotonic()),
    )  # fmt: skip
    if proc.returncode != 0:
        raise Failed(f"eval.py exited {proc.returncode}: {last_line(proc.stderr)}")
    protocol = stage.params["eval"][0].split("=")[1]
    result = json.loads((run_dir / f"eval_{protocol}.json").read_text())
    row |= {k: result[k] for k in ("images_per_s", "top1_err", "count")}


def eval_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "eval.py"), f"run_dir={run_dir}", *overrides]


# what every rank must print as its last line (the error names every rank whose loss was not finite)
NONFINITE = re.compile(
    r"NonFiniteLossError: training loss is not finite on rank\(s\) \[[\d, ]+\] at epoch \d+, step \d+"
)


def check_nan(check: Check, stage: Stage, row: Row) -> None:
    """Launched as srun would (launcher "ranks"): under torchrun the agent stops every rank once one has ended,
    so neither each rank's own end nor a hang (a rank left alone in a collective) could show."""
    (launch,) = stage.launches
    start = time.monotonic()
    row["exit_codes"] = run_launch(check, launch)
    row |= {"nproc": launch.nproc, "seconds": round(time.monotonic() - start, 1), "timeout_s": launch.timeout_s}
    logs = sorted(rank_logs(launch).items())
    ends = {rank: last_line(log) for rank, log in logs}
    row.require(row["exit_codes"] == [1] * launch.nproc, f"not every rank ended with status 1; last lines: {ends}")
    messages = [NONFINITE.findall(log) for _, log in logs]
    row["message"] = messages[0][0] if messages and messages[0] else None
    row.require(
        bool(row["message"]) and messages == [[row["message"]]] * launch.nproc,
        f"not every rank raised the same NonFiniteLossError once: {messages}",
    )
    row.require(not (launch.run_dir / "checkpoints" / "last.pt").exists(), "a checkpoint was written")


def check_stop(check: Check, stage: Stage, row: Row) -> None:
    (launch,) = stage.launches
    target = launch.nproc - 1
    row |= {"nproc": launch.nproc, "signalled_local_rank": target, "signal": STOP_SIGNAL.name}
    (status,) = run_launch(check, launch, lambda agent: signal_after_first_epoch(agent, launch, target))
    row.require(status != 0, "the run finished: the stop did not take effect")
    # Each rank logs its stop right after the checkpoint (the exit statuses: those torchrun saw before stopping
    # the ranks that were still ending). A rank that learnt of the stop from the others names the signal and
    # the rank that received it.
    row["exit_codes"] = exit_codes(launch)
    logs = sorted(rank_logs(launch).items())
    stops = {
        r: re.findall(r"stopping on (SIG\w+(?: \(received by rank\(s\) [\d, ]+\))?) after writing", log)
        for r, log in logs
    }
    row["stops"] = stops
    row.require(len(stops) == launch.nproc and all(stops.values()), "not every rank logged its stop")
    row.require(stops.get(target) == [STOP_SIGNAL.name], f"rank {target} did not stop on {STOP_SIGNAL.name}")
    told = f"{STOP_SIGNAL.name} (received by rank(s) {target})"
    row.require(all(stops[r] == [told] for r in stops if r != target), f"the other ranks did not stop on {told}")
    last = launch.run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise Failed("no checkpoints/last.pt")
    saved = torch.load(last, weights_only=True, map_location="cpu")
    row |= {"checkpoint_epoch": saved["epoch"], "checkpoint_step": saved["step"], "position": saved["position"]}
    row.require(saved["step"] > 0, "last.pt is not a mid-epoch state (step 0)")


def signal_after_first_epoch(proc: subprocess.Popen, launch: Launch, local_rank: int) -> None:
    """Find the training processes, wait for epoch 1's line in metrics.jsonl and send the stop signal to the rank
    of `local_rank` alone: every rank must learn it from the ranks' agreement."""
    metrics, deadline = launch.run_dir / "metrics.jsonl", time.monotonic() + launch.timeout_s
    ranks: dict[int, int] = {}
    while len(ranks) < launch.nproc and proc.poll() is None and time.monotonic() < deadline:
        ranks = training_processes(launch.run_dir)  # before epoch 1 ends: the signal then goes out at once
        time.sleep(0.05)
    if local_rank not in ranks:
        raise Failed(f"no training process of LOCAL_RANK {local_rank} found in /proc (found {sorted(ranks)})")
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and metrics.read_text().count("\n") >= 1:
            os.kill(ranks[local_rank], STOP_SIGNAL)
            return
        time.sleep(0.005)
    raise Failed("the run ended (or ran out of time) before epoch 1 was logged and the signal sent")


def check_resume(check: Check, stage: Stage, row: Row) -> None:
    (launch,) = stage.launches
    results = run_to_end(check, launch)
    summarize(row, launch, results)
    row["resumed_from"] = results["resumed_from"]
    before = check.stages["ddp_stop"].launches[0].nproc
    resumed = results["resumed_from"][-1] if results["resumed_from"] else {}
    row.require(resumed.get("world_size") == [before, 1], f"not a resume from {before} process(es) on 1")
    row.require(resumed.get("position") == resumed.get("step", 0) * row["global_batch"] > 0, "not mid-epoch")
    row.require([r["epoch"] for r in epochs(launch.run_dir)] == [1, 2], "metrics.jsonl does not hold epochs 1, 2")
    compare(check, stage, row, launch.run_dir, results)


def check_compile(check: Check, stage: Stage, row: Row) -> None:
    (launch,) = stage.launches
    results = run_to_end(check, launch)
    summarize(row, launch, results)
    row["first_epoch_s"] = epochs(launch.run_dir)[0]["time_s"]  # a cold compile's minutes are here
    row.require(row["train_loss"][-1] < row["train_loss"][0], "the training loss did not fall: it does not learn")
    compare(check, stage, row, launch.run_dir, results)
    eager = epochs(check.run_dir("ddp_nranks"))[-1]["train/images_per_s"]
    row["images_per_s_eager"] = round(eager, 1)
    row.at_least("compile_ratio", row["images_per_s"] / eager, stage.params["min_compile_ratio"])


# ------------------------------------------------------------------------------ the stages in this process


def run_in_process(launch: Launch) -> dict:
    from rectnet.engine.train import run

    results = run(compose_config(launch))
    losses = [r["train/loss"] for r in epochs(launch.run_dir)]
    if results["final"]["count"] == 0 or not all(map(math.isfinite, losses)):
        raise Failed(f"{launch.name}: {results['final']['count']} images tested, training losses {losses}")
    return results


def check_throughput(check: Check, stage: Stage, row: Row) -> None:
    from rectnet.engine.runtime import resolve_precision

    (launch,) = stage.launches
    run_in_process(launch)
    settings = settings_of(launch)
    precision = resolve_precision(settings.trainer.precision, torch.device("cuda", 0))[0]
    records = epochs(launch.run_dir)
    images_per_s = records[-1]["train/images_per_s"]
    achieved = images_per_s * train_flops_per_image(settings) / 1e12
    device = torch.cuda.get_device_name()
    peak = next((p.get(precision) for key, p in PEAK_TFLOPS.items() if key in device), None)
    row |= {"device": device, "precision": precision, "first_epoch_s": records[0]["time_s"]}
    row.at_least("images_per_s", images_per_s, stage.params.get("min_images_per_s"))
    row |= {"achieved_tflops": round(achieved, 3), "peak_tflops": peak}
    row |= {"fraction_of_peak": round(achieved / peak, 4) if peak else None, "final_loss": records[-1]["train/loss"]}


def check_host_syncs(check: Check, stage: Stage, row: Row) -> None:
    counts = [count_host_syncs(launch) for launch in stage.launches]
    row |= {"steps": list(SYNC_STEPS), "host_syncs": counts, "log_every_steps": SYNC_LOG_EVERY}
    # The steps themselves read the device once per log interval: 1/50 per step. The first step, the epoch end,
    # the checkpoint and evaluation read it too, as often in both runs (shown: whole runs per step). The maximum
    # allows five reads per interval; a read in every step (a loss's .item(), a bool of a flag) gives 1 or more.
    row["expected_per_step"] = 1 / SYNC_LOG_EVERY
    row["whole_run_per_step"] = [round(c / s, 3) for c, s in zip(counts, SYNC_STEPS, strict=True)]
    per_step = (counts[1] - counts[0]) / (SYNC_STEPS[1] - SYNC_STEPS[0])
    row.at_most("host_syncs_per_step", per_step, stage.params["max_syncs_per_step"])


def count_host_syncs(launch: Launch) -> int:
    """Host synchronizations of a whole run in a 1-rank NCCL group, which run() takes (DDP, NCCL sums and agreed
    flags) and destroys at its end."""
    import torch.distributed as dist

    launch.logs.mkdir(parents=True, exist_ok=True)
    store = launch.logs / "nccl_store"
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_in_process(launch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def train_flops_per_image(settings) -> float:
    """Forward FLOPs of one image (torch's FLOP counter, on the CPU) times 3: forward, and a backward of
    about twice the forward's cost."""
    from torch.utils.flop_counter import FlopCounterMode

    from rectnet.models.build import build_model

    model = build_model(settings, settings.dataset.num_classes, 3).eval()
    size = settings.dataset.image_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return 3.0 * counter.get_total_flops()
