"""Where a training run is, and its one serialization: the loop-state entries of a checkpoint.

`State` lists the fields once; `to_dict` writes them into a checkpoint and `from_dict` reads them back, both
from that list, so a field added here is saved and restored without touching the loop or the checkpoint code.
Checkpoints of an older layout are brought to the current one by `rectnet.engine.checkpoint.load` before
`from_dict` sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from rectnet.engine.metrics import Counts


@dataclass
class State:
    """What a checkpoint restores besides model, optimizer, schedule and RNG."""

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

    def to_dict(self, partial_by_rank: list[torch.Tensor]) -> dict:
        """The checkpoint's loop-state entries; `partial` holds every rank's counts (`Counts.as_tensor`)."""
        saved = {f.name: getattr(self, f.name) for f in fields(self)}
        return saved | {"partial": partial_by_rank, "records": dict(self.records), "resumes": list(self.resumes)}

    @classmethod
    def from_dict(cls, saved: dict, rank: int, world_size: int) -> State:
        """The state `to_dict` wrote, with `rank`'s partial counts. Written by another number of ranks, the
        counts of all of them go to rank 0 (their sum is the epoch's so far) and the others start from zero."""
        values = {f.name: saved[f.name] for f in fields(cls)}
        partial = saved["partial"]
        if len(partial) == world_size:
            values["partial"] = Counts.from_tensor(partial[rank])
        else:
            values["partial"] = Counts.from_tensor(sum(partial)) if rank == 0 else Counts()
        values["records"] = dict(saved["records"])
        values["resumes"] = list(saved["resumes"])
        return cls(**values)
