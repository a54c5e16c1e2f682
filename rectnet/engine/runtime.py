"""Device, precision, threads, determinism and seeding: everything about *where* a run executes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import platform
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from rectnet.config import ConfigError, TrainerConfig
from rectnet.layers import fused

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    device: torch.device
    precision: str
    scaler: torch.amp.GradScaler | None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])


def select_device(name: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """`auto`: this rank's GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU. `cuda`: cuda:LOCAL_RANK.

    `cuda:N` pins one GPU, which only a single process per node may do: under torchrun it would put every
    rank of the node on GPU N. One rule for GPU binding (configs/hydra/launcher/slurm.yaml): each process
    sees all of its node's GPUs and takes the one its local rank names.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"trainer.device={name!r} is not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto")
    if device.index is not None and local_world_size > 1:
        raise ConfigError(
            f"trainer.device={name} with {local_world_size} processes on this node would put them all on one GPU; "
            "use trainer.device=cuda (each rank takes cuda:LOCAL_RANK)"
        )
    index = local_rank if device.index is None else device.index
    visible = torch.cuda.device_count()
    if index >= visible:
        raise ConfigError(
            f"local rank {local_rank} needs cuda:{index} but this process sees {visible} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): every process must see all "
            "of its node's GPUs (no per-task gpu-bind; see configs/hydra/launcher/slurm.yaml)"
        )
    if local_world_size == 1 and visible > 1:  # not an error (a GPU may be left for other work), but say it
        log.info(
            "one process on this node runs on cuda:%d of the %d GPUs it sees; to use them all, launch one process "
            "per GPU: torchrun --nproc_per_node=%d train.py (or eval.py) ...",
            index,
            visible,
            visible,
        )
    return torch.device("cuda", index)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precisions this device cannot run; warn where it runs but slowly."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs a CUDA device (fp16 with a loss scaler); use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
    if precision == "bf16" and device.type == "cpu" and not native_bf16_flags():
        log.warning("trainer.precision=bf16 on a CPU without avx512_bf16/amx_bf16: emulated, far slower than fp32")


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as the kernel lists them (empty where there is no /proc/cpuinfo)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's model name as the kernel lists it (None where there is no /proc/cpuinfo)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def native_bf16_flags() -> list[str]:
    """The flags that make bf16 GEMMs fast on this CPU (oneDNN uses them); without them bf16 is emulated."""
    flags = cpu_flags()
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(the precision to run, why): `auto` picks bf16 autocast where the hardware computes bf16 natively
    (CUDA devices with bf16 support; CPUs with avx512_bf16 or amx_bf16: ~4x fp32 GEMM there, ~100x slower
    where it is emulated) and fp32 elsewhere."""
    if precision != "auto":
        return precision, "set by trainer.precision"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{name} supports bf16"
        return "fp32", f"{name} has no bf16 support"
    if device.type == "cpu":
        native = native_bf16_flags()
        if native:
            return "bf16", f"the CPU has native bf16 ({', '.join(native)})"
        return "fp32", "the CPU has no native bf16 (neither avx512_bf16 nor amx_bf16)"
    return "fp32", f"no bf16 policy for {device.type} devices"


def usable_cores() -> tuple[int, str]:
    """(cores this process may run on, where the figure comes from): its CPU affinity, capped by a cgroup
    v2 CPU quota (a container limited to 2 CPUs on a 64-core host sees 64 in os.cpu_count())."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    source = "CPU affinity"
    quota = cgroup_cpu_quota()
    if quota is not None and quota < cores:
        cores, source = quota, "cgroup cpu.max quota"
    return max(1, cores), source


def cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """CPUs allowed by a cgroup v2 quota ("200000 100000" -> 2, rounded up); None without a quota."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def rank_cores(local_ranks: int, env: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(cores this rank may count on, where the figure comes from), from usable_cores.

    Ranks that inherit one CPU set (torchrun's, or the local launcher's tasks) share it: each gets cores /
    local ranks. A Slurm task (SLURM_CPUS_PER_TASK set, outside torchrun) that Slurm bound to its own CPUs
    sees only those, all of them its own; one that was not bound sees the node's and takes its
    cpus_per_task. A bound task seeing fewer CPUs than cpus_per_task was started by an srun without
    --cpus-per-task (Slurm 22.05 to 23.02 no longer pass sbatch's on: one CPU per task)."""
    cores, source = usable_cores()
    per_task = int(env.get("SLURM_CPUS_PER_TASK", "0") or 0)
    if per_task and "TORCHELASTIC_RUN_ID" not in env:
        if cores > per_task:
            return min(per_task, max(1, cores // local_ranks)), f"SLURM_CPUS_PER_TASK={per_task}"
        if cores < per_task:
            source += (
                f", fewer than SLURM_CPUS_PER_TASK={per_task}: srun got no --cpus-per-task "
                "(hydra/launcher=slurm exports SRUN_CPUS_PER_TASK for it)"
            )
        return cores, source
    return max(1, cores // local_ranks), f"{source}: {cores} core(s) / {local_ranks} local rank(s)"


def choose_threads(cfg_threads: int | None, local_world_size: int = 1) -> tuple[int, str]:
    """Intra-op threads: trainer.threads, else $OMP_NUM_THREADS, else this rank's share of the usable cores
    (`rank_cores`: the node's cores over its ranks, or a Slurm task's own CPUs).

    torch's own default is every core of the machine, oversubscribing a shared or quota-limited machine
    (2-10x slower runs: 590 s vs 36 s for the Fig. 3 script on a shared 2-core box)."""
    if cfg_threads:
        return cfg_threads, "trainer.threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    return rank_cores(local_world_size)


def warn_oversubscribed(threads: int, local_world_size: int = 1) -> None:
    """Say so when a run asks for more intra-op threads than the cores it may count on (`rank_cores`).

    An OpenMP thread that ends its share of a parallel region first waits, spinning, for the others; a partner
    without a core of its own holds every region up until the scheduler runs it, and a CPU training step runs
    hundreds of regions (scripts/bench/threads.py measures it)."""
    cores, source = rank_cores(local_world_size)
    if threads > cores:
        log.warning(
            "%d intra-op threads for %d core(s) (%s): OpenMP threads will wait on each other, and steps may "
            "take several times longer; set trainer.threads=%d or fewer",
            threads,
            cores,
            source,
            cores,
        )


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, glibc <malloc.h>


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; returns whether it applied (Linux with glibc).

    A CPU training step allocates and frees the same large activation buffers every time. glibc serves
    blocks above its mmap threshold (32 MiB at most) with fresh mmap()s and unmaps them on free, so every
    step page-faults and zero-fills tens of MiB per buffer anew: on this project's 2-core CPU that made a
    ConvPool-CNN-C step (batch 128) about 20% slower. With mmap off and no trimming, freed blocks stay in
    the heap and the next step reuses the same pages; the process keeps its peak footprint, which a
    training process reaches every step anyway. (jemalloc or tcmalloc via LD_PRELOAD do the same.)
    """
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def make_runtime(cfg: TrainerConfig, local_rank: int = 0, local_world_size: int = 1) -> Runtime:
    device = select_device(cfg.device, local_rank, local_world_size)
    precision, why = resolve_precision(cfg.precision, device)
    check_precision(precision, device)
    log.info("precision %s on %s (%s)", precision, device, why)
    threads, why = choose_threads(cfg.threads, local_world_size)
    torch.set_num_threads(threads)
    log.info("%d intra-op thread(s) (%s; trainer.threads overrides)", threads, why)
    warn_oversubscribed(threads, local_world_size)
    if device.type == "cpu" and cfg.keep_freed_memory and not keep_freed_memory():
        log.info("trainer.keep_freed_memory: not glibc, left the allocator as it is")
    fused.set_enabled(cfg.fused_prelu)
    set_determinism(cfg.deterministic, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return Runtime(device, precision, scaler)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """trainer.deterministic: deterministic kernels wherever PyTorch has them, warn-only where it has none.

    The SPP nets' adaptive_max_pool2d has no deterministic CUDA backward; strict mode would make every
    deterministic SPP run on a GPU fail at its first step. We choose warn_only: PyTorch warns once per such
    op and the run goes on, bitwise reproducible except through those ops (on the CPU every op used here is
    deterministic, so CPU runs stay bitwise reproducible).
    """
    if deterministic:
        # cuBLAS needs this before its first use for deterministic matmuls (PyTorch reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def compile_model(model: torch.nn.Module, device: torch.device, distributed: bool = False) -> torch.nn.Module:
    """torch.compile, after checking what it needs here, so a failure reads as a config problem."""
    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(
            f"trainer.compile=true: torch.compile is not supported on this Python/platform "
            f"({sys.version.split()[0]}, {sys.platform}); use trainer.compile=false"
        )
    if device.type == "cpu" and not fused.cpu_compiler_available():
        raise ConfigError(
            "trainer.compile=true on a CPU needs a C++ compiler (g++ or clang++, or $CXX) for "
            "TorchInductor; install one or use trainer.compile=false"
        )
    fused.quiet_toolchain_import()
    return torch.compile(model, mode=compile_mode(device, distributed))


def compile_mode(device: torch.device, distributed: bool) -> str | None:
    """One CUDA process: "reduce-overhead", CUDA graphs replaying a step's kernels with one launch (the step
    reads nothing back to the host to break the capture: engine/agreement.py, `read_window`; tensor datasets
    keep every step's shapes). Under DDP, whose backward hooks launch NCCL calls, and on CPUs: the default mode."""
    return "reduce-overhead" if device.type == "cuda" and not distributed else None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device): model init and dropout draw from these."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
