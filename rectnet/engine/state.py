"""What a checkpoint restores besides model, optimizer and schedule: where the run is, and every rank's RNGs.

`State` lists the loop's fields once; `to_dict` writes them into a checkpoint and `from_dict` reads them back,
both from that list, so a field added here is saved and restored without touching the loop or the checkpoint
code. The RNG states live here too (`rng_state`, `restore_rng`): they are saved per rank beside `partial`, and a
resume on another number of ranks decides for both what carries over.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from rectnet.data.batches import derived_seed
from rectnet.engine.metrics import Counts
from rectnet.engine.runtime import seed_everything

# What stands for the attempts before a resume from a checkpoint that predates State.attempts (their epochs and
# times are in metrics.jsonl and resumed_from; their machine and commit were not kept)
EARLIER_ATTEMPTS = {"epoch": 0, "step": 0, "recorded": False}


@dataclass
class State:
    """Where a training run is: what a checkpoint restores besides model, optimizer, schedule and RNG."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside epoch + 1 (mid-epoch checkpoints)
    # The samples of epoch + 1's global order trained so far (all ranks together): where a resume continues,
    # whatever the number of ranks (rectnet.data.batches)
    position: int = 0
    partial: Counts = field(default_factory=Counts)  # this rank's training counts of those steps
    best_top1_err: float = math.inf
    best_epoch: int = 0
    stopped_at: int = 0  # the epoch after which a stopping rule ended the run (0: none); nothing trains after it
    records: dict[str, float] = field(default_factory=dict)  # what the stopping rules recorded (engine.stopping)
    # One entry per resume: the checkpoint, where it stood, the ranks before and after, the keys allowed to differ
    resumes: list[dict] = field(default_factory=list)
    # One entry per attempt, the first included: where it started and what ran it (record.attempt_record), so
    # that a run resumed on another machine, commit or thread count says so
    attempts: list[dict] = field(default_factory=list)

    def to_dict(self, partial_by_rank: list[torch.Tensor]) -> dict:
        """The checkpoint's loop-state entries; `partial` holds every rank's counts (`Counts.as_tensor`)."""
        saved = {f.name: getattr(self, f.name) for f in fields(self)}
        lists = {"resumes": list(self.resumes), "attempts": list(self.attempts)}
        return saved | {"partial": partial_by_rank, "records": dict(self.records), **lists}

    @classmethod
    def from_dict(cls, saved: dict, rank: int, world_size: int) -> State:
        """The state `to_dict` wrote, with `rank`'s partial counts. Written by another number of ranks, the
        counts of all of them go to rank 0 (their sum is the epoch's so far) and the others start from zero."""
        values = {f.name: saved[f.name] for f in fields(cls) if f.name != "attempts"}
        partial = saved["partial"]
        if len(partial) == world_size:
            values["partial"] = Counts.from_tensor(partial[rank])
        else:
            values["partial"] = Counts.from_tensor(sum(partial)) if rank == 0 else Counts()
        values["records"] = dict(saved["records"])
        values["resumes"] = list(saved["resumes"])
        values["attempts"] = list(saved.get("attempts", [dict(EARLIER_ATTEMPTS)]))
        return cls(**values)

    def where(self) -> str:
        """Where a checkpoint of this state stands, as the messages of a stopped run say it."""
        return f"the end of epoch {self.epoch}" if self.step == 0 else f"epoch {self.epoch + 1}, step {self.step}"


def rng_state(device: torch.device) -> dict:
    """Every global RNG state, as tensors and plain containers (loadable with weights_only=True). CUDA: only
    the state of `device`, the GPU this rank uses (a resume may see fewer GPUs, or others); on a CPU an empty
    list."""
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
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else [],
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what `rng_state` saved. The CUDA state goes to this rank's own GPU, whichever index it has now;
    on a CPU, or from a checkpoint a CPU rank wrote, there is none to restore."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["key"].numpy(), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and isinstance(state["cuda"], torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)


def restore_rng(saved: list[dict], rank: int, world_size: int, device: torch.device, seed: int, state: State) -> bool:
    """Restore this rank's RNG states from `saved` (one entry per rank that wrote the checkpoint): True. Written
    by another number of ranks: False, after seeding fresh streams instead, distinct per rank and per resumed
    segment (from the run's seed, the rank and where the data continues). Batches and augmentation do not
    depend on these states; dropout masks do."""
    if len(saved) == world_size:
        set_rng_state(saved[rank], device)
        return True
    seed_everything(derived_seed(seed, rank, state.epoch, state.position) % 2**32)
    return False


def _as_tuple(value):
    """random.setstate wants the nested tuples that getstate gave (a checkpoint round trip may give lists)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
