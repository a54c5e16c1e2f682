"""Preemption and time limits: finish the step, write a checkpoint, then let the scheduler requeue.

SLURM warns a job before its time limit (submitit asks for SIGUSR2 by default, `#SBATCH --signal` often
sends SIGUSR1) and sends SIGTERM on preemption. `StopSignals` only records the signal; the training loop
asks `agree()` at every step before backward (all ranks agree through one all-reduce, which also carries
each rank's "my loss is not finite" flag), finishes the step, writes last.pt, and calls
`hand_over()`: the handler that was installed before ours runs (submitit's requeues the job and exits),
and a plain signal without one ends the process with 128 + signal number.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType
from typing import NamedTuple

import torch

from rectnet.engine.distributed import Dist

log = logging.getLogger(__name__)

SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2", "SIGTERM") if hasattr(signal, name))


class StepVerdict(NamedTuple):
    stop: bool  # some rank got a stop signal: finish this step, write last.pt, hand over
    nonfinite_ranks: list[int]  # ranks whose loss is NaN or inf at this step (empty: carry on)


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        self._frame: FrameType | None = None
        self._previous = {}

    def install(self) -> StopSignals:
        for sig in SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._record)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received, self._frame = signum, frame

    def requested(self, ranks: Dist, device: torch.device) -> bool:
        """True on every rank as soon as any rank got a signal."""
        return self.agree(ranks, torch.zeros((), dtype=torch.bool, device=device)).stop

    def agree(self, ranks: Dist, nonfinite: torch.Tensor) -> StepVerdict:
        """Every rank's view of this step, from one all-reduce (none on a single process): whether any rank
        got a signal, and which ranks' loss is not finite (`nonfinite`: this rank's 0-d bool tensor).

        A rank that left the step alone (raising on its NaN before backward) would leave the others in DDP's
        gradient all-reduce until the NCCL timeout; agreeing first makes every rank stop with the same error.
        """
        if not ranks.enabled:
            return StepVerdict(self.received is not None, [0] if bool(nonfinite) else [])
        flags = torch.zeros(ranks.world_size + 1, dtype=torch.int32, device=nonfinite.device)
        flags[0] = 0 if self.received is None else 1
        flags[1 + ranks.rank] = nonfinite.to(torch.int32)
        total = ranks.sum(flags).tolist()
        return StepVerdict(total[0] > 0, [rank for rank, bad in enumerate(total[1:]) if bad])

    def hand_over(self) -> None:
        """Run the handler that was there before ours (submitit requeues), else exit with 128 + signal."""
        signum = self.received or signal.SIGTERM
        previous = self._previous.get(signum)
        self.uninstall()
        log.warning("stopping on %s after writing a checkpoint", signal.Signals(signum).name)
        if callable(previous):
            previous(signum, self._frame)
        sys.exit(128 + signum)
