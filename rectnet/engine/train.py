"""The training loop: config in, run directory out. Read top to bottom: `_train` is the whole story.

The engine knows nothing of activations or architectures: it gets a model from `build_model`, batches
from `rectnet.data`, and writes the run directory (checkpoints/, tb/, metrics.jsonl, results.json).
Under torchrun every rank runs this code; only rank 0 writes files, and metrics are sums of exact
counts over ranks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rectnet.config import ConfigError, TrainConfig, TrainerConfig, to_settings
from rectnet.data.batches import derived_seed
from rectnet.data.sources import Source, SourceContext, make_source
from rectnet.engine import checkpoint as ckpt
from rectnet.engine import rundir, stopping
from rectnet.engine.build import build_model
from rectnet.engine.distributed import (
    Dist,
    env_ranks,
    init_distributed,
    label_log_records,
    shutdown,
)
from rectnet.engine.env import git_state, hardware, versions
from rectnet.engine.evaluate import Evaluator
from rectnet.engine.fingerprint import GLOBAL_BATCH, ResumeMismatchError, check_resume, launch_fingerprint
from rectnet.engine.logging import Progress, RunLogger, elapsed, prelu_slopes, read_jsonl, write_json
from rectnet.engine.metrics import Counts, topk_hits
from rectnet.engine.optim import Schedule, make_optimizer, make_schedule, step_schedule
from rectnet.engine.preemption import StepVerdict, StopSignals
from rectnet.engine.runtime import Runtime, compile_model, make_runtime, rng_state, seed_everything, set_rng_state
from rectnet.engine.state import State
from rectnet.engine.stopping import StoppingRule

log = logging.getLogger("rectnet")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; no checkpoint is written after it."""


class NonFiniteStateError(NonFiniteLossError):
    """A step wrote NaN or inf into the weights or optimizer state (its loss was still finite); not saved."""


@dataclass
class Job:
    """Everything one training run holds, so the loop's functions take one argument, not ten."""

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
    rules: list[StoppingRule] = field(default_factory=list)  # asked after every epoch (rectnet.engine.stopping)
    stop: StopSignals = field(default_factory=StopSignals)
    logger: RunLogger | None = None  # rank 0's metrics.jsonl and TensorBoard

    def global_step(self, epoch: int, step: int) -> int:
        """TensorBoard's x axis: training steps since the run began (step `step` of epoch `epoch`)."""
        return (epoch - 1) * self.steps_per_epoch + step

    def save(self, is_best: bool = False) -> None:
        """Rank 0 writes last.pt (and best.pt); every rank contributes its RNG state first.

        A state holding NaN or inf is never written: with a huge learning rate one step can overflow the
        weights while its loss, computed before the update, was still finite. Every rank checks (their
        states are identical), so all stop together.
        """
        bad = ckpt.nonfinite_entries(self.model.state_dict(), self.optimizer.state_dict())
        if bad:
            s = self.state
            at = f"after epoch {s.epoch}" if s.step == 0 else f"at epoch {s.epoch + 1}, step {s.step}"
            raise NonFiniteStateError(
                f"the weights or optimizer state hold NaN or inf {at} ({', '.join(bad[:3])}): not saved; "
                f"{_last_good(self.run_dir)} Lower optim.lr or check the data."
            )
        rng = self.ranks.gather(rng_state(self.runtime.device))
        partial = self.ranks.gather(self.state.partial.as_tensor())
        if self.ranks.is_main:
            payload = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.runtime.scaler.state_dict() if self.runtime.scaler else None,
                **self.state.to_dict(partial),
                "rng": rng,
                "world_size": self.ranks.world_size,
                "config": self.config,
                "fingerprint": self.fingerprint,
                "data": self.data_state,
                "format": ckpt.CHECKPOINT_FORMAT,
            }
            # best.pt before last.pt: killed between the two, the resume redoes this epoch and rewrites best.pt
            if is_best:
                ckpt.atomic_save(payload, self.run_dir / "checkpoints" / "best.pt")
            ckpt.save_last(payload, self.run_dir / "checkpoints")
        self.ranks.barrier()
        self.stop.saved = (self.run_dir / "checkpoints" / "last.pt", _where(self.state))  # what a stop reports


def _where(state: State) -> str:
    """Where a checkpoint of `state` stands, as the messages of a stopped run say it."""
    return f"the end of epoch {state.epoch}" if state.step == 0 else f"epoch {state.epoch + 1}, step {state.step}"


def run(cfg: DictConfig) -> dict:
    """Train and evaluate as `cfg` says; returns (and rank 0 writes) results.json's content."""
    settings = to_settings(cfg)
    ranks = env_ranks()
    runtime = make_runtime(settings.trainer, ranks.local_rank, ranks.local_world_size)
    ranks = init_distributed(ranks, runtime.device, settings.trainer)
    label_log_records(ranks)
    run_dir = rundir.check_location(settings.run_dir)
    if ranks.gather(str(run_dir)) != [str(run_dir)] * ranks.world_size:
        raise ConfigError("ranks disagree on the run directory; pin it with hydra.run.dir=... or RECTNET_RUN_DIR")
    lock = rundir.claim_for(run_dir, ranks)  # before anything is written: another live run may own the folder
    stop = StopSignals(announce=ranks.is_main).install()  # SIGTERM, SIGUSR1/2 and Ctrl-C: save, then stop
    try:
        results = _train(settings, OmegaConf.to_container(cfg, resolve=True), run_dir, runtime, ranks, stop)
    except Exception as err:
        if ranks.is_main and not isinstance(err, ResumeMismatchError):  # the folder holds another run's record
            with contextlib.suppress(OSError):  # on a full disk this write fails too: keep the run's own error
                (run_dir / "FAILED").write_text(f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}")
        raise
    finally:
        stop.uninstall()
        shutdown()
        if lock is not None:
            lock.release()
    if ranks.is_main:
        (run_dir / "FAILED").unlink(missing_ok=True)
    return results


def _train(
    settings: TrainConfig, config: dict, run_dir: Path, runtime: Runtime, ranks: Dist, stop: StopSignals
) -> dict:
    trainer = settings.trainer
    per_process, global_batch = trainer.batch_sizes(ranks.world_size)
    _announce_batch(settings, per_process, global_batch, ranks.world_size)
    run_fingerprint = launch_fingerprint(config, ranks.world_size)
    resume = _agreed_resume(trainer.resume, run_dir / "checkpoints", ranks)  # fail fast on a bad path
    if resume is not None:  # before any data is read: a mismatch is refused in seconds, not after indexing
        changed = check_resume(resume[1]["fingerprint"], run_fingerprint, trainer.resume_allow, str(resume[0]))

    seed_everything(settings.seed)  # the same on every rank: identical initial weights
    where = SourceContext(
        runtime.device, ranks.rank, ranks.world_size, ranks.sum, ranks.setup_broadcast, ranks.local_world_size
    )
    source = make_source(settings, where, resume[1].get("data") if resume else None)
    job = _build_job(settings, config, run_dir, runtime, ranks, source, run_fingerprint, global_batch)
    job.stop = stop
    _check_room(job)  # before training: a checkpoint that cannot fit would fail after a whole segment
    seed_everything(settings.seed + ranks.rank)  # dropout masks differ between ranks
    if resume is not None:
        _restore(*resume, changed, job)

    n_params = sum(p.numel() for p in job.model.parameters())
    log.info(
        "model %s: %.3fM parameters; %d training / %d test images; %d rank(s) on %s",
        settings.model.name,
        n_params / 1e6,
        source.num_train,
        len(source.eval_sets["test"]),
        ranks.world_size,
        runtime.device,
    )
    if ranks.is_main:  # on resume it drops what an interrupted attempt logged after the checkpoint
        resumed_at = job.global_step(job.state.epoch + 1, job.state.step) if resume else 0
        job.logger = RunLogger(run_dir, settings.logger, job.state.epoch, resumed_at)
    logger = job.logger
    progress = Progress(trainer.progress if ranks.is_main else "none", trainer.log_every_steps)
    started = time.perf_counter()
    record: dict = {}

    for epoch in _epochs_left(job.state, trainer.epochs):
        lr = job.optimizer.param_groups[0]["lr"]
        train, images_per_s = _train_epoch(job, source, epoch, progress)
        held_out = source.eval_sets.get("val")
        val = job.evaluate(held_out)[0].summary() if held_out else {}
        # The final model's test logits; a stopping rule may make any epoch the last one.
        keep_logits = epoch == trainer.epochs or bool(job.rules)
        test_counts, test_logits = job.evaluate(source.eval_sets["test"], keep_logits=keep_logits)
        test = test_counts.summary()
        # The schedule and best.pt watch the held-out fold when there is one, so the test split stays unseen.
        watched = (val or test)["top1_err"]
        step_schedule(job.schedule, watched)

        record = {
            "epoch": epoch,
            "lr": lr,
            "time_s": round(time.perf_counter() - started, 3),
            "train/images_per_s": images_per_s,
            **{f"train/{k}": v for k, v in train.summary().items() if k != "count"},
            **{f"val/{k}": v for k, v in val.items()},
            **{f"test/{k}": v for k, v in test.items()},
        }
        is_best = watched < job.state.best_top1_err
        if is_best:
            job.state.best_top1_err, job.state.best_epoch = watched, epoch
        stop_reason = stopping.ask(job.rules, stopping.EpochEnd(epoch, is_best, val), job.state.records)
        if stop_reason:
            job.state.stopped_at = epoch
        job.state.epoch, job.state.step, job.state.position, job.state.partial = epoch, 0, 0, Counts()
        if logger:
            logger.epoch(record, job.model, job.global_step(epoch, job.steps_per_epoch))
        job.save(is_best)
        log.info(
            "epoch %d/%d: train loss %.4f, test top-1 err %.2f%%, top-5 err %.2f%%, %.0f img/s",
            epoch,
            trainer.epochs,
            record["train/loss"],
            test["top1_err"],
            test["top5_err"],
            record["train/images_per_s"],
        )
        skipped = {k: v for k, v in record.items() if k.endswith("/skipped")}
        if skipped:
            log.warning("corrupt images skipped (dataset.skip_corrupt=true) in epoch %d: %s", epoch, skipped)
        if stop_reason:
            log.info("%s: stopped after epoch %d", stop_reason, epoch)
            break

    results = _results(job, record, n_params, time.perf_counter() - started)
    if logger:
        if record:  # the final model's test logits: ensembles ("Vote", CReLU paper §3.1) average these
            ckpt.atomic_save(test_logits, run_dir / "test_logits.pt")
        write_json(run_dir / "results.json", results)
        logger.hparams(
            results["hparams"],
            {k: v for k, v in results["final"].items() if k in ("top1_err", "top5_err")}
            | {"best_top1_err": job.state.best_top1_err},
        )
        logger.close()
        _announce(results, run_dir, settings.logger.tensorboard)
    return results


def _last_good(run_dir: Path) -> str:
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "checkpoints/last.pt still holds the last good state."
    return "no checkpoint had been written yet."


def _epochs_left(state: State, epochs: int) -> range:
    """The epochs still to train: none once a stopping rule has ended the run (a resumed, stopped run)."""
    return range(0) if state.stopped_at else range(state.epoch + 1, epochs + 1)


def _build_job(
    settings: TrainConfig,
    config: dict,
    run_dir: Path,
    runtime: Runtime,
    ranks: Dist,
    source: Source,
    run_fingerprint: dict,
    global_batch: int,
) -> Job:
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
        rules,
    )


def _steps_per_epoch(trainer: TrainerConfig, source: Source) -> int:
    return min(len(source), trainer.max_steps_per_epoch or len(source))


def _train_epoch(job: Job, source: Source, epoch: int, progress: Progress) -> tuple[Counts, float]:
    """One epoch from the step the state says (0, or where a mid-epoch checkpoint stopped).

    The step itself never waits for the device: losses and top-k hits stay there, and the host reads them
    once per log interval, at the run's first step, before every checkpoint and at the epoch's last step
    (`_sync`), where the ranks also agree on stop signals and non-finite losses before anything is written.

    Returns the epoch's training counts summed over ranks, and the global images/s of this attempt.
    """
    trainer, runtime = job.settings.trainer, job.runtime
    steps = job.steps_per_epoch
    counts, done, position = job.state.partial, job.state.step, job.state.position
    already = counts.n  # images counted before a mid-epoch resume
    window = Window()
    job.forward.train()
    start = time.perf_counter()
    for step, (images, labels, skipped) in enumerate(source.train_epoch(epoch, position), start=done + 1):
        if step > steps:
            break
        counts.skipped += skipped
        if _any_rank_empty(job, len(labels)):  # every file of a rank's batch was corrupt and skipped
            continue
        with runtime.autocast():
            logits = job.forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        job.optimizer.zero_grad(set_to_none=True)
        if runtime.scaler is None:
            loss.backward()
            job.optimizer.step()
        else:
            runtime.scaler.scale(loss).backward()
            runtime.scaler.step(job.optimizer)
            runtime.scaler.update()
        job.schedule.after_step()
        window.add(step, loss, logits, labels)
        checkpoint = bool(trainer.checkpoint_every_steps) and step % trainer.checkpoint_every_steps == 0
        checkpoint = checkpoint and step < steps
        if not (checkpoint or step % trainer.log_every_steps == 0 or step == steps or (epoch, step) == (1, 1)):
            continue
        stopping = _sync(job, window, counts, epoch)
        rate = (counts.n - already) / max(time.perf_counter() - start, 1e-9)  # this rank's images/s
        for at, step_loss, epoch_mean, size in window.read:
            progress.update(
                epoch,
                trainer.epochs,
                at,
                steps,
                step_loss,
                epoch_mean,
                rate * job.ranks.world_size,
                (steps - at) * size / rate,
            )
        if job.logger:  # values already on the host: no synchronization of their own
            lr = job.optimizer.param_groups[0]["lr"]
            job.logger.interval(job.global_step(epoch, step), progress.recent_loss, lr, rate * job.ranks.world_size)
        window.clear()
        if stopping or checkpoint:
            job.state.epoch, job.state.step, job.state.partial = epoch - 1, step, counts
            job.state.position = position + (step - done) * job.global_batch  # skipped steps consumed theirs too
            if job.logger:  # what was logged up to the checkpoint is on disk with it (a resume purges the rest)
                job.logger.flush()
            job.save()
        if stopping:
            job.stop.hand_over()
    if window.steps:  # the last steps were skipped as corrupt: the ones before still count
        _sync(job, window, counts, epoch)
    progress.end_epoch()
    images_per_s = (counts.n - already) * job.ranks.world_size / elapsed(start, runtime.device)
    return Counts.from_tensor(job.ranks.sum(counts.as_tensor())), images_per_s


@dataclass
class Window:
    """The training steps since the host last read the device: their losses and top-k hits stay there."""

    steps: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    hits: torch.Tensor | None = None  # top-1, top-5 summed over the window
    read: list[tuple[int, float, float, int]] = field(default_factory=list)  # by `_sync`: step, loss, epoch mean, b

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.steps.append(step)
        self.sizes.append(len(labels))
        self.losses.append(loss.detach())
        hits = topk_hits(logits.detach(), labels)
        self.hits = hits if self.hits is None else self.hits + hits

    def clear(self) -> None:
        self.steps, self.sizes, self.losses, self.hits, self.read = [], [], [], None, []


def _sync(job: Job, window: Window, counts: Counts, epoch: int) -> bool:
    """The one host synchronization of a log interval: every rank learns whether any rank got a stop signal
    or saw a non-finite loss in the window (and then raises the same error, before anything is written),
    and the window's losses and hits join `counts`. Returns whether to stop (save, hand over)."""
    losses = torch.stack(window.losses).float()
    bad = ~torch.isfinite(losses)
    first_bad = torch.where(bad.any(), bad.int().argmax() + 1, 0)  # 1-based position in the window; 0: none
    flags = job.stop.agreement(job.ranks, first_bad)
    host = torch.cat([flags.double().to(losses.device), window.hits.double(), losses.double()]).tolist()
    n_flags = job.ranks.world_size + 1
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


def _any_rank_empty(job: Job, batch: int) -> bool:
    """Whether some rank's batch is empty (all its files corrupt, dataset.skip_corrupt): then every rank skips
    the step together, since one rank skipping DDP's backward leaves the others waiting in its all-reduce.
    Costs an all-reduce per step only when files can be skipped."""
    if not (job.ranks.enabled and job.settings.dataset.skip_corrupt):
        return batch == 0
    empty = bool(job.ranks.max(torch.tensor(int(batch == 0), device=job.ranks.device)))
    if empty and batch > 0:
        log.warning("another rank's batch was all corrupt files: every rank skips this step")
    return empty


def _check_room(job: Job) -> None:
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


def _agreed_resume(resume: str | None, checkpoint_dir: Path, ranks: Dist) -> tuple[Path, dict] | None:
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


def _restore(path: Path, payload: dict, changed: dict, job: Job) -> None:
    """Continue from `payload`, the checkpoint at `path`, whose fingerprint differs from this run's by `changed`
    (the keys trainer.resume_allow let through), on any number of ranks."""
    try:
        job.model.load_state_dict(payload["model"])
        job.optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ckpt.CheckpointError(
            f"the checkpoint does not fit this model/optimizer (was it trained with another model, activation "
            f"or width?): {err}"
        ) from None
    job.schedule.load_state_dict(payload["schedule"])
    if job.runtime.scaler is not None and payload["scaler"] is not None:
        job.runtime.scaler.load_state_dict(payload["scaler"])
    ranks, saved_ranks = job.ranks, len(payload["rng"])
    job.state = State.from_dict(payload, ranks.rank, ranks.world_size)
    state = job.state
    if saved_ranks == ranks.world_size:
        set_rng_state(payload["rng"][ranks.rank], job.runtime.device)
    else:  # batches and augmentation do not depend on it; dropout masks do: fresh streams, distinct per segment
        seed_everything(derived_seed(job.settings.seed, ranks.rank, state.epoch, state.position) % 2**32)
        log.warning(
            "checkpoint written by %d rank(s), resuming on %d: the data continues at sample %d of epoch %d's "
            "global order; dropout draws restart",
            saved_ranks,
            ranks.world_size,
            state.position,
            state.epoch + 1,
        )
    if GLOBAL_BATCH in changed:  # allowed on purpose: the data continues at the same sample, in larger/smaller steps
        state.step = state.position // job.global_batch
        log.warning("the global batch changed from %d to %d (trainer.resume_allow)", *changed[GLOBAL_BATCH])
    job.stop.saved = (path, _where(state))  # what a second Ctrl-C before the next save reports
    state.resumes.append(
        {
            "checkpoint": str(path),
            "epoch": state.epoch,
            "step": state.step,
            "position": state.position,
            "world_size": [saved_ranks, ranks.world_size],
            "changed": {key: list(values) for key, values in changed.items()},
        }
    )
    log.info(
        "resumed at epoch %d, step %d from %s%s",
        state.epoch + (state.step > 0),
        state.step,
        path,
        f" with {', '.join(changed)} changed (trainer.resume_allow)" if changed else "",
    )


def _announce_batch(settings: TrainConfig, per_process: int, global_batch: int, world_size: int) -> None:
    """The global batch is what the recipe's lr was chosen for: say it, and what it came from, at every start."""
    log.info(
        "batch: %d per process x %d process(es) = %d images per step (trainer.batch_size=%d counts %s); lr %g",
        per_process,
        world_size,
        global_batch,
        settings.trainer.batch_size,
        "the global batch" if settings.trainer.batch_scope == "global" else "per process",
        settings.optim.lr,
    )


def _hparams(settings: TrainConfig, world_size: int) -> dict:
    per_process, global_batch = settings.trainer.batch_sizes(world_size)
    return {
        "dataset": settings.dataset.name,
        "model": settings.model.name,
        "width": settings.model.width,
        "activation": settings.activation.name,
        "init": settings.init.name,
        "init_mode": settings.init.mode,
        "lr": settings.optim.lr,
        "weight_decay": settings.optim.weight_decay,
        "global_batch": global_batch,
        "batch_per_process": per_process,
        "epochs": settings.trainer.epochs,
        "seed": settings.seed,
    }


def _results(job: Job, last: dict, n_params: int, seconds: float) -> dict:
    final = {k.removeprefix("test/"): v for k, v in last.items() if k.startswith("test/")}
    if not final:  # resumed a finished run: nothing trained now, report the last logged epoch
        final = _last_logged(job.run_dir, job.state.epoch)
    final_val = {k.removeprefix("val/"): v for k, v in last.items() if k.startswith("val/")}
    results = {
        "status": "completed",
        "epochs": job.state.epoch,
        "final": final,
        **({"final_val": final_val} if final_val else {}),
        "best_top1_err": job.state.best_top1_err,  # on the held-out fold when there is one, else on test
        "best_epoch": job.state.best_epoch,
        **job.state.records,
        **({"stopped_at_epoch": job.state.stopped_at} if job.state.stopped_at else {}),
        "resumed_from": job.state.resumes,
        "selected_on": "val" if job.settings.dataset.num_folds else "test",
        "train_images_per_s": last.get("train/images_per_s"),
        "wall_time_s": round(seconds, 3),
        "params": n_params,
        "world_size": job.ranks.world_size,
        "run_dir": str(job.run_dir.resolve()),
        "hparams": _hparams(job.settings, job.ranks.world_size),
        "config": job.config,
        "git": git_state(),
        "versions": versions(),
        "hardware": hardware(job.runtime.device),
    }
    slopes = prelu_slopes(job.model)
    if slopes:
        results["prelu_slopes_mean"] = {name: sum(v) / len(v) for name, v in slopes.items()}
    return results


def _last_logged(run_dir: Path, epoch: int) -> dict:
    """The test metrics metrics.jsonl logged for `epoch`; {} if that line was lost (torn by a crash)."""
    last = next((r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("epoch") == epoch), {})
    return {k.removeprefix("test/"): v for k, v in last.items() if k.startswith("test/")}


def _announce(results: dict, run_dir: Path, tensorboard: bool) -> None:
    final = results["final"]
    if not final:  # a finished run resumed, whose metrics.jsonl lost its last epoch's line
        log.warning("no final metrics: metrics.jsonl holds no readable record of epoch %d", results["epochs"])
    else:
        _announce_final(final)
    log.info("run directory: %s", run_dir.resolve())
    if tensorboard:
        log.info("TensorBoard: tensorboard --logdir %s", (run_dir / "tb").resolve())


def _announce_final(final: dict) -> None:
    log.info(
        "finished: test top-1 error %.2f%% (accuracy %.2f%%), top-5 error %.2f%% (accuracy %.2f%%) on %d images",
        final["top1_err"],
        final["top1_acc"],
        final["top5_err"],
        final["top5_acc"],
        final["count"],
    )
