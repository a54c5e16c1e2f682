"""How many decoding workers a rank can afford: its cores and the node's shared memory, checked at start-up.

Each rank's DataLoaders decode JPEGs in `dataset.workers` processes, and every decoded batch reaches the
rank through shared memory (/dev/shm), up to `prefetch_factor` batches per worker ahead. Two limits follow:

- cores: a decoding worker busy on a core it shares with the training process (or with another rank's
  workers) slows both. The training and evaluation loaders never decode at the same time (training waits
  while the test split is scored), so each may use every core of the rank but one, which stays with the
  rank's own process. The evaluation loader is not persistent: its workers run only while an evaluation
  does, instead of sitting between evaluations (hours of training on ImageNet) as idle processes that each
  hold a copy of the interpreter. Starting 8 took 0.2-0.5 s on a 2-core machine, against minutes for
  scoring ImageNet's 50,000 validation images.
- shared memory: the batches in flight. An evaluation batch is the big one: 500 centre crops are 75 MB,
  so 8 workers x prefetch 2 hold 1.2 GB per rank, next to 0.3 GB of training batches (a training epoch cut
  short, by trainer.max_steps_per_epoch or a stop, leaves its prefetched batches queued while the test
  split is scored, so both count). A container's /dev/shm is 64 MB unless it is given more (docker
  --shm-size), and a worker that finds it full dies with a bus error.

The number of workers changes the speed only, never the batches (every sample's randomness is seeded by
(seed, epoch, index)): so a run that cannot afford `dataset.workers` is not refused but lowered, first its
prefetch_factor to 1 (each worker still has a batch to decode), then its workers, with one logged line
saying what was lowered, from what, and what to give the run for the configured speed. Nothing is raised:
a run that decodes in its training process is slow but right, and its log says why from the first lines.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from typing import NamedTuple

from rectnet.config import TrainConfig
from rectnet.data.views import resized_size
from rectnet.engine.runtime import rank_cores

log = logging.getLogger(__name__)

SHM_PATH = "/dev/shm"
# The share of free /dev/shm the loaders may plan to fill: NCCL's intra-node buffers, the batch the training
# process is still holding, and other jobs on the node use it too.
SHM_SHARE = 0.75
# Dense views are whole images, whose size depends on each image: ImageNet's typical 500x375 frame stands
# for them (a wider image is larger; the margin above absorbs the odd one).
TYPICAL_FRAME = (500, 375)


class WorkerPlan(NamedTuple):
    workers: int
    prefetch_factor: int
    reason: str | None  # one line: what was lowered, from what to what, and why; None when nothing was


def eval_batch_images(protocol: str, eval_batch_size: int) -> int:
    """Images per evaluation batch: `eval_batch_size` counts network inputs, so a ten_view batch holds a tenth
    as many images; dense views differ in size from image to image, so it takes one image at a time."""
    if protocol == "dense":
        return 1
    return max(1, eval_batch_size // (10 if protocol == "ten_view" else 1))


def image_bytes(protocol: str, crop: int, scales: Sequence[int]) -> int:
    """uint8 bytes of one image's evaluation views: crop x crop once (center) or ten times (ten_view); dense,
    the whole (typical) image and its mirror at every scale."""
    if protocol == "dense":
        return sum(2 * 3 * w * h for w, h in (resized_size(*TYPICAL_FRAME, scale) for scale in scales))
    return (10 if protocol == "ten_view" else 1) * 3 * crop * crop


def batch_bytes(settings: TrainConfig, train_batch: int | None) -> int:
    """uint8 bytes of one training batch of `train_batch` crops (None: no training loader, eval.py) plus one
    evaluation batch: what one prefetch slot of every worker of the rank's loaders holds at most.

    (The statistics pass at the start, 64 centre crops a batch, runs alone before the others start.)"""
    crop, protocol = settings.dataset.image_size, settings.eval
    evaluation = eval_batch_images(protocol.protocol, settings.trainer.eval_batch_size)
    evaluation *= image_bytes(protocol.protocol, crop, protocol.scales)
    return (train_batch or 0) * 3 * crop * crop + evaluation


def free_shm(path: str = SHM_PATH) -> int | None:
    """Free bytes of the shared-memory mount; None where there is none (nothing to check then)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def plan_workers(
    workers: int,
    prefetch_factor: int,
    slot_bytes: int,
    local_ranks: int,
    cores: int,
    shm_free: int | None,
    cores_source: str = "",
) -> WorkerPlan:
    """The workers and prefetch_factor that fit `cores` (this rank's) and `shm_free` (the node's /dev/shm,
    None: unknown, unchecked), shared by `local_ranks` ranks whose every worker prefetch slot holds
    `slot_bytes` (`batch_bytes`)."""
    fitted, prefetch, why = workers, prefetch_factor, []
    spare = max(0, cores - 1)  # one core stays with the rank's training process
    if fitted > spare:
        source = f" ({cores_source})" if cores_source else ""
        why.append(f"{cores} usable core(s) for this rank{source} leave {spare} for decoding")
        fitted = spare
    node_slot = slot_bytes * local_ranks  # one prefetch slot of one worker, on every rank of the node
    need = fitted * prefetch * node_slot
    if shm_free is not None and fitted > 0 and need > SHM_SHARE * shm_free:
        slots = int(SHM_SHARE * shm_free // node_slot)
        fitted, prefetch = (fitted, slots // fitted) if slots >= fitted else (slots, 1 if slots else prefetch)
        why.append(
            f"{SHM_PATH} has {_size(shm_free)} free and the loaders of {local_ranks} rank(s) would queue "
            f"{_size(need)} there ({_size(slot_bytes)} per worker and prefetched batch, against at most "
            f"{SHM_SHARE:.0%} of the free space): give it more (docker --shm-size, a larger tmpfs) or lower "
            "trainer.eval_batch_size"
        )
    if not why:
        return WorkerPlan(workers, prefetch_factor, None)
    lowered = [
        f"dataset.{key} {old} -> {new}"
        for key, old, new in (("workers", workers, fitted), ("prefetch_factor", prefetch_factor, prefetch))
        if new != old
    ]
    return WorkerPlan(fitted, prefetch, f"{', '.join(lowered)}: {'; '.join(why)}")


def fit_loaders(settings: TrainConfig, local_ranks: int, train_batch: int | None) -> TrainConfig:
    """`settings` with the dataset's workers and prefetch_factor this rank can afford (`plan_workers` on the
    measured cores and /dev/shm); logs what was lowered, or what the loaders will hold. Call it before any
    loader starts its workers; `train_batch` is the rank's training batch (None: evaluation only)."""
    data = settings.dataset
    cores, source = rank_cores(local_ranks)
    slot, shm = batch_bytes(settings, train_batch), free_shm()
    plan = plan_workers(data.workers, data.prefetch_factor, slot, local_ranks, cores, shm, source)
    if plan.reason:
        log.warning(plan.reason)
    if plan.workers > 0:
        held = plan.workers * plan.prefetch_factor * slot
        log.info(
            "%d decoding worker(s) per rank, prefetch %d: up to %s of %s per rank, %d rank(s) on this node, %s free",
            plan.workers,
            plan.prefetch_factor,
            _size(held),
            SHM_PATH,
            local_ranks,
            "unknown" if shm is None else _size(shm),
        )
    fitted = dataclasses.replace(data, workers=plan.workers, prefetch_factor=plan.prefetch_factor)
    return dataclasses.replace(settings, dataset=fitted)


def _size(n: float) -> str:
    """Binary units, as docker --shm-size and df count them."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
