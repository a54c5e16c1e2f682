"""What one training run holds (`Job`) and how it is assembled from the config: the model with its DDP or
compiled wrapper, optimizer, schedule, evaluator and stopping rules.

The loop (`rectnet.engine.train`), the ranks' agreements (`rectnet.engine.agreement`) and the results record
(`rectnet.engine.record`) all read a run through its Job, so their functions take one argument, not ten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rectnet.config import TrainConfig, TrainerConfig
from rectnet.data.sources import Source
from rectnet.engine import stopping
from rectnet.engine.distributed import Dist
from rectnet.engine.optim import Schedule, make_optimizer, make_schedule
from rectnet.engine.preemption import StopSignals
from rectnet.engine.provenance import git_state
from rectnet.engine.run_log import RunLogger
from rectnet.engine.runtime import Runtime, compile_model
from rectnet.engine.scoring import Evaluator
from rectnet.engine.state import State
from rectnet.engine.stopping import StoppingRule
from rectnet.models.build import build_model


@dataclass
class Job:
    """Everything one training run holds."""

    settings: TrainConfig
    config: dict
    run_dir: Path
    runtime: Runtime
    ranks: Dist
    model: nn.Module  # the bare model: state_dict, PReLU slopes
    forward: nn.Module  # what computes: the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    state: State
    evaluate: Evaluator
    data_state: dict  # the source's preprocessing constants (mean/std or mean image), kept in checkpoints
    fingerprint: dict  # what defines the run (engine/fingerprint.py): a resume must match it
    global_batch: int  # images per SGD step over all ranks
    steps_per_epoch: int
    # the checkout's commit and dirtiness when the run was set up, as results.json records them: a commit made
    # while it trains is not the code it runs
    git: dict
    rules: list[StoppingRule] = field(default_factory=list)  # asked after every epoch (rectnet.engine.stopping)
    stop: StopSignals = field(default_factory=StopSignals)
    logger: RunLogger | None = None  # rank 0's metrics.jsonl and TensorBoard
    lsuv: dict = field(default_factory=dict)  # init=lsuv's record on a fresh run (rectnet.engine.data_init)

    def global_step(self, epoch: int, step: int) -> int:
        """TensorBoard's x axis: training steps since the run began (step `step` of epoch `epoch`)."""
        return (epoch - 1) * self.steps_per_epoch + step


def build_job(
    settings: TrainConfig,
    config: dict,
    run_dir: Path,
    runtime: Runtime,
    ranks: Dist,
    source: Source,
    run_fingerprint: dict,
    global_batch: int,
) -> Job:
    """A fresh run's Job (weights from the current RNG state: seed it the same on every rank first)."""
    trainer = settings.trainer
    steps_per_epoch = _steps_per_epoch(trainer, source)
    model = build_model(settings, settings.dataset.num_classes, source.in_chans)
    memory_format = torch.channels_last if trainer.channels_last else torch.preserve_format
    model = model.to(runtime.device, memory_format=memory_format)
    forward: nn.Module = model
    if ranks.enabled:
        # DDP averages gradients over ranks: with per-rank batch b this is the gradient of the global batch N*b.
        forward = DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    if trainer.compile:
        forward = compile_model(forward, runtime.device, ranks.enabled)
    optimizer = make_optimizer(model, settings.optim)
    evaluate = Evaluator(model, forward, runtime, ranks, settings.eval, settings.dataset.image_size)
    rules = stopping.make_rules(
        trainer, source.eval_sets, lambda: evaluate(source.eval_sets["train"])[0].summary()["loss"]
    )
    return Job(
        settings,
        config,
        run_dir,
        runtime,
        ranks,
        model,
        forward,
        optimizer,
        make_schedule(optimizer, settings.schedule, trainer.epochs, steps_per_epoch),
        State(),
        evaluate,
        source.state,
        run_fingerprint,
        global_batch,
        steps_per_epoch,
        git_state(),
        rules,
    )


def _steps_per_epoch(trainer: TrainerConfig, source: Source) -> int:
    return min(len(source), trainer.max_steps_per_epoch or len(source))
