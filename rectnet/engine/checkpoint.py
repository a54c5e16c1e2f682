"""Checkpoints: plain dicts of tensors and containers, written atomically, read with weights_only=True.

Layout of a checkpoint (all keys always present):
    model, optimizer, schedule, scaler (None unless fp16), the loop's state (`rectnet.engine.state.State`:
    epoch (epochs completed), step (steps done in the next epoch; 0 at an epoch boundary), position (samples
    of the next epoch's global order trained), partial (per rank: that epoch's training counts so far),
    best_top1_err, best_epoch, stopped_at, records, resumes), rng (per rank: python, numpy, torch CPU and CUDA
    states), world_size, config (the resolved config dict), fingerprint (what defines the run:
    `rectnet.engine.fingerprint`), data (the preprocessing constants), format (CHECKPOINT_FORMAT).

Older formats load through `UPGRADES`, each bringing a checkpoint one format forward:
    1 -> 2: the "Single" protocol's training loss at the best epoch, a top-level `train_loss_at_best` (None
    when not recorded), moved into `records`, where every stopping rule keeps what it records.
    2 -> 3: the fingerprint, computed from the saved config (its global batch: the per-process batch times
    the ranks that wrote it), the position (step times that global batch) and an empty list of resumes.

`last.pt` is replaced atomically (temporary file, fsync, rename); the checkpoint it replaces is kept as
`prev.pt`, so a `last.pt` damaged outside our control (disk full, a copy cut short) still leaves a good one.

Integrity on load: a checkpoint is a zip archive whose every member carries a CRC-32 that torch.save
computes; `load` checks them all before unpickling (a flipped byte anywhere in the data is a mismatch) and
refuses model or optimizer tensors holding NaN or inf. The training loop never writes such a state
(`nonfinite_entries` before every save), so either finding means damage, and `choose_resume` falls back
to `prev.pt` as for any damaged file.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from rectnet.engine.fingerprint import fingerprint

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 3
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


CURRENT_KEYS = ("fingerprint", "position", "resumes")  # written since format 3; older files gain them by `upgrade`


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not a rectnet checkpoint."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, quota); the one it would have replaced is intact."""


NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def temporary_path(path: Path) -> Path:
    """Where `atomic_save` writes before the rename (rundir.STALE_TEMPORARIES removes leftovers)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_save(obj: Any, path: Path, replaces: Path | None = None) -> None:
    """torch.save to a temporary file in the same folder, fsync it, then rename over `path`.

    `replaces`: the file this write is about to become (`path` unless a caller renames it on), named when
    the disk is full.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        reason = _no_space_reason(err)
        if reason is None:
            raise
        target = replaces or path
        kept = f"the previous {target} is intact" if target.exists() else f"no earlier {target.name} existed"
        raise CheckpointWriteError(f"{reason} while writing {target}; {kept}. Free space and resume.") from err
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _no_space_reason(err: BaseException | None) -> str | None:
    """ENOSPC / EDQUOT anywhere in the chain: torch's C++ writer reports it as an `inline_container` error
    whose OSError is only the context (or the reverse, when Python's buffered file fails on close)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return NO_SPACE[err.errno]
        err = err.__cause__ or err.__context__
    return None


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
    atomic_save(state, tmp, replaces=last)
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
    _verify_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a rectnet checkpoint (missing {', '.join(missing)})")
    if state["format"] not in range(1, CHECKPOINT_FORMAT + 1):
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']}; this rectnet reads formats 1 to {CHECKPOINT_FORMAT}"
        )
    state = upgrade(state)
    missing = [k for k in CURRENT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is damaged: format {CHECKPOINT_FORMAT} without {', '.join(missing)}")
    bad = nonfinite_entries(state["model"], state["optimizer"])
    if bad:
        raise CheckpointError(f"{path} is damaged: NaN or inf in {_first_names(bad)}")
    return state


def _records_into_their_own_entry(state: dict) -> dict:
    """Format 1 -> 2 (see the module docstring); checkpoints from before either key existed lack them."""
    state = dict(state)
    loss = state.pop("train_loss_at_best", None)
    state["records"] = {} if loss is None else {"train_loss_at_best": loss}
    state.setdefault("stopped_at", 0)  # written since the "Single" protocol's stage 2
    return state | {"format": 2}


def _fingerprint_and_position(state: dict) -> dict:
    """Format 2 -> 3 (see the module docstring)."""
    global_batch = state["config"]["trainer"]["batch_size"] * state.get("world_size", 1)
    return state | {
        "fingerprint": fingerprint(state["config"], global_batch),
        "position": state["step"] * global_batch,
        "resumes": [],
        "format": 3,
    }


UPGRADES = {1: _records_into_their_own_entry, 2: _fingerprint_and_position}  # format -> its upgrade to format + 1


def upgrade(state: dict) -> dict:
    """`state` in the current format (CHECKPOINT_FORMAT), brought forward one format at a time."""
    while state["format"] < CHECKPOINT_FORMAT:
        state = UPGRADES[state["format"]](state)
    return state


def _verify_archive(path: Path) -> None:
    """Every member's CRC-32 against its bytes: a flipped byte loads silently through torch.load otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupted: the content of {bad} does not match its CRC-32")


def nonfinite_entries(model: dict, optimizer: dict) -> list[str]:
    """Names of the floating-point model and optimizer tensors that hold NaN or inf (one fused check)."""
    named = [(f"model.{k}", v) for k, v in model.items()]
    named += [(f"optimizer.{i}.{k}", v) for i, per in optimizer.get("state", {}).items() for k, v in per.items()]
    floats = [(name, t) for name, t in named if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not floats:
        return []
    finite = torch.stack([t.isfinite().all() for _, t in floats])
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(floats, finite.tolist(), strict=True) if not ok]


def _first_names(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def choose_resume(resume: str | None, checkpoint_dir: Path) -> tuple[Path, dict] | None:
    """(the file to resume from, its content): None for a fresh start.

    `auto`: `last.pt` if present (falling back to `prev.pt`, with a warning, when `last.pt` is damaged),
    else a fresh start. A path: that file, which must be a readable checkpoint.
    """
    if resume is None:
        return None
    if resume != "auto":
        return Path(resume), load(resume)
    last, prev = checkpoint_dir / "last.pt", checkpoint_dir / "prev.pt"
    if not last.exists() and not prev.exists():
        log.info("trainer.resume=auto: no checkpoint in %s, starting fresh", checkpoint_dir)
        return None
    try:
        return last, load(last)
    except CheckpointError as err:
        if not prev.exists():
            raise
        log.warning("%s; resuming from the previous checkpoint %s", err, prev)
        try:
            return prev, load(prev)
        except CheckpointError as prev_err:
            raise CheckpointError(
                f"neither checkpoint can be resumed from: {err}; {prev_err}. Restore one of them from a copy, "
                "resume from another file with trainer.resume=<path>, or start afresh in another hydra.run.dir"
            ) from None
