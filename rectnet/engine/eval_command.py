"""Evaluate a trained checkpoint under one of the papers' test protocols: what `python eval.py` runs.

    python eval.py run_dir=<run directory> [checkpoint=<file>] [eval.protocol=center|ten_view|dense] [key=value ...]

Loads `<run_dir>/checkpoints/best.pt` (or `checkpoint=`), rebuilds the model from the config saved in it,
scores its dataset's test split (ImageNet: the validation set) and writes `<run_dir>/eval_<protocol>.json`
with top1_err, top5_err, top1_acc, top5_acc and count. A dense test at one scale s (one column of He et
al.'s Table 4) also writes `eval_dense_s<s>.json`, so the scales of one run do not overwrite each other.

best.pt is the epoch with the lowest per-epoch test error, so on ImageNet it is picked on the very images
it is then scored on; the papers report their final models: for their tables pass
checkpoint=<run_dir>/checkpoints/last.pt (scripts/reproduce/ does).

Every other `key=value` overrides the saved training config with the same keys and checks as train.py:
dataset.root=..., eval.scales=[256,384,480], eval.dense_stride=2, trainer.device=cpu,
trainer.eval_batch_size=..., dataset.workers=..., dataset.num_test=... Preprocessing (mean/std or mean image)
is the checkpoint's own. Under torchrun the ranks split the images. Ctrl-C exits 130 and writes nothing (the result
files are written whole, at the end).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rectnet.config import ConfigError, EvalConfig, TrainConfig, settings_from_dict
from rectnet.data.cifar import DatasetError
from rectnet.data.imagenet import CorruptImageError, ImageFolderError
from rectnet.data.sources import SourceContext, make_evaluation
from rectnet.engine import checkpoint as ckpt
from rectnet.engine.distributed import env_ranks, init_distributed, label_log_records, shutdown
from rectnet.engine.provenance import versions
from rectnet.engine.run_log import write_json
from rectnet.engine.runtime import make_runtime
from rectnet.engine.scoring import Evaluator
from rectnet.hints import suggestions
from rectnet.models.build import build_model

log = logging.getLogger("rectnet")
USAGE = __doc__.split("\n\n")[1]
USER_ERRORS = (ConfigError, ckpt.CheckpointError, DatasetError, ImageFolderError, CorruptImageError, KeyError)


def parse_args(argv: Sequence[str]) -> tuple[Path, Path, list[str]]:
    """(run directory, checkpoint file, the remaining key=value overrides)."""
    run_dir = checkpoint = None
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"arguments are key=value, got {arg!r}\n{USAGE}")
        if key == "run_dir":
            run_dir = Path(value)
        elif key == "checkpoint":
            checkpoint = Path(value)
        else:
            overrides.append(arg)
    if run_dir is None:
        if checkpoint is None:
            raise ConfigError(f"run_dir=<run directory> is required\n{USAGE}")
        run_dir = checkpoint.parent.parent  # <run_dir>/checkpoints/<file>
    return run_dir, checkpoint or run_dir / "checkpoints" / "best.pt", overrides


def eval_settings(saved: dict, overrides: Sequence[str]) -> TrainConfig:
    """The checkpoint's training config with `overrides` applied, typed and validated as in training."""
    try:
        merged = OmegaConf.merge(OmegaConf.create(saved), OmegaConf.from_dotlist(list(overrides)))
        return settings_from_dict(OmegaConf.to_container(merged))
    except OmegaConfBaseException as err:
        hints = "".join(f"; {line.removeprefix('hint: ')}" for line in suggestions(overrides))
        raise ConfigError(str(err).splitlines()[0] + hints) from None


def evaluate_checkpoint(run_dir: Path, checkpoint: Path, overrides: Sequence[str]) -> dict:
    """Evaluate `checkpoint`; rank 0 writes and every rank returns eval_<protocol>.json's content."""
    payload = ckpt.load(checkpoint)
    settings = eval_settings(payload["config"], overrides)
    ranks = env_ranks()
    runtime = make_runtime(settings.trainer, ranks.local_rank, ranks.local_world_size)
    ranks = init_distributed(ranks, runtime.device, settings.trainer)
    label_log_records(ranks)
    try:
        where = SourceContext(
            runtime.device, ranks.rank, ranks.world_size, ranks.sum, ranks.setup_broadcast, ranks.local_world_size
        )
        source = make_evaluation(settings, where, payload["data"])
        model = build_model(settings, settings.dataset.num_classes, source.in_chans)
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise ckpt.CheckpointError(f"{checkpoint} does not fit the model its config describes: {err}") from None
        memory_format = torch.channels_last if settings.trainer.channels_last else torch.preserve_format
        model = model.to(runtime.device, memory_format=memory_format)
        evaluate = Evaluator(model, model, runtime, ranks, settings.eval, settings.dataset.image_size)
        start = time.perf_counter()
        counts, _ = evaluate(source.eval_sets["test"])
        seconds = time.perf_counter() - start
    finally:
        shutdown()
    result = _result(settings, counts.summary(), checkpoint, payload["epoch"], seconds)
    if ranks.is_main:
        files = result_files(run_dir, settings.eval)
        for out in files:
            write_json(out, result)
        log.info(
            "%s: top-1 error %.2f%%, top-5 error %.2f%% on %d images (%.1f s); wrote %s",
            settings.eval.protocol,
            result["top1_err"],
            result["top5_err"],
            result["count"],
            seconds,
            ", ".join(map(str, files)),
        )
    return result


def result_files(run_dir: Path, protocol: EvalConfig) -> list[Path]:
    """eval_<protocol>.json, and for a dense test at a single scale s also eval_dense_s<s>.json."""
    files = [run_dir / f"eval_{protocol.protocol}.json"]
    if protocol.protocol == "dense" and len(protocol.scales) == 1:
        files.append(run_dir / f"eval_dense_s{protocol.scales[0]}.json")
    return files


def _result(settings: TrainConfig, summary: dict, checkpoint: Path, epoch: int, seconds: float) -> dict:
    protocol = settings.eval
    result = {
        "protocol": protocol.protocol,
        **summary,
        "checkpoint": str(checkpoint.resolve()),
        "epoch": epoch,
        "model": settings.model.name,
        "activation": settings.activation.name,
        "dataset": settings.dataset.name,
        "average": protocol.average,
        "wall_time_s": round(seconds, 3),
        "images_per_s": round(summary["count"] / max(seconds, 1e-9), 2),
        "versions": versions(),
    }
    if protocol.protocol == "dense":
        result |= {"scales": list(protocol.scales), "dense_stride": protocol.dense_stride}
    elif settings.dataset.name == "imagenet":
        result |= {"size": protocol.size, "crop": settings.dataset.image_size}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        evaluate_checkpoint(*parse_args(argv))
    except USER_ERRORS as err:
        print(f"eval.py: error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the result files are written whole at the end, so none was touched
        print("eval.py: interrupted before every image was scored; no result file was written", file=sys.stderr)
        return 130  # 128 + SIGINT, the shell's convention and train.py's
    return 0
