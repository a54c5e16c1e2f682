"""Init that needs data: init=lsuv's rescaling (Mishkin & Matas 2016; rectnet.layers.lsuv), once per run.

It runs on a fresh run only, after the model is built (orthonormal, rectnet.layers.init) and before step 0; a
resume takes its weights from the checkpoint and does not redo it. The batch is the start of the training
stream itself: the first `init.lsuv.batches` global batches of epoch 1, augmented as training sees them. That
stream is a pure function of (seed, epoch, position) (rectnet.data.sources), so reading its start moves nothing
that the training loop reads; and the passes leave the global RNG as they found it (rectnet.layers.lsuv), so a
resumed run continues exactly where an uninterrupted one is. Under DDP each rank reads its shard of those
batches and the variances are summed over ranks: every rank computes the same scales.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict

import torch

from rectnet.config import TrainConfig
from rectnet.data.sources import Source
from rectnet.engine.distributed import Dist
from rectnet.layers.lsuv import lsuv

log = logging.getLogger("rectnet")


def lsuv_batch(settings: TrainConfig, global_batch: int) -> dict:
    """Which images LSUV measures on: positions [0, images) of epoch 1's global order under `seed`."""
    images = settings.init.lsuv.batches * global_batch
    return {"seed": settings.seed, "epoch": 1, "positions": [0, images], "images": images}


def run_lsuv(settings: TrainConfig, model: torch.nn.Module, source: Source, ranks: Dist, global_batch: int) -> dict:
    """Rescale `model` by LSUV on the start of the training stream; returns results.json's `lsuv` record
    (the batch, and per layer the scale, the output variance and the passes), which the log states too."""
    config = settings.init.lsuv
    stream = source.train_epoch(1, 0)
    batches = [images for images, _, _ in itertools.islice(stream, config.batches)]
    stream.close()  # an ImageFolder source's workers end here; epoch 1 starts afresh at step 1
    layers = lsuv(
        model,
        batches,
        config.tolerance,
        config.max_iters,
        settings.init.head_scale,
        reduce=ranks.sum,
        seed=settings.seed,
    )
    record = lsuv_batch(settings, global_batch) | {"layers": [asdict(layer) for layer in layers]}
    measured = [layer for layer in layers if layer.variance is not None]
    missed = [layer.name for layer in measured if abs(layer.variance - 1) >= config.tolerance]
    log.info(
        "LSUV (Mishkin & Matas 2016) on images %d..%d of epoch 1 (seed %d): %d layers, %d passes; output variance %s",
        0,
        record["images"] - 1,
        settings.seed,
        len(layers),
        sum(layer.passes for layer in layers),
        ", ".join(f"{layer.name} {layer.variance:.3f}" for layer in measured),
    )
    if missed:
        log.warning(
            "LSUV: %s not within init.lsuv.tolerance=%g of variance 1 after %d rescalings",
            ", ".join(missed),
            config.tolerance,
            config.max_iters,
        )
    return record
