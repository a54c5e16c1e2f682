"""Checkpoints: plain dicts of tensors and containers, written atomically, read with weights_only=True.

Layout of a checkpoint (all keys always present):
    model, optimizer, schedule, scaler (None unless fp16), epoch (epochs completed), step (steps done in
    the next epoch; 0 at an epoch boundary), partial (per rank: that epoch's training counts so far),
    best_top1_err, best_epoch, rng (per rank: python, numpy, torch CPU and CUDA states), world_size,
    config (the resolved config dict), format (CHECKPOINT_FORMAT).

`last.pt` is replaced atomically (temporary file, fsync, rename); the checkpoint it replaces is kept as
`prev.pt`, so a `last.pt` damaged outside our control (disk full, a copy cut short) still leaves a good one.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = (
    "model",
    "optimizer",
    "schedule",
    "scaler",
    "epoch",
    "step",
    "best_top1_err",
    "rng",
    "config",
    "format",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not a rectnet checkpoint."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_last(state: dict, folder: Path) -> Path:
    """Write `last.pt`, keeping the checkpoint it replaces as `prev.pt`."""
    last, prev = folder / "last.pt", folder / "prev.pt"
    tmp = folder / ".last.pt.new"
    atomic_save(state, tmp)
    if last.exists():
        os.replace(last, prev)
    os.replace(tmp, last)
    _fsync_dir(folder)
    return last


def load(path: str | Path) -> dict:
    """Load and check a rectnet checkpoint (weights_only=True: no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a rectnet checkpoint (missing {', '.join(missing)})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state['format']}; this rectnet reads {CHECKPOINT_FORMAT}")
    return state


def resolve_resume(resume: str | None, checkpoint_dir: Path) -> dict | None:
    """The checkpoint to resume from: None for a fresh start.

    `auto`: `last.pt` if present (falling back to `prev.pt`, with a warning, when `last.pt` is damaged),
    else a fresh start. A path: that file, which must be a readable checkpoint.
    """
    if resume is None:
        return None
    if resume != "auto":
        return load(resume)
    last, prev = checkpoint_dir / "last.pt", checkpoint_dir / "prev.pt"
    if not last.exists() and not prev.exists():
        log.info("trainer.resume=auto: no checkpoint in %s, starting fresh", checkpoint_dir)
        return None
    try:
        return load(last)
    except CheckpointError as err:
        if not prev.exists():
            raise
        log.warning("%s; resuming from the previous checkpoint %s", err, prev)
        return load(prev)
