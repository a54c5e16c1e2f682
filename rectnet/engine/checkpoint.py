"""Checkpoints: plain dicts of tensors and containers, written atomically, read with weights_only=True.

Layout of a checkpoint (all keys always present):
    model, optimizer, schedule, scaler (None unless fp16), the loop's state (`rectnet.engine.state.State`:
    epoch (epochs completed), step (steps done in the next epoch; 0 at an epoch boundary), position (samples
    of the next epoch's global order trained), partial (per rank: that epoch's training counts so far),
    best_top1_err, best_epoch, stopped_at, records, resumes), rng (per rank: python, numpy, torch CPU and CUDA
    states), world_size, config (the resolved config dict), fingerprint (what defines the run:
    `rectnet.engine.fingerprint`), data (the preprocessing constants), format (CHECKPOINT_FORMAT).

Only the current format is read: formats 1 and 2, with the positional module keys and the per-GPU lists of
CUDA RNG states of their time, existed only on development machines before rectnet 0.1.0 (which writes format
3), so nothing upgrades them; `load` refuses any other format in one line.

`last.pt` is replaced atomically (temporary file, fsync, rename); the checkpoint it replaces is kept as
`prev.pt`, so a `last.pt` damaged outside our control (disk full, a copy cut short) still leaves a good one.
The rotation first writes `.last.pt.new` completely, then renames last.pt to prev.pt and `.last.pt.new` to
last.pt: a run killed between those renames left its newest state in `.last.pt.new`, which the next start
makes last.pt (`finish_rotation`). Whatever is not a file at last.pt or prev.pt (a directory, a socket) is
renamed to `<name>.damaged-<time>` with a warning instead of failing the rotation after a training segment.

Integrity on load: a checkpoint is a zip archive whose every member carries a CRC-32 that torch.save
computes; `load` checks them all before unpickling (a flipped byte anywhere in the data is a mismatch) and
refuses model or optimizer tensors holding NaN or inf, and entries of the wrong type or shape (a resume
would fail on them with a TypeError or AttributeError: `rectnet.engine.checkpoint_checks`). The training
loop never writes such a state (`nonfinite_entries` before every save), so any finding means damage, and
`choose_resume` falls back to `prev.pt` as for any damaged file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rectnet.engine.checkpoint_checks import structure_fault

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 3
REQUIRED_KEYS = (  # what makes a file a rectnet checkpoint at all (every entry: checkpoint_checks.STRUCTURE)
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


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, quota); the one it would have replaced is intact."""


NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
NEW_LAST = ".last.pt.new"  # save_last's complete new checkpoint, before it becomes last.pt
# What checkpoints/ holds at its fullest: these three while the next one is being written
CHECKPOINT_FILES = ("best.pt", "last.pt", "prev.pt")


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
        with contextlib.suppress(OSError):  # a failed removal must not hide why the write failed (a leftover
            tmp.unlink(missing_ok=True)  # temporary is removed at the next start: rundir.STALE_TEMPORARIES)
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
    last = folder / "last.pt"
    new = folder / NEW_LAST
    atomic_save(state, new, replaces=last)
    _rotate(new, folder)
    return last


def _rotate(new: Path, folder: Path) -> None:
    """last.pt becomes prev.pt and `new` (a complete checkpoint) becomes last.pt; what is not a file at either
    name is moved aside first (a directory there would fail the renames after every training segment)."""
    last, prev = folder / "last.pt", folder / "prev.pt"
    for path in (prev, last):
        _move_aside_if_not_a_file(path, new)
    if last.exists():
        os.replace(last, prev)
    os.replace(new, last)
    _fsync_dir(folder)


def _what(path: Path) -> str:
    return "a directory" if path.is_dir() else "not a regular file"


def _move_aside_if_not_a_file(path: Path, new: Path) -> None:
    if not os.path.lexists(path) or path.is_file():
        return
    what = _what(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while os.path.lexists(aside):
        aside, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    try:
        os.rename(path, aside)
    except OSError as err:
        raise CheckpointError(
            f"{path} is {what}, not a checkpoint, and cannot be moved aside ({err.strerror}): the newest "
            f"checkpoint stays in {new}; move {path} away and start again (the next start makes {new.name} last.pt)"
        ) from None
    log.warning("%s is %s, not a checkpoint: moved aside to %s (look inside, then delete it)", path, what, aside)


def finish_rotation(folder: Path) -> None:
    """Complete a `save_last` that was stopped after writing `.last.pt.new` (complete and fsynced by then),
    before it became last.pt: that file holds the newest state. One that does not load is removed. Call only
    while owning the run directory, before choosing the checkpoint to resume from."""
    new = folder / NEW_LAST
    if not new.is_file():
        return
    try:
        load(new)
    except CheckpointError as err:
        log.warning("%s: removed (a write cut short)", err)
        new.unlink()
        return
    log.warning("%s holds the newest checkpoint (an interrupted rotation): it becomes last.pt", new)
    _rotate(new, folder)


def _read(path: Path, required: tuple[str, ...]) -> dict:
    """The file's dict, read with weights_only=True (no code runs from it) after its CRCs are checked, holding
    the `required` entries; else CheckpointError."""
    if os.path.lexists(path) and not path.is_file():
        raise CheckpointError(f"{path} is {_what(path)}, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _verify_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a rectnet checkpoint (missing {', '.join(missing)})")
    return state


def load_weights(path: str | Path) -> dict:
    """A checkpoint read for its network alone (the analyses): its `model` weights, finite, and the `config`
    that rebuilds it; the training state a resume needs may be absent (a checkpoint trimmed for sharing)."""
    path = Path(path)
    state = _read(path, ("model", "config"))
    if not isinstance(state["model"], dict) or not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is damaged: its model or config entry is not a dict")
    bad = nonfinite_entries(state["model"], {})
    if bad:
        raise CheckpointError(f"{path} is damaged: NaN or inf in {_first_names(bad)}")
    return state


def load(path: str | Path) -> dict:
    """Load and check a rectnet checkpoint for a resume: every entry of the training state, well formed."""
    path = Path(path)
    state = _read(path, REQUIRED_KEYS)
    if not isinstance(state["format"], int) or state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']}; this rectnet reads format {CHECKPOINT_FORMAT} only"
        )
    fault = structure_fault(state)
    if fault:
        raise CheckpointError(f"{path} is damaged: {fault}")
    bad = nonfinite_entries(state["model"], state["optimizer"])
    if bad:
        raise CheckpointError(f"{path} is damaged: NaN or inf in {_first_names(bad)}")
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


def read_fingerprint(path: Path) -> dict | None:
    """The fingerprint of the checkpoint at `path`, read cheaply (mmap: no tensor data is read, no CRC is
    checked); None when there is no file or it cannot be read so (then `load`, which verifies it, decides)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            return None
        saved = state["fingerprint"]
    except Exception:  # anything unreadable is damage, which `load` names
        return None
    return saved if isinstance(saved, dict) and all(isinstance(k, str) for k in saved) else None


def peek_fingerprint(resume: str | None, checkpoint_dir: Path) -> tuple[Path, dict] | None:
    """(the checkpoint `choose_resume` would resume from, its fingerprint) without reading its tensors: last.pt,
    else prev.pt when last.pt cannot be read (trainer.resume=auto), or the file trainer.resume names. None for a
    fresh start, or when nothing could be read cheaply."""
    if resume is None:
        return None
    candidates = [checkpoint_dir / "last.pt", checkpoint_dir / "prev.pt"] if resume == "auto" else [Path(resume)]
    for path in candidates:
        saved = read_fingerprint(path)
        if saved is not None:
            return path, saved
    return None


def estimated_size(model: nn.Module, optimizer: torch.optim.Optimizer, world_size: int) -> int:
    """About how many bytes a checkpoint of `model` and `optimizer` takes on disk, known before the first step.

    The tensors are nearly all of it: the model's state_dict (weights and buffers) and, per trainable
    parameter, as many buffers of its size as the optimizer keeps (SGD: one momentum buffer, none without
    momentum; Adam-like optimizers, with betas: two). The rest is small and bounded: the RNG states (about
    12 KB per rank), the config, fingerprint and loop state (about 10 KB), and the archive's records around
    each tensor (about 360 bytes); allowed for with a margin (on the tests' 88 KB net the estimate is 8%
    above the real file, tests/test_fault_audit.py; on real models the tensors make it exact to a fraction
    of a percent).
    """
    tensors = list(model.state_dict().values())
    params = [p for group in optimizer.param_groups for p in group["params"]]
    momentum = any(group.get("momentum") for group in optimizer.param_groups)
    buffers = 2 if "betas" in optimizer.defaults else int(momentum)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    nbytes += buffers * sum(p.numel() * p.element_size() for p in params)
    return nbytes + 16_384 * (1 + world_size) + 400 * (len(tensors) + buffers * len(params))


def _megabytes(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def check_room(folder: Path, size: int) -> None:
    """Refuse a run whose checkpoints will not fit in `folder`'s filesystem: at its fullest it holds best.pt,
    last.pt and prev.pt while the next checkpoint is written, four of about `size` bytes; the ones already
    there count towards that. Raises CheckpointWriteError naming what is free and what is needed."""
    there = [folder / name for name in CHECKPOINT_FILES if (folder / name).is_file()]
    needed = max(4 * size - sum(path.stat().st_size for path in there), size)
    free = shutil.disk_usage(folder if folder.is_dir() else folder.parent).free
    if free >= needed:
        return
    listed = f"{', '.join(path.name for path in there)} there" if there else "none there yet"
    raise CheckpointWriteError(
        f"no room for this run's checkpoints in {folder}: {_megabytes(free)} free, about {_megabytes(needed)} "
        f"needed (4 checkpoints of about {_megabytes(size)}: best.pt, last.pt, prev.pt and the one being "
        f"written; {listed}). Free space or pick another hydra.run.dir"
    )


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
