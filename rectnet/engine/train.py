"""The training loop: config in, run directory out. Read top to bottom: `_train` is the whole story.

The engine knows nothing of activations or architectures: it gets a model from `build_model` (through
`rectnet.engine.job`), batches from `rectnet.data`, and writes the run directory (checkpoints/, tb/,
metrics.jsonl, results.json). Under torchrun every rank runs this code; only rank 0 writes files, metrics are
sums of exact counts over ranks, and whatever stops, skips or resumes is agreed by all ranks
(`rectnet.engine.agreement`). What the run records and announces is `rectnet.engine.record`'s.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from pathlib import Path

import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from rectnet.config import ConfigError, TrainConfig, to_settings
from rectnet.data.sources import Source, SourceContext, make_source
from rectnet.engine import checkpoint as ckpt
from rectnet.engine import rundir, stopping
from rectnet.engine.agreement import (
    Window,
    agreed_resume,
    any_rank_empty,
    check_finite_state,
    check_room,
    read_window,
)
from rectnet.engine.curvature import Sharpness, flat_average, lr_limit, watch_step
from rectnet.engine.data_init import run_lsuv
from rectnet.engine.distributed import Dist, env_ranks, init_distributed, label_log_records, shutdown
from rectnet.engine.fingerprint import GLOBAL_BATCH, ResumeMismatchError, check_resume, launch_fingerprint
from rectnet.engine.job import Job, build_job
from rectnet.engine.metrics import Counts
from rectnet.engine.optim import step_schedule
from rectnet.engine.preemption import StopSignals
from rectnet.engine.record import announce_batch, announce_epoch, attempt_record, run_results, write_results
from rectnet.engine.run_log import Progress, RunLogger, elapsed
from rectnet.engine.runtime import Runtime, make_runtime, seed_everything
from rectnet.engine.state import State, restore_rng, rng_state

log = logging.getLogger("rectnet")


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
    announce_batch(settings, per_process, global_batch, ranks.world_size)
    run_fingerprint = launch_fingerprint(config, ranks.world_size)
    resume = agreed_resume(trainer.resume, run_dir / "checkpoints", ranks)  # fail fast on a bad path
    if resume is not None:  # before any data is read: a mismatch is refused in seconds, not after indexing
        changed = check_resume(resume[1]["fingerprint"], run_fingerprint, trainer.resume_allow, str(resume[0]))

    seed_everything(settings.seed)  # the same on every rank: identical initial weights
    where = SourceContext(
        runtime.device, ranks.rank, ranks.world_size, ranks.sum, ranks.setup_broadcast, ranks.local_world_size
    )
    source = make_source(settings, where, resume[1]["data"] if resume else None)
    job = build_job(settings, config, run_dir, runtime, ranks, source, run_fingerprint, global_batch)
    job.stop = stop
    check_room(job)  # before training: a checkpoint that cannot fit would fail after a whole segment
    if resume is None and settings.init.name == "lsuv":  # once, before step 0: a resume has the weights
        job.lsuv = run_lsuv(settings, job.model, source, ranks, global_batch)
    seed_everything(settings.seed + ranks.rank)  # dropout masks differ between ranks
    if resume is not None:
        _restore(*resume, changed, job)
    job.state.attempts.append(attempt_record(job))

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
    progress = Progress(trainer.progress if ranks.is_main else "none", trainer.log_every_steps)
    started = time.perf_counter()
    record: dict = {}
    test_logits = None

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
        if job.logger:
            job.logger.epoch(record, job.model, job.global_step(epoch, job.steps_per_epoch))
        _save(job, is_best)
        announce_epoch(record, trainer.epochs)
        if stop_reason:
            log.info("%s: stopped after epoch %d", stop_reason, epoch)
            break

    results = run_results(job, record, n_params, time.perf_counter() - started)
    if job.logger:
        write_results(job, results, test_logits)
    return results


def _save(job: Job, is_best: bool = False) -> None:
    """Rank 0 writes last.pt (and best.pt); every rank contributes its RNG state and partial counts first.
    A state holding NaN or inf is never written: every rank checks (`check_finite_state`), so all stop together."""
    check_finite_state(job)
    rng = job.ranks.gather(rng_state(job.runtime.device))
    partial = job.ranks.gather(job.state.partial.as_tensor())
    if job.ranks.is_main:
        payload = {
            "model": job.model.state_dict(),
            "optimizer": job.optimizer.state_dict(),
            "schedule": job.schedule.state_dict(),
            "scaler": job.runtime.scaler.state_dict() if job.runtime.scaler else None,
            **job.state.to_dict(partial),
            "rng": rng,
            "world_size": job.ranks.world_size,
            "config": job.config,
            "fingerprint": job.fingerprint,
            "data": job.data_state,
            "format": ckpt.CHECKPOINT_FORMAT,
        }
        # best.pt before last.pt: killed between the two, the resume redoes this epoch and rewrites best.pt
        if is_best:
            ckpt.atomic_save(payload, job.run_dir / "checkpoints" / "best.pt")
        ckpt.save_last(payload, job.run_dir / "checkpoints")
    job.ranks.barrier()
    job.stop.saved = (job.run_dir / "checkpoints" / "last.pt", job.state.where())  # what a stop reports


def _epochs_left(state: State, epochs: int) -> range:
    """The epochs still to train: none once a stopping rule has ended the run (a resumed, stopped run)."""
    return range(0) if state.stopped_at else range(state.epoch + 1, epochs + 1)


def _train_epoch(job: Job, source: Source, epoch: int, progress: Progress) -> tuple[Counts, float]:
    """One epoch from the step the state says (0, or where a mid-epoch checkpoint stopped).

    The step itself never waits for the device: losses and top-k hits stay there, and the host reads them
    once per log interval, at the run's first step, before every checkpoint and at the epoch's last step
    (`read_window`), where the ranks also agree on stop signals and non-finite losses before anything is written.

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
        if any_rank_empty(job, len(labels)):  # every file of a rank's batch was corrupt and skipped
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
        if trainer.sharpness_every_steps and step % trainer.sharpness_every_steps == 0:
            _watch_sharpness(job, (images, labels), epoch, step)
        checkpoint = bool(trainer.checkpoint_every_steps) and step % trainer.checkpoint_every_steps == 0
        checkpoint = checkpoint and step < steps
        if not (checkpoint or step % trainer.log_every_steps == 0 or step == steps or (epoch, step) == (1, 1)):
            continue
        stopping = read_window(job, window, counts, epoch)
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
            _save(job)
        if stopping:
            job.stop.hand_over(stopping)
    if window.steps:  # the last steps were skipped as corrupt: the ones before still count
        read_window(job, window, counts, epoch)
    progress.end_epoch()
    images_per_s = (counts.n - already) * job.ranks.world_size / elapsed(start, runtime.device)
    return Counts.from_tensor(job.ranks.sum(counts.as_tensor())), images_per_s


def _watch_sharpness(job: Job, batch: tuple, epoch: int, step: int) -> None:
    """lambda_max on this step's batch against the next step's lr (`trainer.sharpness_every_steps`); every rank
    measures its shard, the products are averaged over ranks, rank 0 logs."""
    settings, ranks = job.settings, job.ranks
    lr = job.optimizer.param_groups[0]["lr"]
    at = job.global_step(epoch, step)
    average = flat_average(ranks.sum, ranks.world_size) if ranks.enabled else None
    measured = watch_step(
        job.model, batch, settings.optim, lr, settings.trainer.sharpness_iters, settings.seed + at, average
    )
    if measured is None:
        return
    value, loss, products = measured
    found = Sharpness(at, epoch, value, lr, lr / lr_limit(value, settings.optim), loss, products)
    (log.warning if found.lr_ratio >= 1 else log.info)(
        "step %d: lambda_max %.4g on this batch (loss %.4f); lr %.4g is %.3g of the largest stable lr%s",
        at,
        value,
        loss,
        lr,
        found.lr_ratio,
        ": past the edge of stability" if found.lr_ratio >= 1 else "",
    )
    if job.logger:
        job.logger.sharpness(found)


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
    if not restore_rng(payload["rng"], ranks.rank, ranks.world_size, job.runtime.device, job.settings.seed, state):
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
    job.stop.saved = (path, state.where())  # what a second Ctrl-C before the next save reports
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
