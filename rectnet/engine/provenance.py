"""What produced a result: git commit, package versions, hardware (written into results.json)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from rectnet.engine.runtime import cpu_model, native_bf16_flags

PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "timm", "tensorboard", "numpy", "rectnet")


SOURCE_DIR = Path(__file__).resolve().parent


def git_state(folder: Path = SOURCE_DIR) -> dict[str, str | bool | None]:
    """Commit of the rectnet checkout and whether it has uncommitted changes (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if sha else None}


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def hardware(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model() or platform.machine(),
        "cpu_native_bf16": native_bf16_flags(),  # empty: bf16 is emulated, and precision=auto picks fp32
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
