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
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # helpers: the tiny image folder
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, however this file is loaded

import torch  # noqa: E402
from gpu_launch import Check, Failed, Launch, Row, Stage, rank_env, settings_of  # noqa: E402
from gpu_stages import (  # noqa: E402
    SYNC_LOG_EVERY,
    SYNC_STEPS,
    check_compile,
    check_eval,
    check_host_syncs,
    check_imagenet,
    check_nan,
    check_ranks_agree,
    check_reference,
    check_resume,
    check_stop,
    check_throughput,
    eval_command,
    train_flops_per_image,
)

# 400 steps of 128 over 2 epochs, and 300 for nccl_1rank's longer run (38400 images)
CIFAR = ["model=convpool_cnn_c", "trainer.epochs=2", "trainer.max_steps_per_epoch=200", "logger=none"]
CIFAR += ["trainer.progress=none", "trainer.device=cuda", "dataset.on_device=true", "trainer.channels_last=true"]
SYNTHETIC_CIFAR = ["dataset=synthetic", "dataset.image_size=32", "dataset.num_train=38400", "dataset.num_test=1000"]

# The torchrun stages' common settings. lr 0.002, no dropout: N processes then differ from one only by the order
# of floating-point sums (measured on the CPU stand-in: their weights 1.3e-6 apart, as a fraction of what the last
# epoch moved them), while one batch more or fewer per epoch moves them 0.36-0.42: --weight-tol's default 0.02
# sits between, and leaves room for the GPU's TF32 convolutions (10-bit products, ~5e-4 relative per rounding).
DDP = ["model.dropout=0", "schedule=constant", "optim.lr=0.002", "trainer.precision=fp32", "trainer.deterministic=true"]
DDP += ["trainer.epochs=2", "trainer.progress=none", "logger=none"]
# An lr that overflows fp32 (3.4e38) within a few steps whatever the gradients: even with every ReLU dead the last
# layer's bias grows by ~lr per step. lr=1e6 need not: with dead ReLUs its loss only grows, finite.
DIVERGING_LR = "optim.lr=1e38"
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
