"""Preemption and time limits: finish the step, write a checkpoint, then let the scheduler requeue.

SLURM warns a job before its time limit (submitit asks for SIGUSR2 by default, `#SBATCH --signal` often
sends SIGUSR1) and sends SIGTERM on preemption. `StopSignals` only records the signal; the training loop
reads `agreement()` once per log interval (one all-reduce, which also carries each rank's "a loss was not
finite" flag, so all ranks stop together), writes last.pt, and calls
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
    stop: bool  # some rank got a stop signal: write last.pt, hand over
    nonfinite: dict[int, int]  # rank -> 1-based position in the window of its first NaN/inf loss (empty: none)


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

    def agreement(self, ranks: Dist, first_bad: torch.Tensor) -> torch.Tensor:
        """[any rank got a signal, then per rank the 1-based position in the step window of its first
        non-finite loss (0: none)], summed over ranks (one all-reduce; none on a single process). A device
        tensor: the caller reads it in its one host transfer (`verdict`).

        A rank that left a step alone (raising on its NaN) would leave the others in DDP's gradient
        all-reduce until the NCCL timeout; agreeing first makes every rank stop with the same error.
        """
        flags = torch.zeros(ranks.world_size + 1, dtype=torch.int64, device=first_bad.device)
        if self.received is not None:
            flags[0] = 1
        flags[1 + ranks.rank] = first_bad
        return ranks.sum(flags)

    @staticmethod
    def verdict(flags: list[float]) -> StepVerdict:
        """`agreement`'s flags, read on the host."""
        bad = {rank: round(at) for rank, at in enumerate(flags[1:]) if at}
        return StepVerdict(flags[0] > 0, bad)

    def hand_over(self) -> None:
        """Run the handler that was there before ours (submitit requeues), else exit with 128 + signal."""
        signum = self.received or signal.SIGTERM
        previous = self._previous.get(signum)
        self.uninstall()
        log.warning("stopping on %s after writing a checkpoint", signal.Signals(signum).name)
        if callable(previous):
            previous(signum, self._frame)
        sys.exit(128 + signum)
