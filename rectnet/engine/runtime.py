"""Device, precision, threads, determinism and seeding: everything about *where* a run executes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import random
import sys
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


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: this rank's GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"trainer.device={name!r} is not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precisions this device cannot run; warn where it runs but slowly."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs a CUDA device (fp16 with a loss scaler); use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
    if precision == "bf16" and device.type == "cpu":
        log.warning("trainer.precision=bf16 on a CPU: supported, but often far slower than fp32 on CPUs without AMX")


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


def make_runtime(cfg: TrainerConfig, local_rank: int = 0) -> Runtime:
    device = select_device(cfg.device, local_rank)
    check_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu" and cfg.keep_freed_memory and not keep_freed_memory():
        log.info("trainer.keep_freed_memory: not glibc, left the allocator as it is")
    fused.set_enabled(cfg.fused_prelu)
    if cfg.deterministic:
        # cuBLAS needs this before its first use for deterministic matmuls (PyTorch reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    return Runtime(device, cfg.precision, scaler)


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
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
    return torch.compile(model)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device): model init and dropout draw from these."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, as tensors and plain containers (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["key"].numpy(), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    """random.setstate wants the nested tuples that getstate gave (a checkpoint round trip may give lists)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
