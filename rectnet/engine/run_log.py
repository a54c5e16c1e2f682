"""What a run tells the world: progress on the console, metrics.jsonl, TensorBoard, results.json."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rectnet.config import LoggerConfig
from rectnet.engine.curvature import Sharpness
from rectnet.launch import launch_rank
from rectnet.layers.activations import PReLU
from rectnet.layers.facts import weight_layers

log = logging.getLogger("rectnet")


class RankZeroFileHandler(logging.FileHandler):
    """train.log, appended to by rank 0 alone (configs/hydra/job_logging/rank_zero.yaml).

    Every rank of torchrun, srun or submitit runs Hydra's job setup, which builds its logging handlers before
    any process group exists, so the rank is the launcher's (`launch_rank`). The file is opened on the first
    record rank 0 writes (delay): the other ranks never create it, nor append to it, and log to their console.
    """

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.writes = launch_rank() == 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.writes:
            super().emit(record)


def _parse_line(line: str) -> dict | None:
    """One JSON-lines record; None for a blank, torn or NUL-filled line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file that parse (a line torn by an interrupted write is skipped)."""
    if not path.is_file():
        return []
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [r for r in map(_parse_line, text.split("\n")) if r is not None]


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename), so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(obj, indent=2, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A one-line progress bar on a terminal; plain lines every `every` steps otherwise (CI, cluster logs).

    The loss shown is the mean of the last `window` steps, labelled so, beside the epoch's running mean:
    a running mean from the epoch's start keeps falling for a while after training has stalled or blown up.
    """

    def __init__(self, mode: str, every: int, stream=sys.stderr, window: int = 20) -> None:
        if mode == "auto":
            mode = "bar" if stream.isatty() else "lines"
        self.mode, self.every, self.stream = mode, every, stream
        self.recent: deque[float] = deque(maxlen=window)

    def update(
        self,
        epoch: int,
        epochs: int,
        step: int,
        steps: int,
        loss: float,
        epoch_loss: float,
        images_per_s: float,
        eta_s: float,
    ) -> None:
        """`loss`: this step's batch loss; `epoch_loss`: the epoch's running mean."""
        self.recent.append(loss)
        text = (
            f"epoch {epoch}/{epochs} step {step}/{steps} loss {self.recent_loss:.4f} "
            f"(last {len(self.recent)} steps; epoch mean {epoch_loss:.4f}) "
            f"{images_per_s:.0f} img/s ETA {format_duration(eta_s)}"
        )
        if self.mode == "bar":
            filled = int(20 * step / max(steps, 1))
            self.stream.write(f"\r[{'=' * filled}{' ' * (20 - filled)}] {text}\033[K")
            self.stream.flush()
        elif self.mode == "lines" and (step % self.every == 0 or step == steps):
            log.info(text)

    @property
    def recent_loss(self) -> float:
        """The mean loss of the last `window` steps, as the progress line shows it."""
        return sum(self.recent) / len(self.recent)

    def end_epoch(self) -> None:
        self.recent.clear()
        if self.mode == "bar":
            self.stream.write("\n")
            self.stream.flush()


class RunLogger:
    """metrics.jsonl (one JSON object per epoch) and, when enabled, TensorBoard under <run_dir>/tb.

    TensorBoard has one x axis, the global training step (steps since the run began): every log interval adds
    `step/train_loss` (the recent-steps mean the progress line shows), `step/lr` and `step/images_per_s`, so a
    one-epoch run shows curves, and every epoch adds its metrics (train/..., test/..., lr, epoch) at the global
    step of its last batch. A resumed run first drops what an interrupted attempt wrote after the checkpoint
    (`purge_step`), so no step appears twice.
    """

    def __init__(self, run_dir: Path, settings: LoggerConfig, resume_epoch: int = 0, resume_step: int = 0) -> None:
        self.metrics_path = run_dir / "metrics.jsonl"
        self.sharpness_path = run_dir / "sharpness.jsonl"
        self.slope_histograms = settings.slope_histograms
        _keep_lines(self.metrics_path, lambda record: record.get("epoch", 0) <= resume_epoch)
        _keep_lines(self.sharpness_path, lambda record: record.get("step", 0) <= resume_step)
        self.writer = None
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at steps >= it, written after the checkpoint we resume from, are dropped
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def interval(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        """One log interval's training values at global step `step`."""
        if self.writer is None:
            return
        for key, value in (("step/train_loss", loss), ("step/lr", lr), ("step/images_per_s", images_per_s)):
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def epoch(self, record: dict[str, Any], model: nn.Module, step: int) -> None:
        """An epoch's record: a line of metrics.jsonl, and its values at global step `step` (its last batch)."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        if self.slope_histograms:
            for name, slopes in prelu_slopes(model).items():
                self.writer.add_histogram(f"prelu_slopes/{name}", torch.tensor(slopes), step)
        self.writer.flush()

    def sharpness(self, found: Sharpness) -> None:
        """One measurement of the edge-of-stability watch: a line of sharpness.jsonl, and TensorBoard's
        stability/lambda_max and stability/lr_ratio at its global step."""
        with self.sharpness_path.open("a") as f:
            f.write(json.dumps(found.as_record()) + "\n")
        if self.writer is not None:
            self.writer.add_scalar("stability/lambda_max", found.lambda_max, found.step)
            self.writer.add_scalar("stability/lr_ratio", found.lr_ratio, found.step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """Hyper-parameters with final metrics, for TensorBoard's HParams tab (compares sweep runs)."""
        if self.writer is None:
            return
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _keep_lines(path: Path, keep: Callable[[dict], bool]) -> None:
    """On resume the checkpoint is the truth: keep the records of a JSON-lines file that parse and that `keep`
    accepts (those up to the checkpoint; later ones belong to the abandoned attempt).

    A line cut short or the NUL bytes a power cut leaves at the end of a file are dropped with a warning, never
    an error. The file is rewritten (atomically) whenever it is not exactly the kept lines, so the next append
    starts on a line of its own.
    """
    if not path.exists():
        return
    text = path.read_bytes().decode("utf-8", errors="replace")
    kept, torn = [], 0
    for line in text.split("\n"):
        record = _parse_line(line)
        if record is None:
            torn += bool(line.strip("\x00 \t\r"))
        elif keep(record):
            kept.append(line)
    if torn:
        log.warning("%s: dropped %d unreadable line(s) (a write cut short)", path, torn)
    content = "".join(line + "\n" for line in kept)
    if content != text:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        os.replace(tmp, path)


def prelu_slopes(model: nn.Module) -> dict[str, list[float]]:
    """The slopes of each PReLU, under the name of the layer it follows in rectnet's nets (conv1, conv21, fc1: as
    `rectnet.analysis.slopes` and the papers name them), under its module path in any other network (a converted
    timm model has no paper names, and registration order need not be its data flow)."""
    if not getattr(model, "layer_facts", None):
        return {path: _values(m) for path, m in model.named_modules() if isinstance(m, PReLU)}
    return {layer.name: _values(layer.after) for layer in weight_layers(model) if isinstance(layer.after, PReLU)}


def _values(prelu: PReLU) -> list[float]:
    return prelu.weight.detach().float().cpu().tolist()


def elapsed(start: float, device: torch.device) -> float:
    """Seconds since `start`, after queued GPU work has finished (so rates are real)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
