"""What a run says and records about itself: results.json's content and the lines the log announces.

results.json is the run's record for the tables and analyses (contract 3 of the design: final metrics,
resolved config, git SHA, versions, hardware): `run_results` computes it on every rank (`run` returns it), rank 0
writes it (`write_results`) with the final model's test logits and TensorBoard's hparams. The announcements
(the batch at every start, each epoch's line, the final errors and where to look) say the same numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rectnet.config import TrainConfig
from rectnet.engine import checkpoint as ckpt
from rectnet.engine.data_init import lsuv_batch
from rectnet.engine.job import Job
from rectnet.engine.provenance import hardware, versions
from rectnet.engine.run_log import prelu_slopes, read_jsonl, write_json

log = logging.getLogger("rectnet")


def announce_batch(settings: TrainConfig, per_process: int, global_batch: int, world_size: int) -> None:
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


def announce_epoch(record: dict, epochs: int) -> None:
    """An epoch's line (`record`: its metrics.jsonl entry), and the corrupt images it skipped, if any."""
    epoch = record["epoch"]
    log.info(
        "epoch %d/%d: train loss %.4f, test top-1 err %.2f%%, top-5 err %.2f%%, %.0f img/s",
        epoch,
        epochs,
        record["train/loss"],
        record["test/top1_err"],
        record["test/top5_err"],
        record["train/images_per_s"],
    )
    skipped = {k: v for k, v in record.items() if k.endswith("/skipped")}
    if skipped:
        log.warning("corrupt images skipped (dataset.skip_corrupt=true) in epoch %d: %s", epoch, skipped)


def hparams(settings: TrainConfig, world_size: int) -> dict:
    """The settings a comparison of runs varies: results.json's `hparams` and TensorBoard's HParams tab."""
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


def run_results(job: Job, last: dict, n_params: int, seconds: float) -> dict:
    """results.json's content; `last` is the last epoch's metrics.jsonl entry ({} when nothing trained now)."""
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
        "attempts": job.state.attempts,
        **_lsuv_record(job),
        "selected_on": "val" if job.settings.dataset.num_folds else "test",
        "train_images_per_s": last.get("train/images_per_s"),
        "wall_time_s": round(seconds, 3),
        "params": n_params,
        "world_size": job.ranks.world_size,
        "precision": job.runtime.precision,  # as run: what trainer.precision=auto chose on this machine
        "run_dir": str(job.run_dir.resolve()),
        "hparams": hparams(job.settings, job.ranks.world_size),
        "config": job.config,
        "git": job.git,
        "versions": versions(),
        "hardware": hardware(job.runtime.device),
    }
    slopes = prelu_slopes(job.model)
    if slopes:
        results["prelu_slopes_mean"] = {name: sum(v) / len(v) for name, v in slopes.items()}
    return results


def attempt_record(job: Job) -> dict:
    """This attempt's entry of State.attempts (results.json's `attempts`): where it started (epochs completed,
    steps into the next) and what ran it. The top-level git, hardware, versions and precision are the last
    attempt's; a run resumed elsewhere differs in an earlier entry."""
    return {
        "epoch": job.state.epoch,
        "step": job.state.step,
        "world_size": job.ranks.world_size,
        "precision": job.runtime.precision,
        "git": job.git,
        "versions": versions(),
        "hardware": hardware(job.runtime.device),
    }


def _lsuv_record(job: Job) -> dict:
    """init=lsuv: the batch it measured on, and on a fresh run what it did per layer (a resumed run did not
    redo it: those numbers are in the first attempt's train.log)."""
    if job.settings.init.name != "lsuv":
        return {}
    return {"lsuv": job.lsuv or lsuv_batch(job.settings, job.global_batch) | {"layers": None}}


def _last_logged(run_dir: Path, epoch: int) -> dict:
    """The test metrics metrics.jsonl logged for `epoch`; {} if that line was lost (torn by a crash)."""
    last = next((r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("epoch") == epoch), {})
    return {k.removeprefix("test/"): v for k, v in last.items() if k.startswith("test/")}


def write_results(job: Job, results: dict, test_logits: dict | None) -> None:
    """Rank 0's end of a run: the final model's test logits (ensembles, "Vote" in the CReLU paper §3.1,
    average these; None when nothing trained now), results.json, TensorBoard's hparams; then announce them."""
    if test_logits is not None:
        ckpt.atomic_save(test_logits, job.run_dir / "test_logits.pt")
    write_json(job.run_dir / "results.json", results)
    job.logger.hparams(
        results["hparams"],
        {k: v for k, v in results["final"].items() if k in ("top1_err", "top5_err")}
        | {"best_top1_err": job.state.best_top1_err},
    )
    job.logger.close()
    _announce(results, job.run_dir, job.settings.logger.tensorboard)


def _announce(results: dict, run_dir: Path, tensorboard: bool) -> None:
    final = results["final"]
    if not final:  # a finished run resumed, whose metrics.jsonl lost its last epoch's line
        log.warning("no final metrics: metrics.jsonl holds no readable record of epoch %d", results["epochs"])
    else:
        log.info(
            "finished: test top-1 error %.2f%% (accuracy %.2f%%), top-5 error %.2f%% (accuracy %.2f%%) on %d images",
            final["top1_err"],
            final["top1_acc"],
            final["top5_err"],
            final["top5_acc"],
            final["count"],
        )
    log.info("run directory: %s", run_dir.resolve())
    if tensorboard:
        log.info("TensorBoard: tensorboard --logdir %s", (run_dir / "tb").resolve())
