"""Stopping rules: what a recipe's protocol asks of the loop after each epoch, kept out of the generic loop.

After every epoch the loop hands each rule the epoch's outcome (`EpochEnd`); a rule may write plain numbers
into `State.records` (saved in checkpoints, reported in results.json) and may end the run by returning the
reason. A run a rule ended stays ended: resumed, it trains nothing more (`State.stopped_at`).

The CReLU paper's "Single" protocol (Shang et al. 2016 §3.1: one model trained on all training images, its
length chosen on a held-out fold; scripts/reproduce/single.sh) is two runs of two rules:

* stage 1 (`trainer.record_train_loss_at_best`): train with a fold held out and record the loss on the
  training images at the epoch of the best held-out error (`RecordTrainLossAtBest`);
* stage 2 (`trainer.stop_at_val_loss`): train on every image and stop once the held-out fold's loss reaches
  stage 1's training loss (`StopAtValLoss`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rectnet.config import ConfigError, TrainerConfig


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    is_best: bool  # the watched error (held-out fold, else test) is the best so far
    val: Mapping[str, float]  # the held-out fold's metrics; empty without one


class StoppingRule(Protocol):
    def after_epoch(self, end: EpochEnd, records: dict[str, float]) -> str | None:
        """Record what the rule records; return why the run stops now, or None to go on."""
        ...


@dataclass(frozen=True)
class RecordTrainLossAtBest:
    """ "Single" stage 1: at each new best held-out error, the loss on the training images (the target of stage
    2), evaluated unaugmented in eval mode by `train_loss`. Never stops the run."""

    train_loss: Callable[[], float]

    def after_epoch(self, end: EpochEnd, records: dict[str, float]) -> str | None:
        if end.is_best:
            records["train_loss_at_best"] = self.train_loss()
        return None


@dataclass(frozen=True)
class StopAtValLoss:
    """ "Single" stage 2: stop once the held-out loss is at or below `target` (stage 1's training loss)."""

    target: float

    def after_epoch(self, end: EpochEnd, records: dict[str, float]) -> str | None:
        loss = end.val["loss"]
        return f"held-out loss {loss:.4f} <= trainer.stop_at_val_loss" if loss <= self.target else None


def make_rules(trainer: TrainerConfig, eval_sets: Mapping, train_loss: Callable[[], float]) -> list[StoppingRule]:
    """The rules `trainer` asks for, checked against the evaluation sets they need; `train_loss` evaluates the
    training split ("train" in `eval_sets`, present when record_train_loss_at_best is set)."""
    if trainer.stop_at_val_loss is not None and "val" not in eval_sets:
        raise ConfigError("trainer.stop_at_val_loss needs a held-out fold (dataset.num_folds, dataset.fold)")
    if trainer.record_train_loss_at_best and "train" not in eval_sets:
        raise ConfigError("trainer.record_train_loss_at_best is for tensor datasets (CIFAR, synthetic)")
    rules: list[StoppingRule] = []
    if trainer.record_train_loss_at_best:
        rules.append(RecordTrainLossAtBest(train_loss))
    if trainer.stop_at_val_loss is not None:
        rules.append(StopAtValLoss(trainer.stop_at_val_loss))
    return rules


def ask(rules: Sequence[StoppingRule], end: EpochEnd, records: dict[str, float]) -> str | None:
    """Every rule sees the epoch (so each records what it records); the first reason to stop, if any."""
    reasons = [rule.after_epoch(end, records) for rule in rules]
    return next((reason for reason in reasons if reason), None)
