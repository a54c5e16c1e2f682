"""The training loop: config in, run directory out. Read top to bottom: `run` is the whole story.

The engine knows nothing of activations or architectures: it gets a model from `build_model`, batches
from `rectnet.data`, and writes the run directory (checkpoints/, tb/, metrics.jsonl, results.json).
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rectnet.config import TrainConfig, to_settings
from rectnet.data import BatchAugment, Split, TrainBatches, eval_batches, load_dataset
from rectnet.engine import checkpoint as ckpt
from rectnet.engine.build import build_model
from rectnet.engine.env import git_state, hardware, versions
from rectnet.engine.logging import Progress, RunLogger, elapsed, prelu_slopes, write_json
from rectnet.engine.metrics import Counts
from rectnet.engine.optim import make_optimizer, make_schedule, step_schedule
from rectnet.engine.runtime import Runtime, compile_model, make_runtime, rng_state, seed_everything, set_rng_state

log = logging.getLogger("rectnet")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; no checkpoint is written after it."""


@dataclass
class State:
    """What a checkpoint restores."""

    epoch: int = 0  # epochs completed
    best_top1_err: float = math.inf
    best_epoch: int = 0


def run(cfg: DictConfig) -> dict:
    """Train and evaluate as `cfg` says; returns (and writes) results.json's content."""
    settings = to_settings(cfg)
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        results = _train(settings, OmegaConf.to_container(cfg, resolve=True), run_dir)
    except Exception as err:
        (run_dir / "FAILED").write_text(f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}")
        raise
    (run_dir / "FAILED").unlink(missing_ok=True)
    return results


def _train(settings: TrainConfig, config: dict, run_dir: Path) -> dict:
    trainer = settings.trainer
    runtime = make_runtime(trainer)
    resume = ckpt.resolve_resume(trainer.resume, run_dir / "checkpoints")  # fail fast on a bad path

    seed_everything(settings.seed)
    splits = load_dataset(settings.dataset, settings.seed)
    if settings.dataset.on_device:
        splits.train, splits.test = splits.train.to(runtime.device), splits.test.to(runtime.device)
    augment = _augment(settings, splits.channel_stats())
    batches = TrainBatches(splits.train, trainer.batch_size, augment, settings.seed)

    model = build_model(settings, settings.dataset.num_classes, in_chans=splits.train.images.shape[1])
    model = model.to(
        runtime.device, memory_format=torch.channels_last if trainer.channels_last else torch.preserve_format
    )
    optimizer = make_optimizer(model, settings.optim)
    schedule = make_schedule(optimizer, settings.schedule)
    state = State()
    if resume is not None:
        state = _restore(resume, model, optimizer, schedule, runtime)
        log.info("resumed from epoch %d (best top-1 error %.2f%%)", state.epoch, state.best_top1_err)
    forward = compile_model(model, runtime.device) if trainer.compile else model

    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s: %.3fM parameters; %d training / %d test images on %s",
        settings.model.name,
        n_params / 1e6,
        len(splits.train),
        len(splits.test),
        runtime.device,
    )
    logger = RunLogger(run_dir, settings.logger.tensorboard, settings.logger.slope_histograms, state.epoch)
    progress = Progress(trainer.progress, trainer.log_every_steps)
    steps = min(len(batches), trainer.max_steps_per_epoch or len(batches))
    started = time.perf_counter()
    record: dict = {}

    for epoch in range(state.epoch + 1, trainer.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train, seconds = _train_epoch(
            forward, model, batches, steps, optimizer, runtime, epoch, trainer.epochs, progress
        )
        test = evaluate(forward, model, splits.test, trainer.eval_batch_size, augment, runtime).summary()
        step_schedule(schedule, test["top1_err"])

        record = {
            "epoch": epoch,
            "lr": lr,
            "time_s": round(time.perf_counter() - started, 3),
            "train/images_per_s": train.n / seconds,
            **{f"train/{k}": v for k, v in train.summary().items() if k != "count"},
            **{f"test/{k}": v for k, v in test.items()},
        }
        is_best = test["top1_err"] < state.best_top1_err
        if is_best:
            state.best_top1_err, state.best_epoch = test["top1_err"], epoch
        state.epoch = epoch
        logger.epoch(record, model)
        _save(run_dir / "checkpoints", model, optimizer, schedule, runtime, state, config, is_best)
        log.info(
            "epoch %d/%d: train loss %.4f, test top-1 err %.2f%%, top-5 err %.2f%%, %.0f img/s",
            epoch,
            trainer.epochs,
            record["train/loss"],
            test["top1_err"],
            test["top5_err"],
            record["train/images_per_s"],
        )

    results = _results(
        settings, config, run_dir, model, runtime, state, record, n_params, time.perf_counter() - started
    )
    write_json(run_dir / "results.json", results)
    logger.hparams(
        _hparams(settings),
        {k: results["final"][k] for k in ("top1_err", "top5_err")} | {"best_top1_err": state.best_top1_err},
    )
    logger.close()
    final = results["final"]
    log.info(
        "finished: test top-1 error %.2f%% (accuracy %.2f%%), top-5 error %.2f%% (accuracy %.2f%%) on %d images",
        final["top1_err"],
        final["top1_acc"],
        final["top5_err"],
        final["top5_acc"],
        final["count"],
    )
    log.info("run directory: %s", run_dir.resolve())
    if settings.logger.tensorboard:
        log.info("TensorBoard: tensorboard --logdir %s", (run_dir / "tb").resolve())
    return results


def _augment(settings: TrainConfig, stats: tuple[list[float], list[float]]) -> BatchAugment:
    data = settings.dataset
    channels = len(stats[0])
    mean, std = (
        (torch.tensor(stats[0]), torch.tensor(stats[1]))
        if data.normalize
        else (torch.zeros(channels), torch.ones(channels))
    )
    return BatchAugment(mean, std, data.flip, data.crop_padding, data.padding_mode, settings.trainer.channels_last)


def _train_epoch(
    forward: nn.Module,
    model: nn.Module,
    batches: TrainBatches,
    steps: int,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    epoch: int,
    epochs: int,
    progress: Progress,
) -> tuple[Counts, float]:
    model.train()
    counts = Counts()
    start = time.perf_counter()
    for step, (images, labels) in enumerate(batches.epoch(epoch), start=1):
        with runtime.autocast():
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {epoch}, step {step}: stopped before writing anything; "
                "checkpoints/last.pt still holds the last good epoch. Lower optim.lr or check the data."
            )
        optimizer.zero_grad(set_to_none=True)
        if runtime.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            runtime.scaler.scale(loss).backward()
            runtime.scaler.step(optimizer)
            runtime.scaler.update()
        counts.add(loss.item() * len(labels), logits.detach(), labels)
        rate = counts.n / (time.perf_counter() - start)
        progress.update(
            epoch, epochs, step, steps, counts.loss_sum / counts.n, rate, (steps - step) * len(labels) / rate
        )
        if step == steps:
            break
    progress.end_epoch()
    return counts, elapsed(start, runtime.device)


@torch.inference_mode()
def evaluate(
    forward: nn.Module, model: nn.Module, split: Split, batch_size: int, augment: BatchAugment, runtime: Runtime
) -> Counts:
    """Loss and top-1/top-5 hits over every sample of `split`, each exactly once."""
    model.eval()
    counts = Counts()
    for images, labels in eval_batches(split, batch_size, augment):
        with runtime.autocast():
            logits = forward(images).float()
        counts.add(F.cross_entropy(logits, labels, reduction="sum").item(), logits, labels)
    if counts.n != len(split):
        raise RuntimeError(f"evaluated {counts.n} samples, the split has {len(split)}")
    return counts


def _save(
    folder: Path, model: nn.Module, optimizer, schedule, runtime: Runtime, state: State, config: dict, is_best: bool
) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": runtime.scaler.state_dict() if runtime.scaler else None,
        "epoch": state.epoch,
        "step": 0,
        "best_top1_err": state.best_top1_err,
        "best_epoch": state.best_epoch,
        "rng": rng_state(),
        "config": config,
        "format": ckpt.CHECKPOINT_FORMAT,
    }
    last = ckpt.save_last(payload, folder)
    if is_best:
        ckpt.atomic_save(payload, folder / "best.pt")
    log.debug("saved %s", last)


def _restore(payload: dict, model: nn.Module, optimizer, schedule, runtime: Runtime) -> State:
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ckpt.CheckpointError(
            f"the checkpoint does not fit this model/optimizer (was it trained with another model, activation "
            f"or width?): {err}"
        ) from None
    schedule.load_state_dict(payload["schedule"])
    if runtime.scaler is not None and payload["scaler"] is not None:
        runtime.scaler.load_state_dict(payload["scaler"])
    set_rng_state(payload["rng"])
    return State(payload["epoch"], payload["best_top1_err"], payload.get("best_epoch", 0))


def _hparams(settings: TrainConfig) -> dict:
    return {
        "dataset": settings.dataset.name,
        "model": settings.model.name,
        "width": settings.model.width,
        "activation": settings.activation.name,
        "init": settings.init.name,
        "init_mode": settings.init.mode,
        "lr": settings.optim.lr,
        "weight_decay": settings.optim.weight_decay,
        "batch_size": settings.trainer.batch_size,
        "epochs": settings.trainer.epochs,
        "seed": settings.seed,
    }


def _results(
    settings: TrainConfig,
    config: dict,
    run_dir: Path,
    model: nn.Module,
    runtime: Runtime,
    state: State,
    last: dict,
    n_params: int,
    seconds: float,
) -> dict:
    final = {k.removeprefix("test/"): v for k, v in last.items() if k.startswith("test/")}
    if not final:  # resumed a finished run: nothing trained now, report the checkpoint's epoch from metrics.jsonl
        final = _last_logged(run_dir)
    results = {
        "status": "completed",
        "epochs": state.epoch,
        "final": final,
        "best_top1_err": state.best_top1_err,
        "best_epoch": state.best_epoch,
        "train_images_per_s": last.get("train/images_per_s"),
        "wall_time_s": round(seconds, 3),
        "params": n_params,
        "run_dir": str(run_dir.resolve()),
        "hparams": _hparams(settings),
        "config": config,
        "git": git_state(),
        "versions": versions(),
        "hardware": hardware(runtime.device),
    }
    slopes = prelu_slopes(model)
    if slopes:
        results["prelu_slopes_mean"] = {name: sum(v) / len(v) for name, v in slopes.items()}
    return results


def _last_logged(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    return {k.removeprefix("test/"): v for k, v in last.items() if k.startswith("test/")}
