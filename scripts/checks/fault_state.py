"""The fault cases of chaos.py --faults in a run's own state: its checkpoints damaged or a rotation interrupted
(checkpoint), its folders unwritable or its disk full (disk), its training loss made NaN (nonfinite). What a case
is and how it is judged: faults.py."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from faults import (
    CONTINUED,
    EITHER,
    FAULT_RUN,
    RUNS_CODE,
    Case,
    Check,
    Lab,
    Prepare,
    RunsCode,
    Skip,
    continued,
    copy_base,
    kept,
    no_file,
    not_trained,
    nothing_lost_on_refusal,
    tiny,
)

# ---------------------------------------------------------------------------------------------- checkpoint

DIRECTORY_NOTE = "a user's notes, left where last.pt was"
Damage = Callable[[Path, random.Random], None]


def truncated(path: Path, rng: random.Random) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def zero_bytes(path: Path, rng: random.Random) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path, rng: random.Random) -> None:
    path.write_bytes(rng.randbytes(path.stat().st_size))


def a_directory(path: Path, rng: random.Random) -> None:
    path.unlink()
    path.mkdir()
    (path / "notes.txt").write_text(DIRECTORY_NOTE)


def removed(path: Path, rng: random.Random) -> None:
    path.unlink()


def rewritten(change: Callable[[dict, Path], None]) -> Damage:
    """Load, change the state, save with torch.save: a well-formed archive (every CRC right) with bad content."""

    def damage(path: Path, rng: random.Random) -> None:
        state = torch.load(path, weights_only=True)
        change(state, path)
        torch.save(state, path)

    return damage


def entry(key: str, value: Any) -> Damage:
    return rewritten(lambda state, path: state.__setitem__(key, value))


def without(key: str) -> Damage:
    return rewritten(lambda state, path: state.pop(key))


def nan_weights(state: dict, path: Path) -> None:
    next(iter(state["model"].values())).fill_(float("nan"))


def runs_code(state: dict, path: Path) -> None:
    state["epoch"] = RunsCode(path.parents[2] / RUNS_CODE)  # <case folder>/run/checkpoints/last.pt


def moved_to(name: str) -> Damage:
    def damage(path: Path, rng: random.Random) -> None:
        os.replace(path, path.with_name(name))

    return damage


def copied_to(name: str, then: Damage) -> Damage:
    """A copy of the file at `name`, damaged by `then`; the file itself stays intact."""

    def damage(path: Path, rng: random.Random) -> None:
        shutil.copyfile(path, path.with_name(name))
        then(path.with_name(name), rng)

    return damage


def damaged(damages: dict[str, Damage]) -> Prepare:
    def prepare(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
        checkpoints = copy_base(lab, folder) / "checkpoints"
        for name, damage in damages.items():
            damage(checkpoints / name, lab.rng(f"{folder.name}/{name}"))
        return CONTINUED

    return prepare


# (name, {checkpoint file: damage}, epochs of the base run a continuation must keep, extra checks)
CHECKPOINT_FAULTS: list[tuple[str, dict[str, Damage], int, tuple[Check, ...]]] = [
    ("last_truncated", {"last.pt": truncated}, 1, ()),
    ("last_zero_bytes", {"last.pt": zero_bytes}, 1, ()),
    ("last_random_bytes", {"last.pt": random_bytes}, 1, ()),
    ("last_missing", {"last.pt": removed}, 1, ()),
    ("last_a_directory", {"last.pt": a_directory}, 1, (kept(DIRECTORY_NOTE),)),
    ("last_model_a_list", {"last.pt": entry("model", [])}, 1, ()),
    ("last_rng_wrong_type", {"last.pt": entry("rng", [{"python": 1}])}, 1, ()),
    ("last_epoch_a_string", {"last.pt": entry("epoch", "2")}, 1, ()),
    ("last_without_optimizer", {"last.pt": without("optimizer")}, 1, ()),
    ("last_nan_weights", {"last.pt": rewritten(nan_weights)}, 1, ()),
    ("last_pickle_runs_code", {"last.pt": rewritten(runs_code)}, 1, (no_file(RUNS_CODE),)),
    ("prev_truncated", {"prev.pt": truncated}, 2, ()),
    ("both_truncated", {"last.pt": truncated, "prev.pt": truncated}, 1, ()),
    ("both_random_bytes", {"last.pt": random_bytes, "prev.pt": random_bytes}, 1, ()),
    # killed between the rotation's renames: last.pt gone, the newest state complete in .last.pt.new
    ("interrupted_rotation", {"last.pt": moved_to(".last.pt.new")}, 2, ()),
    ("leftover_temporary", {"last.pt": copied_to(".last.pt.tmp-12345", truncated)}, 2, ()),
    ("leftover_new_damaged", {"last.pt": copied_to(".last.pt.new", truncated)}, 2, ()),
]


def checkpoint_cases() -> list[Case]:
    return [
        Case(
            name,
            "checkpoint",
            damaged(damages),
            EITHER,
            says=("{run_dir}/checkpoints",),  # a refusal names the checkpoint it cannot use
            checks=(continued(keeps), nothing_lost_on_refusal, *extra),
            needs_base=True,
        )
        for name, damages, keeps, extra in CHECKPOINT_FAULTS
    ]


# ---------------------------------------------------------------------------------------------------- disk


def mount_tmpfs(folder: Path, cleanup: contextlib.ExitStack, size: str = "8m") -> None:
    """A tmpfs at `folder` holding a copy of what the folder held (the folder itself, hidden under the mount,
    is left as it was); unmounted by `cleanup`. Needs mount rights: Skip without them."""
    folder.mkdir(parents=True, exist_ok=True)
    held = Path(tempfile.mkdtemp(dir=folder.parent))
    try:
        shutil.copytree(folder, held, dirs_exist_ok=True)
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        if subprocess.run(mount, capture_output=True).returncode:
            raise Skip("cannot mount a tmpfs here (needs root where mounting is allowed)")
        cleanup.callback(subprocess.run, ["umount", "-l", str(folder)], check=False, capture_output=True)
        shutil.copytree(held, folder, dirs_exist_ok=True)
    finally:
        shutil.rmtree(held)


def read_only(folder: Path, cleanup: contextlib.ExitStack) -> None:
    """Make `folder` read-only as the kernel enforces it for this process: chmod for a normal user; root
    passes permission checks, so a read-only tmpfs holding the folder's files instead."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        cleanup.callback(folder.chmod, 0o755)
        return
    mount_tmpfs(folder, cleanup)
    if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode:
        raise Skip("cannot remount a tmpfs read-only here")


def fill(folder: Path) -> None:
    """Write until the filesystem is full."""
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def checkpoints_a_file(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    (folder / "run").mkdir()
    (folder / "run" / "checkpoints").write_text(DIRECTORY_NOTE)
    return FAULT_RUN


def run_dir_read_only(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    (folder / "run").mkdir()
    read_only(folder / "run", cleanup)
    return FAULT_RUN


def checkpoints_read_only(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    read_only(copy_base(lab, folder) / "checkpoints", cleanup)
    return CONTINUED


def disk_full(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    mount_tmpfs(folder / "run", cleanup, size="1m")
    fill(folder / "run")
    return FAULT_RUN


def disk_too_small(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    """Room for the run's records and two checkpoints, not for the four a rotation holds at once."""
    mount_tmpfs(folder / "run", cleanup, size="600k")
    return FAULT_RUN


def disk_cases() -> list[Case]:
    refused = (nothing_lost_on_refusal, not_trained)
    return [
        Case(
            "checkpoints_a_file",
            "disk",
            checkpoints_a_file,
            says=("{run_dir}/checkpoints",),
            checks=(*refused, kept(DIRECTORY_NOTE)),
        ),
        Case("run_dir_read_only", "disk", run_dir_read_only, says=("{run_dir}",), checks=refused),
        Case(
            "checkpoints_read_only",
            "disk",
            checkpoints_read_only,
            says=("{run_dir}/checkpoints",),
            checks=refused,
            needs_base=True,
        ),
        Case("disk_full_at_start", "disk", disk_full, says=("{run_dir}", "space"), checks=refused),
        Case("disk_too_small", "disk", disk_too_small, says=("{run_dir}/checkpoints", "space")),
    ]


# ----------------------------------------------------------------------------------------------- nonfinite

# Run in train.py's process before it starts: every training loss (a gradient being recorded) becomes NaN,
# evaluation losses stay finite; what a diverging run or a bad batch produces.
NAN_LOSS = """
import torch
import torch.nn.functional as F

real_cross_entropy = F.cross_entropy

def cross_entropy(logits, labels, *args, **kwargs):
    loss = real_cross_entropy(logits, labels, *args, **kwargs)
    return loss * float("nan") if torch.is_grad_enabled() else loss

F.cross_entropy = cross_entropy
"""


def resumed(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
    copy_base(lab, folder)
    return CONTINUED


def nonfinite_cases() -> list[Case]:
    return [
        Case("nan_loss_fresh", "nonfinite", tiny([]), says=("loss", "epoch 1"), prelude=NAN_LOSS),
        Case(
            "nan_loss_resumed",
            "nonfinite",
            resumed,
            says=("loss", "epoch 3"),
            prelude=NAN_LOSS,
            checks=(nothing_lost_on_refusal,),
            needs_base=True,
        ),
    ]
