"""Preemption and time limits: finish the step, write a checkpoint, then let the scheduler requeue.

SLURM warns a job before its time limit (submitit asks for SIGUSR2 by default, `#SBATCH --signal` often
sends SIGUSR1) and sends SIGTERM on preemption. `StopSignals` only records the signal; the training loop
reads `agreement()` once per log interval (one all-reduce, which also carries each rank's "a loss was not
finite" flag, so all ranks stop together), writes last.pt, and calls
`hand_over()`: the handler that was installed before ours runs (submitit's requeues the job and exits),
and a plain signal without one ends the process with 128 + signal number, its last line saying where the run
stopped and that the same command resumes it.

Ctrl-C (SIGINT) is such a signal too: the run stops at its next log interval with a checkpoint and exits 130
instead of dying in a KeyboardInterrupt traceback with nothing saved. A second Ctrl-C stops at once without
saving (the first one says so): the checkpoint files are only ever replaced by renames of complete files, so
an exit in the middle of a save leaves the previous checkpoint (or a complete `.last.pt.new`, which the next
start makes last.pt). A SIGINT that the process inherited as ignored (`nohup ... &`) stays ignored.

The signals are meant for the training process, but Slurm sends them to every process of the job step and a
terminal's Ctrl-C to the whole process group: DataLoader workers too. A worker dies of a SIGTERM from anyone
but its parent (PyTorch's worker handler), and the training process, which needs batches until its next log
interval, then fails with "DataLoader worker exited unexpectedly" instead of writing its checkpoint; a forked
worker also inherits our handlers, and announced each Ctrl-C once more. `shield_worker` (every worker's
`worker_init_fn`) and `workers_start_deaf_to_sigterm` (around their start) make the workers deaf to the
signals that others send; they end when their training process ends them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import NamedTuple, NoReturn

import torch

from rectnet.engine.distributed import Dist

log = logging.getLogger(__name__)

SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT") if hasattr(signal, name))


class Stop(NamedTuple):
    signal: int  # the stop signal of the lowest rank that received one
    ranks: tuple[int, ...]  # the ranks that received one


class StepVerdict(NamedTuple):
    stop: Stop | None  # some rank got a stop signal: write last.pt, hand over
    nonfinite: dict[int, int]  # rank -> 1-based position in the window of its first NaN/inf loss (empty: none)


class StopSignals:
    def __init__(self, announce: bool = True) -> None:
        self.received: int | None = None
        self._frame: FrameType | None = None
        self._previous = {}
        self.announce = announce  # this process says on stderr what happens (rank 0; the others stop silently)
        self.interrupts = 0  # Ctrl-Cs received
        self.saved: tuple[Path, str] | None = None  # the newest checkpoint and where the run stands in it

    def install(self) -> StopSignals:
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if sig == signal.SIGINT and previous == signal.SIG_IGN:
                continue  # started in the background of a shell (or nohup): Ctrl-C is not meant for it
            self._previous[sig] = previous
            signal.signal(sig, self._record)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                self._say(self._abandoned(), in_handler=True)
                raise SystemExit(128 + signum)
            self._say(
                "SIGINT: the run stops at its next log interval, after writing checkpoints/last.pt; press Ctrl-C "
                "again to stop at once without saving",
                in_handler=True,
            )
        self.received, self._frame = signum, frame

    def _abandoned(self) -> str:
        if self.saved is None:
            return "stopped on a second SIGINT without saving: no checkpoint had been written yet"
        path, where = self.saved
        return (
            f"stopped on a second SIGINT without saving: {path} holds the last checkpoint ({where}); the same "
            "command resumes from it"
        )

    def _say(self, line: str, in_handler: bool = False) -> None:
        """One line on stderr (this process's last, when it exits). A signal handler writes to the file
        descriptor: the interrupted code may be inside a write to sys.stderr, which is not reentrant."""
        if not self.announce:
            return
        with contextlib.suppress(OSError, ValueError):
            if in_handler:
                os.write(2, f"{line}\n".encode())
            else:
                print(line, file=sys.stderr, flush=True)

    def agreement(self, ranks: Dist, first_bad: torch.Tensor) -> torch.Tensor:
        """[per rank the stop signal it received (0: none), then per rank the 1-based position in the step window
        of its first non-finite loss (0: none)], summed over ranks (one all-reduce; none on a single process;
        each rank writes only its own slots, so the sum is exact). A device tensor: the caller reads it in its
        one host transfer (`verdict`).

        A rank that left a step alone (raising on its NaN) would leave the others in DDP's gradient
        all-reduce until the NCCL timeout; agreeing first makes every rank stop with the same error.
        """
        flags = torch.zeros(2 * ranks.world_size, dtype=torch.int64, device=first_bad.device)
        flags[ranks.rank] = self.received or 0
        flags[ranks.world_size + ranks.rank] = first_bad
        return ranks.sum(flags)

    @staticmethod
    def verdict(flags: list[float]) -> StepVerdict:
        """`agreement`'s flags, read on the host."""
        world = len(flags) // 2
        signals = {rank: round(signum) for rank, signum in enumerate(flags[:world]) if signum}
        bad = {rank: round(at) for rank, at in enumerate(flags[world:]) if at}
        stop = Stop(signals[min(signals)], tuple(sorted(signals))) if signals else None
        return StepVerdict(stop, bad)

    def hand_over(self, stop: Stop) -> NoReturn:
        """Run the handler that was there before ours (submitit requeues), else exit with 128 + signal, the last
        line saying where the run stopped (`saved`, set by the save just before) and how to resume it. A rank
        that received no signal itself acts on the one that stopped the run (`stop`): a time-limit warning
        that reached only another rank still makes rank 0 requeue."""
        signum = self.received or stop.signal
        previous = self._previous.get(signum)
        name = signal.Signals(signum).name
        source = "" if self.received else f" (received by rank(s) {', '.join(map(str, stop.ranks))})"
        log.warning("stopping on %s%s after writing a checkpoint", name, source)
        if callable(previous) and previous is not signal.default_int_handler:  # Python's: a KeyboardInterrupt
            self.uninstall()
            previous(signum, self._frame)
        if self.saved is not None:
            path, where = self.saved
            self._say(f"stopped on {name} at {where}: {path} holds it; the same command resumes")
        raise SystemExit(128 + signum)


@contextlib.contextmanager
def workers_start_deaf_to_sigterm() -> Iterator[None]:
    """Processes started inside the block (DataLoader workers) start with SIGTERM blocked: a signal mask is
    inherited by fork and kept by exec, so every thread a worker will have blocks it, even native ones started
    before its `worker_init_fn` (`shield_worker` then takes SIGTERM on one thread of its own). This thread's
    mask is back as it was after the block; a SIGTERM that came meanwhile is delivered then."""
    if not hasattr(signal, "sigwaitinfo"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shield_worker(worker_id: int) -> None:
    """A DataLoader worker's `worker_init_fn`: SIGINT, SIGUSR1 and SIGUSR2 are ignored (module docstring).
    SIGTERM is also how the training process ends its workers (DataLoader's shutdown, multiprocessing's exit,
    which waits for them), so one thread takes it, with its sender: from the parent, the worker exits (as
    PyTorch's own worker handler does); from anyone else, it is ignored. That needs SIGTERM blocked in every
    other thread (`workers_start_deaf_to_sigterm`); without sigwaitinfo (macOS) SIGTERM is left to PyTorch."""
    for sig in SIGNALS:
        if sig != signal.SIGTERM:
            signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        parent = os.getppid()
        threading.Thread(target=_exit_on_parents_sigterm, args=(parent,), name="rectnet-sigterm", daemon=True).start()


def _exit_on_parents_sigterm(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
