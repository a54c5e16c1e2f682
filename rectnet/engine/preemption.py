"""Preemption and time limits: finish the step, write a checkpoint, then let the scheduler requeue.

SLURM warns a job before its time limit (submitit asks for SIGUSR2 by default, `#SBATCH --signal` often
sends SIGUSR1) and sends SIGTERM on preemption. `StopSignals` only records the signal; the training loop
asks `requested()` after every step (all ranks agree through an all-reduce), writes last.pt, and calls
`hand_over()`: the handler that was installed before ours runs (submitit's requeues the job and exits),
and a plain signal without one ends the process with 128 + signal number.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import torch

from rectnet.engine.distributed import Dist

log = logging.getLogger(__name__)

SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2", "SIGTERM") if hasattr(signal, name))


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
        if not ranks.enabled:
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else self.received], device=device)
        return bool(ranks.max(flag).item())

    def hand_over(self) -> None:
        """Run the handler that was there before ours (submitit requeues), else exit with 128 + signal."""
        signum = self.received or signal.SIGTERM
        previous = self._previous.get(signum)
        self.uninstall()
        log.warning("stopping on %s after writing a checkpoint", signal.Signals(signum).name)
        if callable(previous):
            previous(signum, self._frame)
        sys.exit(128 + signum)
