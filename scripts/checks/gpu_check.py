"""The CUDA and cluster paths on one GPU node in under 9 minutes: what scripts/gpu_check.sh runs.

    python scripts/checks/gpu_check.py [--dry-run] [--cpu-standin] [--out DIR] [--cifar-root DIR] [--gpus N]
                                       [--budget-s S] [thresholds: --help]

One JSON line per stage on stdout: "ok" (false: "reason" says why), the measured figures beside their thresholds
(min_<figure> / max_<figure>) and the stage's wall_s; a first line describes the machine, a last one sums up.
Exit status 1 when any stage failed. N = every visible GPU (torch.cuda.device_count()), or --gpus N.

In this process, on GPU 0 (CIFAR-shaped data held on the GPU, channels_last, 2 epochs of 200 steps of 128;
images/s of the second epoch, so cuDNN autotuning and first calls do not count):
  cifar_bf16 / _fp16 / _fp32  bf16 must reach --min-bf16-images-per-s; real CIFAR-10 with --cifar-root
  nccl_1rank          a 1-rank NCCL group (DDP, NCCL sums and flags) under torch.cuda.set_sync_debug_mode("warn"):
                      the host syncs that 200 more steps add, per step, at most --max-syncs-per-step
  cifar_auto_compile  torch.compile in one process (CUDA graphs), from a cold compile cache
Under `torchrun --standalone --nproc_per_node=N train.py`: deterministic fp32 CIFAR-shaped runs, 2 epochs of 50
steps, global batch 32 x N on N processes and on 1:
  ddp_1rank           the 1-process run the others are compared with
  ddp_nranks          N processes, each on cuda:LOCAL_RANK: ddp_1rank's final weights (within --weight-tol) and
                      test error (--max-error-difference); images/s at least --min-scaling x N x ddp_1rank's
  ddp_imagenet        a generated ImageFolder sample through decoding workers on N processes under NCCL
  eval_*              eval.py's protocols (center, ten_view, dense) on ddp_imagenet's checkpoint
  ddp_nan             a run made to diverge, its N processes started as srun starts them (no agent to stop them):
                      every rank ends by itself, status 1, with the same NonFiniteLossError line and no checkpoint,
                      within the launch's timeout
  ddp_stop            SIGUSR1 to the process of LOCAL_RANK N-1 only, once epoch 1 is logged: every rank logs its
                      stop and last.pt holds a mid-epoch state (step > 0)
  ddp_resume          that run resumed on 1 process (torchrun --nproc_per_node=1) to its end: ddp_1rank's weights
                      and test error, within the same tolerances
  ddp_compile         ddp_nranks under trainer.compile=true (DDP under torch.compile) from a cold compile cache:
                      learns, ddp_1rank's weights, second-epoch images/s at least --min-compile-ratio x ddp_nranks'
With N = 1 every stage still runs (ddp_nranks and ddp_stop on 1 process; no scaling threshold). The compile
stages come last: a cold cache (TORCHINDUCTOR_CACHE_DIR, emptied in --out) costs minutes, and when --budget-s
is spent, only they are lost.

--dry-run (no GPU needed): composes and validates every stage's config as its processes see it (the batch of
each of N processes, TrainerConfig.batch_sizes(N); N = 8 where there is no GPU), prints the commands it would
run and exits 0.
--cpu-standin: the multi-process stages (not eval_*, nor ddp_compile, whose CPU compile alone takes two minutes
here) with gloo on the CPU, N = 2, tiny sizes, throughput thresholds off: a check of this script's launching,
signalling, comparing and reporting, not of CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # helpers: the tiny image folder

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import rectnet.config  # noqa: E402,F401  (registers the schema)

# Dense peak TFLOP/s (no sparsity) by device-name substring: bf16/fp16 tensor cores, and fp32 (no TF32).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}
# 400 steps of 128 over 2 epochs, and 300 for nccl_1rank's longer run (38400 images)
CIFAR = ["model=convpool_cnn_c", "trainer.epochs=2", "trainer.max_steps_per_epoch=200", "logger=none"]
CIFAR += ["trainer.progress=none", "trainer.device=cuda", "dataset.on_device=true", "trainer.channels_last=true"]
SYNTHETIC_CIFAR = ["dataset=synthetic", "dataset.image_size=32", "dataset.num_train=38400", "dataset.num_test=1000"]
# nccl_1rank: runs of these lengths share every read outside the training steps (first step, epoch end,
# checkpoint, evaluation), so the difference of their counts is what the steps themselves cost
SYNC_STEPS = (100, 300)
SYNC_LOG_EVERY = 50

# The torchrun stages' common settings. lr 0.002, no dropout: N processes then differ from one only by the order
# of floating-point sums (measured on the CPU stand-in: their weights 1.3e-6 apart, as a fraction of what the last
# epoch moved them), while one batch more or fewer per epoch moves them 0.36-0.42: --weight-tol's default 0.02
# sits between, and leaves room for the GPU's TF32 convolutions (10-bit products, ~5e-4 relative per rounding).
DDP = ["model.dropout=0", "schedule=constant", "optim.lr=0.002", "trainer.precision=fp32", "trainer.deterministic=true"]
DDP += ["trainer.epochs=2", "trainer.progress=none", "logger=none"]
# An lr that overflows fp32 (3.4e38) within a few steps whatever the gradients: even with every ReLU dead the last
# layer's bias grows by ~lr per step. lr=1e6 need not: with dead ReLUs its loss only grows, finite.
DIVERGING_LR = "optim.lr=1e38"
STOP_SIGNAL = signal.SIGUSR1
COMPILE_TIMEOUT_S = 360  # ddp_compile's launch: N processes compiling from a cold cache
EVALS = {  # eval.py on ddp_imagenet's checkpoint, one process
    "center": ["eval.protocol=center"],
    "ten_view": ["eval.protocol=ten_view"],
    "dense": ["eval.protocol=dense", "eval.scales=[256]"],
}


@dataclass(frozen=True)
class Scale:
    """The torchrun stages' sizes: a GPU node's, or the CPU stand-in's (gloo, tiny: a check of this script)."""

    device: str
    cifar: tuple[str, ...]  # model and data of the CIFAR-shaped runs
    batch_per_process: int  # the global batch is this x N, for the 1-process runs too
    steps: int  # per epoch
    log_every: int  # how soon a stop signal takes effect (steps)
    imagenet: tuple[str, ...]
    imagenet_batch_per_process: int
    imagenet_sample: tuple[int, int, int, tuple[int, int]]  # make_image_folder: classes, train, val, (w, h)
    timeout_s: int  # one launch


GPU = Scale(
    device="cuda",
    cifar=("dataset=synthetic", "dataset.image_size=32", "dataset.num_test=1000", "model=convpool_cnn_c",
           "dataset.on_device=true", "trainer.channels_last=true"),
    # 32 per GPU: enough work that N GPUs' images/s measures the GPUs, not kernel-launch latency
    batch_per_process=32,
    steps=50,
    log_every=5,
    imagenet=("experiment=small14_prelu", "dataset.num_classes=4", "dataset.image_size=224", "dataset.scale_min=256",
              "dataset.scale_max=256", "dataset.stats_images=16", "dataset.num_test=null", "dataset.workers=4",
              "eval.size=256", "eval.scales=[256]", "trainer.epochs=1", "logger=none", "trainer.progress=none",
              "trainer.precision=auto"),
    imagenet_batch_per_process=8,
    imagenet_sample=(4, 64, 8, (320, 288)),
    timeout_s=180,
)  # fmt: skip
CPU_STANDIN = Scale(
    device="cpu",
    cifar=("dataset=synthetic", "dataset.image_size=16", "dataset.num_test=200", "model=convpool_cnn_c",
           "model.width=0.125"),
    batch_per_process=16,
    steps=12,
    log_every=2,
    imagenet=("experiment=small14_prelu", "dataset.num_classes=2", "dataset.image_size=48", "dataset.scale_min=56",
              "dataset.scale_max=56", "dataset.stats_images=8", "dataset.num_test=null", "dataset.workers=1",
              "eval.size=56", "eval.scales=[56]", "model.width=0.125", "trainer.epochs=1", "logger=none",
              "trainer.progress=none", "trainer.precision=fp32"),
    imagenet_batch_per_process=4,
    imagenet_sample=(2, 16, 4, (64, 56)),
    timeout_s=150,
)  # fmt: skip


class Failed(Exception):
    """A stage cannot go on: its launch failed or hung, or a stage it needs failed."""


class Row(dict):
    """A stage's JSON line: its figures, and why it failed (none: "ok": true)."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage=stage)
        self.failures: list[str] = []

    def require(self, condition: bool, reason: str) -> None:
        if not condition:
            self.failures.append(reason)

    def at_least(self, key: str, value: float, minimum: float | None) -> None:
        """The figure beside its threshold (None: not checked, as on the CPU stand-in)."""
        self[key], self[f"min_{key}"] = round(value, 4), minimum
        self.require(minimum is None or value >= minimum, f"{key} {value:.4g} is below the minimum {minimum}")

    def at_most(self, key: str, value: float, maximum: float) -> None:
        self[key], self[f"max_{key}"] = float(f"{value:.4g}"), maximum
        self.require(value <= maximum, f"{key} {value:.4g} is above the maximum {maximum}")


@dataclass(frozen=True)
class Launch:
    """One training run of `nproc` processes, started by `launcher`:
    "torchrun"    torchrun --standalone: its agent starts the ranks, and stops them all once one has ended;
    "ranks"       every rank on its own with the environment torchrun gives it, as srun starts them: no agent
                  stops the others, so each rank's own end shows (its status and last line, or a hang);
    "in_process"  run() in this process, for the CUDA stages that look into it (one process)."""

    name: str
    launcher: str
    nproc: int
    overrides: tuple[str, ...]
    run_dir: Path
    logs: Path  # each rank's stdout.log and stderr.log in a folder named by its local rank; torchrun.log
    timeout_s: int

    def command(self) -> list[str]:
        train = [str(ROOT / "train.py"), *self.overrides, f"hydra.run.dir={self.run_dir}"]
        if self.launcher == "ranks":
            return [sys.executable, *train]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                "--redirects=3", f"--log-dir={self.logs}", *train]  # fmt: skip


@dataclass
class Stage:
    name: str
    check: Callable[[Check, Stage, Row], None]
    launches: list[Launch] = field(default_factory=list)
    needs: tuple[str, ...] = ()  # stages whose runs this one reads or compares with
    params: dict = field(default_factory=dict)  # thresholds and the like, shown by --dry-run too


@dataclass
class Check:
    stages: dict[str, Stage]
    args: argparse.Namespace
    deadline: float  # time.monotonic() at which --budget-s is spent
    passed: set[str] = field(default_factory=set)

    def run_dir(self, stage: str) -> Path:
        return self.stages[stage].launches[0].run_dir

    def timeout(self, launch: Launch) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Failed(f"the time budget (--budget-s {self.args.budget_s}) is spent")
        return min(launch.timeout_s, left)


# ------------------------------------------------------------------------------------------------ the plan


def plan(args: argparse.Namespace, scale: Scale, nproc: int, out: Path) -> list[Stage]:
    """The stages in the order they run: on one GPU node, or (scale CPU_STANDIN) the multi-process ones on the CPU."""
    standin = scale is CPU_STANDIN
    # The 1-process runs (reference, resume) keep N processes' global batch: the same run on another GPU count.
    ddp = [*DDP, *scale.cifar, f"trainer.device={scale.device}", f"trainer.log_every_steps={scale.log_every}"]
    batch = scale.batch_per_process * nproc
    ddp += [f"trainer.batch_size={batch}", f"dataset.num_train={scale.steps * batch}"]
    imagenet = [*scale.imagenet, f"trainer.device={scale.device}", f"dataset.root={out / 'imagenet_sample'}"]
    imagenet += [f"trainer.batch_size={scale.imagenet_batch_per_process * nproc}"]

    def launch(name: str, n: int, overrides: list[str], run: str | None = None, **kwargs) -> Launch:
        """`n` processes under torchrun by default; 0: in this process."""
        kwargs.setdefault("timeout_s", scale.timeout_s)
        kwargs.setdefault("launcher", "torchrun" if n else "in_process")
        return Launch(name, nproc=n or 1, overrides=tuple(overrides), run_dir=out / (run or name),
                      logs=out / "logs" / name, **kwargs)  # fmt: skip

    agree = {"weight_tol": args.weight_tol, "max_error_difference": args.max_error_difference}
    stages = [
        Stage("ddp_1rank", check_reference, [launch("ddp_1rank", 1, ddp)]),
        Stage("ddp_nranks", check_ranks_agree, [launch("ddp_nranks", nproc, ddp)], ("ddp_1rank",),
              {**agree, "min_scaling": None if standin else args.min_scaling}),
        Stage("ddp_imagenet", check_imagenet, [launch("ddp_imagenet", nproc, imagenet)],
              params={"sample": scale.imagenet_sample}),
        *([] if standin else [Stage(f"eval_{protocol}", check_eval, [], ("ddp_imagenet",), {"eval": overrides})
                              for protocol, overrides in EVALS.items()]),
        Stage("ddp_nan", check_nan, [launch("ddp_nan", nproc, [*ddp, DIVERGING_LR], launcher="ranks")]),
        Stage("ddp_stop", check_stop, [launch("ddp_stop", nproc, ddp)]),
        Stage("ddp_resume", check_resume, [launch("ddp_resume", 1, ddp, run="ddp_stop")], ("ddp_1rank", "ddp_stop"),
              agree),
    ]  # fmt: skip
    if standin:
        return stages
    cifar = [*CIFAR, f"dataset.root={args.cifar_root}"] if args.cifar_root else [*CIFAR, *SYNTHETIC_CIFAR]
    syncs = [*cifar, "trainer.precision=auto", "trainer.epochs=1", f"trainer.log_every_steps={SYNC_LOG_EVERY}"]
    compiled = [*ddp, "trainer.compile=true"]
    return [
        Stage("cifar_bf16", check_throughput, [launch("cifar_bf16", 0, [*cifar, "trainer.precision=bf16"])],
              params={"min_images_per_s": args.min_bf16_images_per_s}),
        Stage("cifar_fp16", check_throughput, [launch("cifar_fp16", 0, [*cifar, "trainer.precision=fp16"])]),
        Stage("cifar_fp32", check_throughput, [launch("cifar_fp32", 0, [*cifar, "trainer.precision=fp32"])]),
        Stage("nccl_1rank", check_host_syncs,
              [launch(f"nccl_1rank_{s}", 0, [*syncs, f"trainer.max_steps_per_epoch={s}"]) for s in SYNC_STEPS],
              params={"max_syncs_per_step": args.max_syncs_per_step}),
        *stages,
        Stage("cifar_auto_compile", check_throughput,
              [launch("cifar_auto_compile", 0, [*cifar, "trainer.precision=auto", "trainer.compile=true"])]),
        Stage("ddp_compile", check_compile,
              [launch("ddp_compile", nproc, compiled, timeout_s=COMPILE_TIMEOUT_S)], ("ddp_1rank", "ddp_nranks"),
              {**agree, "min_compile_ratio": args.min_compile_ratio}),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- launching


def compose_config(launch: Launch):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*launch.overrides, f"run_dir={launch.run_dir}"])


def settings_of(launch: Launch):
    from rectnet.config import to_settings

    return to_settings(compose_config(launch))  # the validation a run does


def run_launch(check: Check, launch: Launch, during: Callable | None = None) -> list[int]:
    """Start `launch`, call `during` with its first process (torchrun's agent, or rank 0) and wait for its end:
    the exit status of each process started (the agent, or every rank). Everything it started is killed if it
    outlives its timeout or this script."""
    timeout = check.timeout(launch)
    deadline = time.monotonic() + timeout
    procs = start(launch)
    try:
        if during:
            during(procs[0])
        return [proc.wait(timeout=max(0.1, deadline - time.monotonic())) for proc in procs]
    except subprocess.TimeoutExpired:
        why = "its timeout: a hang?" if timeout == launch.timeout_s else "the end of --budget-s"
        raise Failed(f"{launch.name}: still running after {timeout:.0f} s ({why}); killed") from None
    finally:
        kill(launch, procs)


def kill(launch: Launch, procs: list[subprocess.Popen]) -> None:
    """Whatever of a launch still runs. torchrun starts each rank in a session of its own, which killing the agent
    leaves running: the ranks are found through /proc, and killed with their groups (data-loading workers)."""
    for pid in [*training_processes(launch.run_dir).values(), *(p.pid for p in procs if p.poll() is None)]:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile, or leads no group
            os.kill(pid, signal.SIGKILL)
            os.killpg(pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def start(launch: Launch) -> list[subprocess.Popen]:
    if launch.launcher == "torchrun":
        return [popen(launch.command(), launch.logs / "torchrun.log", None, {})]  # its ranks': --redirects
    with socket.socket() as s:  # a free port for the ranks' rendezvous (MASTER_PORT)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        popen(launch.command(), launch.logs / str(r) / "stdout.log", launch.logs / str(r) / "stderr.log",
              rank_env(r, launch.nproc, port))
        for r in range(launch.nproc)
    ]  # fmt: skip


def rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """What torchrun --standalone exports to each rank (one node), less its own run id."""
    sizes = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), **sizes, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def popen(command: list[str], stdout: Path, stderr: Path | None, env: dict[str, str]) -> subprocess.Popen:
    """A process in its own session (a group that `kill` ends with whatever it forked), writing to files (None:
    stderr into stdout's)."""
    stdout.parent.mkdir(parents=True, exist_ok=True)
    with open(stdout, "wb") as out, open(stderr or os.devnull, "wb") as err:
        return subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out,
            stderr=err if stderr else subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def run_to_end(check: Check, launch: Launch) -> dict:
    """Launch, require a clean end, and return its results.json."""
    statuses = run_launch(check, launch)
    if any(statuses):
        reason = last_line(rank_logs(launch).get(0, "")) or last_line(agent_output(launch))
        raise Failed(f"{launch.name} exited {statuses}: {reason}")
    return json.loads((launch.run_dir / "results.json").read_text())


def agent_output(launch: Launch) -> str:
    path = launch.logs / "torchrun.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def rank_logs(launch: Launch) -> dict[int, str]:
    """Each rank's console by local rank (torchrun puts it in <run id>/attempt_0/<local rank>/): stdout, then
    stderr, whose last line is a failed run's reason."""
    return {
        int(err.parent.name): err.with_name("stdout.log").read_text(errors="replace") + err.read_text(errors="replace")
        for err in launch.logs.rglob("stderr.log")
    }


def last_line(text: str) -> str:
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")


def exit_codes(launch: Launch) -> dict[int, int]:
    """{local rank: exit status} of the ranks that torchrun's failure summary lists: those that ended by themselves
    before the agent stopped the others."""
    found = re.findall(r"local_rank: (\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)", agent_output(launch))
    return {int(rank): int(code) for rank, code in sorted(found)}


def devices(launch: Launch) -> list[str]:
    """The device each rank says it trains on, by local rank (the log line "... N rank(s) on <device>")."""
    logs = rank_logs(launch)
    return [next(iter(re.findall(r"rank\(s\) on (\S+)", logs.get(r, ""))), "?") for r in range(launch.nproc)]


def training_processes(run_dir: Path) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the training processes (train.py under torchrun's agent) of the run in `run_dir`."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            if f"hydra.run.dir={run_dir}".encode() not in args or any(a.endswith(b".distributed.run") for a in args):
                continue
            environ = (cmdline.parent / "environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        local = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"LOCAL_RANK=")]
        if local:
            found[int(local[0])] = int(cmdline.parent.name)
    return found


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
    row.require(row["exit_codes"] == [1] * launch.nproc, "not every rank ended with status 1")
    messages = [NONFINITE.findall(log) for _, log in sorted(rank_logs(launch).items())]
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
    # the ranks that were still ending). A rank that learnt of the stop from the others says SIGTERM.
    row["exit_codes"] = exit_codes(launch)
    logs = sorted(rank_logs(launch).items())
    stops = {r: re.findall(r"stopping on (SIG\w+) after writing a checkpoint", log) for r, log in logs}
    row["stops"] = stops
    row.require(len(stops) == launch.nproc and all(stops.values()), "not every rank logged its stop")
    row.require(stops.get(target) == [STOP_SIGNAL.name], f"rank {target} did not stop on {STOP_SIGNAL.name}")
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


# --------------------------------------------------------------------------------------------- the driver


def run_stage(check: Check, stage: Stage) -> Row:
    row, start = Row(stage.name), time.monotonic()
    try:
        failed = [name for name in stage.needs if name not in check.passed]
        if failed:
            raise Failed(f"needs {', '.join(failed)}, which did not pass")
        if time.monotonic() > check.deadline:
            raise Failed(f"not started: the time budget (--budget-s {check.args.budget_s}) is spent")
        stage.check(check, stage, row)
    except Failed as err:
        row.failures.append(str(err))
    except Exception as err:  # a stage that breaks is reported as this stage's failure; the others still run
        where = traceback.format_exc(limit=-1).splitlines()[1].strip()  # the innermost frame: file, line, function
        row.failures.append(f"{type(err).__name__}: {err} ({where})")
    row["ok"] = not row.failures
    if row.failures:
        row["reason"] = "; ".join(row.failures)
    row["wall_s"] = round(time.monotonic() - start, 1)
    if row["ok"]:
        check.passed.add(stage.name)
    return row


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda_available": cuda,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "device": torch.cuda.get_device_name() if cuda else None,
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "bf16": torch.cuda.is_bf16_supported() if cuda else None,
        "nvidia_smi": shutil.which("nvidia-smi") is not None,
        "cxx": any(shutil.which(c) for c in ("g++", "clang++", "c++")),
    }


def describe(launch: Launch) -> dict:
    """A launch as its processes see it: the per-process and global batch of its world size, and what runs."""
    per_process, global_batch = settings_of(launch).trainer.batch_sizes(launch.nproc)
    row = {"launcher": launch.launcher, "nproc": launch.nproc, "batch_per_process": per_process}
    row |= {"global_batch": global_batch, "timeout_s": launch.timeout_s}
    if launch.launcher == "in_process":
        return row | {"overrides": list(launch.overrides)}
    if launch.launcher == "ranks":
        row["env_of_rank_r"] = rank_env(0, launch.nproc, 0) | {"RANK": "r", "LOCAL_RANK": "r", "MASTER_PORT": "free"}
    return row | {"command": shlex.join(launch.command())}


def dry_run(stages: list[Stage], nproc: int, standin: bool) -> int:
    print(json.dumps({"dry_run": True, "cpu_standin": standin, "nproc": nproc, **machine()}))
    by_name = {stage.name: stage for stage in stages}
    for stage in stages:
        row = {"stage": stage.name, "needs": list(stage.needs), **stage.params}
        row["launches"] = [describe(launch) for launch in stage.launches]
        if stage.launches:
            row["train_gflops_per_image"] = round(train_flops_per_image(settings_of(stage.launches[0])) / 1e9, 3)
        else:  # eval.py: its overrides checked against the config of the run it reads
            trained = by_name[stage.needs[0]].launches[0]
            settings_of(replace(trained, overrides=(*trained.overrides, *stage.params["eval"])))
            row["command"] = shlex.join(eval_command(trained.run_dir, stage.params["eval"]))
        print(json.dumps(row), flush=True)
    if not standin and not torch.cuda.is_available():
        print(f"no CUDA device here: every config composes for {nproc} GPUs; run without --dry-run on a GPU node",
              file=sys.stderr)  # fmt: skip
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="compose and print every stage; no GPU needed")
    parser.add_argument("--cpu-standin", action="store_true", help="the torchrun stages with gloo on the CPU, tiny")
    parser.add_argument("--out", type=Path, default=None, help="run directories (default: a temporary folder)")
    parser.add_argument("--cifar-root", default=None, help="real CIFAR-10 (dataset.root); synthetic without")
    parser.add_argument("--gpus", type=int, default=None, help="processes of the N-process stages (default: all)")
    parser.add_argument("--budget-s", type=float, default=540, help="no stage starts after this many seconds")
    thresholds = parser.add_argument_group("thresholds (a stage whose figure misses its threshold fails)")
    # 8000 images/s of ConvPool-CNN-C (2.389 GFLOP per training image) is 19 TFLOP/s: 6% of an A100's dense bf16
    # peak, 2% of an H100's or H200's. Below it the step waits on something other than the tensor cores.
    thresholds.add_argument("--min-bf16-images-per-s", type=float, default=8000, help="cifar_bf16 (default 8000)")
    # N GPUs at 32 images each against one at 32 x N: 0.3 x N is a third of linear scaling. N processes sharing
    # one GPU, or NCCL through host memory, stay near 1x.
    thresholds.add_argument("--min-scaling", type=float, default=0.3,
                            help="ddp_nranks: images/s >= this x N x ddp_1rank's (default 0.3)")  # fmt: skip
    # a graph recompiled in every step (a guard that keeps failing) shows as a fraction of eager speed
    thresholds.add_argument("--min-compile-ratio", type=float, default=0.5,
                            help="ddp_compile: second-epoch images/s >= this x ddp_nranks' (default 0.5)")  # fmt: skip
    thresholds.add_argument("--max-syncs-per-step", type=float, default=0.1,
                            help="nccl_1rank: host syncs per training step (default 0.1; expected 1/50)")  # fmt: skip
    thresholds.add_argument("--weight-tol", type=float, default=0.02,
                            help="distance to ddp_1rank's weights / its last epoch's move (default 0.02)")  # fmt: skip
    # 0.5 points: 5 of ddp's 1000 test images (1 of the stand-in's 200) may flip between runs that differ by
    # summation order alone: a barely trained net has many images near a decision boundary
    thresholds.add_argument("--max-error-difference", type=float, default=0.5,
                            help="test top-1 error points between a run and ddp_1rank (default 0.5)")  # fmt: skip
    return parser.parse_args()


def fresh_folders(stages: list[Stage], out: Path) -> None:
    """Every run directory, log folder and the compile cache start empty: a reused --out must not resume old runs,
    and every check compiles from a cold cache (the time the first compile on a new node really takes)."""
    for folder in {p for s in stages for launch in s.launches for p in (launch.run_dir, launch.logs)}:
        shutil.rmtree(folder, ignore_errors=True)
    cache = out / "inductor_cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)  # this process and every launch
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")


def main() -> int:
    args = parse_args()
    scale = CPU_STANDIN if args.cpu_standin else GPU
    nproc = args.gpus or (2 if args.cpu_standin else torch.cuda.device_count() or (8 if args.dry_run else 0))
    out = args.out or (Path(tempfile.gettempdir()) / "gpu_check" if args.dry_run else Path(tempfile.mkdtemp()))
    out = out.resolve()  # the ranks' run directories and cache, wherever they start
    stages = plan(args, scale, nproc, out)
    if args.dry_run:
        return dry_run(stages, nproc, args.cpu_standin)
    if not args.cpu_standin and not 1 <= nproc <= torch.cuda.device_count():
        print(f"gpu_check: {torch.cuda.device_count()} CUDA device(s) here; use --dry-run or --cpu-standin",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.cpu_standin:
        os.environ["OMP_NUM_THREADS"] = "1"  # a tiny run gains nothing from threads on two cores shared by ranks
    os.environ |= {"HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}  # each rank's error: one line, at once
    fresh_folders(stages, out)
    # `timeout` (gpu_check.sh) sends SIGTERM: end through SystemExit, so a running launch's processes are killed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(json.dumps({**machine(), "nproc": nproc, "cpu_standin": args.cpu_standin, "out": str(out)}), flush=True)
    start = time.monotonic()
    check = Check({s.name: s for s in stages}, args, start + args.budget_s)
    failed = []
    for stage in stages:
        row = run_stage(check, stage)
        print(json.dumps(row), flush=True)
        if not row["ok"]:
            failed.append(stage.name)
    wall_s = round(time.monotonic() - start, 1)
    print(json.dumps({"summary": True, "ok": not failed, "failed": failed, "wall_s": wall_s}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
