"""What the ranks agree on, so that they stop, skip and resume together.

Under torchrun every rank runs the loop. A rank that raised, skipped a step or resumed from another file on
its own would leave the others waiting in DDP's next all-reduce (a hang until the process group's timeout),
or train other weights without a word. So every decision that ends or redirects training is taken the same
way on every rank; with one process each one is the plain check:

* the training window (`Window`, `read_window`): the one host synchronization of a log interval, where a
  stop signal or a non-finite loss on any rank becomes every rank's, before anything is written;
* an empty batch (`any_rank_empty`): every file of one rank's batch corrupt, and every rank skips the step;
* a state holding NaN or inf before a save (`check_finite_state`): the ranks' states are identical, so each
  finds the same and all stop together;
* room for the checkpoints (`check_room`) and the checkpoint to resume from (`agreed_resume`): rank 0 looks,
  and every rank acts on what it found.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rectnet.engine import checkpoint as ckpt
from rectnet.engine.distributed import Dist
from rectnet.engine.job import Job
from rectnet.engine.metrics import Counts, topk_hits
from rectnet.engine.preemption import StepVerdict, Stop, StopSignals

log = logging.getLogger("rectnet")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; no checkpoint is written after it."""


class NonFiniteStateError(NonFiniteLossError):
    """A step wrote NaN or inf into the weights or optimizer state (its loss was still finite); not saved."""


@dataclass
class Window:
    """The training steps since the host last read the device: their losses and top-k hits stay there."""

    steps: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    hits: torch.Tensor | None = None  # top-1, top-5 summed over the window
    read: list[tuple[int, float, float, int]] = field(default_factory=list)  # by `read_window`: step, loss, mean, b

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.steps.append(step)
        self.sizes.append(len(labels))
        self.losses.append(loss.detach())
        hits = topk_hits(logits.detach(), labels)
        self.hits = hits if self.hits is None else self.hits + hits

    def clear(self) -> None:
        self.steps, self.sizes, self.losses, self.hits, self.read = [], [], [], None, []


def read_window(job: Job, window: Window, counts: Counts, epoch: int) -> Stop | None:
    """The one host synchronization of a log interval: every rank learns whether any rank got a stop signal
    or saw a non-finite loss in the window (and then raises the same error, before anything is written),
    and the window's losses and hits join `counts`. Returns the stop signal to act on (save, hand over), if any."""
    losses = torch.stack(window.losses).float()
    bad = ~torch.isfinite(losses)
    first_bad = torch.where(bad.any(), bad.int().argmax() + 1, 0)  # 1-based position in the window; 0: none
    flags = job.stop.agreement(job.ranks, first_bad)
    host = torch.cat([flags.double().to(losses.device), window.hits.double(), losses.double()]).tolist()
    n_flags = 2 * job.ranks.world_size
    flags_read, (top1, top5), values = host[:n_flags], host[n_flags : n_flags + 2], host[n_flags + 2 :]
    verdict = StopSignals.verdict(flags_read)
    if verdict.nonfinite:
        _raise_nonfinite(job, epoch, window, verdict, values)
    for step, size, value in zip(window.steps, window.sizes, values, strict=True):
        counts.add_batch(value * size, 0, 0, size)  # step by step, as the loss sum was always accumulated
        window.read.append((step, value, counts.loss_sum / counts.n, size))
    counts.add_batch(0.0, round(top1), round(top5), 0)
    if epoch == 1 and window.steps[0] == 1:
        _check_initial_loss(values[0], job.settings.dataset.num_classes)
    return verdict.stop


def _raise_nonfinite(job: Job, epoch: int, window: Window, verdict: StepVerdict, values: list[float]) -> None:
    """The same message on every rank, naming the window's first bad step; a single process names the value."""
    at = min(verdict.nonfinite.values()) - 1
    what = f"not finite on rank(s) {sorted(verdict.nonfinite)}" if job.ranks.enabled else str(values[at])
    raise NonFiniteLossError(
        f"training loss is {what} at epoch {epoch}, step {window.steps[at]}: stopped before writing anything; "
        f"{_last_good(job.run_dir)} Lower optim.lr or check the data."
    )


def _check_initial_loss(loss: float, num_classes: int) -> None:
    """A first loss far above chance means large logits at init: the sharp start that makes SGD diverge."""
    chance = math.log(num_classes)
    if loss > 2 * chance:
        log.warning(
            "the first training loss is %.4g, far above chance (ln %d = %.3g): the initial logits are large and "
            "SGD may diverge at this learning rate. Check the recipe before a long run: "
            "python -m rectnet.analysis.sharpness <the same overrides>",
            loss,
            num_classes,
            chance,
        )


def any_rank_empty(job: Job, batch: int) -> bool:
    """Whether some rank's batch is empty (all its files corrupt, dataset.skip_corrupt): then every rank skips
    the step together, since one rank skipping DDP's backward leaves the others waiting in its all-reduce.
    Costs an all-reduce per step only when files can be skipped."""
    if not (job.ranks.enabled and job.settings.dataset.skip_corrupt):
        return batch == 0
    empty = bool(job.ranks.max(torch.tensor(int(batch == 0), device=job.ranks.device)))
    if empty and batch > 0:
        log.warning("another rank's batch was all corrupt files: every rank skips this step")
    return empty


def check_finite_state(job: Job) -> None:
    """Raise NonFiniteStateError if the weights or optimizer state hold NaN or inf: such a state is never saved.
    With a huge learning rate one step can overflow the weights while its loss, computed before the update,
    was still finite."""
    bad = ckpt.nonfinite_entries(job.model.state_dict(), job.optimizer.state_dict())
    if bad:
        s = job.state
        at = f"after epoch {s.epoch}" if s.step == 0 else f"at epoch {s.epoch + 1}, step {s.step}"
        raise NonFiniteStateError(
            f"the weights or optimizer state hold NaN or inf {at} ({', '.join(bad[:3])}): not saved; "
            f"{_last_good(job.run_dir)} Lower optim.lr or check the data."
        )


def _last_good(run_dir: Path) -> str:
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "checkpoints/last.pt still holds the last good state."
    return "no checkpoint had been written yet."


def check_room(job: Job) -> None:
    """Rank 0 checks that this model's checkpoints fit on the run directory's disk (checkpoint.check_room);
    every rank raises if not (one rank training on alone would wait in DDP's all-reduce)."""
    error = None
    if job.ranks.is_main:
        size = ckpt.estimated_size(job.model, job.optimizer, job.ranks.world_size)
        try:
            ckpt.check_room(job.run_dir / "checkpoints", size)
        except ckpt.CheckpointWriteError as err:
            error = str(err)
    error = job.ranks.broadcast(error)
    if error is not None:
        raise ckpt.CheckpointWriteError(error)


def agreed_resume(resume: str | None, checkpoint_dir: Path, ranks: Dist) -> tuple[Path, dict] | None:
    """(the checkpoint, its content), or None for a fresh start. Rank 0 chooses the file (last.pt, or prev.pt
    when last.pt is damaged) and every rank loads that file: ranks resolving it themselves could pick different
    files (a stale NFS entry, a fallback), and DDP's construction-time broadcast happens before the load, so
    they would train different weights silently. Rank 0 first completes a checkpoint rotation that a kill
    interrupted (its newest state is in `.last.pt.new`), whatever `resume` says: the run writes there."""
    chosen, choice = None, (None, None)  # choice: (path, error) as rank 0 sends it
    if ranks.is_main:
        try:
            ckpt.finish_rotation(checkpoint_dir)
            chosen = ckpt.choose_resume(resume, checkpoint_dir)
            choice = (str(chosen[0]) if chosen else None, None)
        except ckpt.CheckpointError as err:
            choice = (None, str(err))
    path, error = ranks.broadcast(choice)
    if error is not None:
        raise ckpt.CheckpointError(error if ranks.is_main else f"rank 0 could not resume: {error}")
    if ranks.is_main or path is None:
        return chosen
    return Path(path), ckpt.load(path)
