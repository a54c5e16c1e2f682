"""Training throughput of ConvPool-CNN-C per activation, width and precision, against a hand-written PyTorch loop.

    python scripts/bench/train.py [--widths 0.25 1] [--precisions fp32 auto] [--batch 128] [--steps 3]
                                  [--rounds 3] [--threads N] [--activations ...] [--no-plain] [--gemm-n 1024]

One cell per (width, precision); `auto` is what trainer.precision=auto picks on this CPU (bf16 with avx512_bf16
or amx_bf16, else fp32), and a precision named twice (fp32 and an auto that picks fp32) is one cell, whose
`asked_as` lists both. In each cell every registered activation trains (forward, backward, SGD step, 32x32
inputs), plus "prelu_unfused": PReLU on F.prelu's own CPU kernels instead of rectnet's (rectnet/layers/fused.py),
to show what those buy. Every variant of every cell runs in every round, interleaved (a noisy shared machine
slows all of them alike); the median step time per variant gives its images/s. The first (warm-up) step of each
variant is reported apart, as `warmup_step_ms`: one-off costs (oneDNN's primitive setup, building or loading a
kernel) that a short train.py epoch pays and a steady-state rate hides.

rectnet's variants: rectnet's model (channels_last, in-place ReLU) fed by rectnet's tensor batches (uint8 split,
flip + normalize on the whole batch), in a process set up as train.py sets one up
(rectnet.engine.runtime.make_runtime: threads, malloc keeping freed activation memory, the PReLU kernel);
non-fp32 cells run the forward under CPU autocast as train.py does. In fp32 cells, "plain" = the same layers
written the way a user writes them by hand: nn.Sequential with nn.ReLU, NCHW, fed by a torch DataLoader over PIL
images with torchvision's per-image RandomHorizontalFlip/ToTensor/Normalize; "plain_model_only" = the plain model
on a pre-made batch, to separate model speed from input-pipeline speed. The plain variants run in a child
process (a fresh interpreter with PyTorch's defaults), interleaved with the rest.

Per cell the JSON gives images/s, achieved GFLOP/s (3x the forward FLOPs torch's counter finds, per image) and
`ratios`: prelu_over_relu, prelu_shared_over_relu, prelu_unfused_over_relu, relu_over_plain, ... (images/s over
images/s, from the rounded images/s printed in the same cell). `ratio_table` gathers the PReLU ratios of all
cells. Also: this CPU's fp32 and bf16 GEMM rates in the same run, its model and bf16 flags, threads and
versions. The last line is one JSON object.

On a shared machine pass --threads with no more threads than free cores: oversubscribed OpenMP threads
spin against each other and single steps then vary by several times. Where other work keeps the cores busy,
`--clock cpu --threads 1` times each step by this process's CPU seconds (time.process_time) instead of the
wall clock: the time the step ran, not the time it waited for a core (with more threads that sum includes
every thread's spinning, so keep it to one). The JSON says which clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# This checkout's rectnet, as `python train.py` from its root imports it: an editable install of the venv may
# point at another copy, and a benchmark of other code than the checkout's reads as a regression or a fix.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import transforms  # noqa: E402

from rectnet.config import TrainerConfig  # noqa: E402
from rectnet.data.batches import BatchAugment, TrainBatches  # noqa: E402
from rectnet.data.split import Split  # noqa: E402
from rectnet.engine.runtime import (  # noqa: E402
    AUTOCAST_DTYPES,
    cpu_flags,
    cpu_model,
    make_runtime,
    native_bf16_flags,
    resolve_precision,
)
from rectnet.layers import fused  # noqa: E402
from rectnet.layers.activations import ACTIVATIONS, make_activation  # noqa: E402
from rectnet.models import create  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
PRECISIONS = ("fp32", "bf16", "auto")
RATIOS = {  # ratio name: (numerator, denominator), images/s over images/s in one cell
    "prelu_over_relu": ("prelu", "relu"),
    "prelu_shared_over_relu": ("prelu_shared", "relu"),
    "prelu_unfused_over_relu": ("prelu_unfused", "relu"),
    "crelu_over_relu": ("crelu", "relu"),
    "avr_over_relu": ("avr", "relu"),
    "relu_over_plain": ("relu", "plain"),
    "relu_over_plain_model_only": ("relu", "plain_model_only"),
}
TABLE_RATIOS = ("prelu_over_relu", "prelu_shared_over_relu", "prelu_unfused_over_relu")


def default_activations() -> list[str]:
    """Every registered activation that runs as it is named (`custom` needs a target), but the identity."""
    return [name for name in ACTIVATIONS.names() if name != "identity" and _constructible(name)]


def _constructible(name: str) -> bool:
    try:
        make_activation(name)
    except (TypeError, ValueError):  # parameters it must be given (rectnet's ActivationError is a ValueError)
        return False
    return True


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))  # rectnet.models.spec's rounding of a width multiplier


def plain_convpool(width: float = 1.0, num_classes: int = 10) -> nn.Sequential:
    """ConvPool-CNN-C as a user writes it: the layer list of rectnet/models/convpool.py, by hand."""
    a, b = scaled(96, width), scaled(192, width)

    def conv(c_in: int, c_out: int, k: int, p: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, k, padding=p), nn.ReLU()]

    return nn.Sequential(
        nn.Dropout(0.2), *conv(3, a, 3, 1), *conv(a, a, 3, 1), *conv(a, a, 3, 1), nn.MaxPool2d(3, 2, 1),
        nn.Dropout(0.5), *conv(a, b, 3, 1), *conv(b, b, 3, 1), *conv(b, b, 3, 1), nn.MaxPool2d(3, 2, 1),
        nn.Dropout(0.5), *conv(b, b, 3, 0), *conv(b, b, 1, 0), nn.Conv2d(b, num_classes, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


class PILImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 array -> PIL image -> transforms."""

    def __init__(self, split: Split, transform: Callable) -> None:
        self.images = split.images.permute(0, 2, 3, 1).numpy()
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def forever(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


def all_epochs(batches: TrainBatches) -> Iterator:
    epoch = 0
    while True:
        epoch += 1
        yield from batches.epoch(epoch)


def stepper(model: nn.Module, batches: Iterator, precision: str = "fp32") -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step() -> None:
        images, labels = next(batches)
        with autocast(precision):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=AUTOCAST_DTYPES[precision])


def gemm_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    """This CPU's matrix-multiply rate in `dtype` (n x n by n x n, the best of `repeats`)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: oneDNN picks and caches its kernel
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def train_flops_per_image(width: float) -> float:
    """3x the forward FLOPs of one 32x32 image (a backward costs about two forwards)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create("convpool_cnn_c", act="relu", width=width).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return 3.0 * counter.get_total_flops()


def unfused(step: Callable[[], None]) -> Callable[[], None]:
    """`step` with PReLU on F.prelu's own CPU kernels, to show what rectnet's kernel buys."""

    def run() -> None:
        with fused.unfused():
            step()

    return run


def random_split(images: int) -> Split:
    torch.manual_seed(0)
    return Split(torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (images,)))


@dataclass(frozen=True)
class Cell:
    """One (width, precision) setting; `asked_as`: the --precisions entries that resolved to it."""

    width: float
    precision: str
    asked_as: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"w{self.width:g}/{self.precision}"


def plan_cells(widths: list[float], precisions: list[str], auto: str) -> list[Cell]:
    """Cells in the order asked, `auto` resolved, duplicates merged."""
    asked: dict[str, list[str]] = {}
    for name in precisions:
        asked.setdefault(auto if name == "auto" else name, []).append(name)
    return [Cell(width, precision, tuple(names)) for width in widths for precision, names in asked.items()]


def rectnet_variants(split: Split, batch: int, cell: Cell, activations: list[str]) -> dict[str, Callable[[], None]]:
    augment = BatchAugment(torch.tensor(MEAN), torch.tensor(STD), flip=True, channels_last=True)
    batches = all_epochs(TrainBatches(split, batch, augment, seed=0))

    def model(act: str) -> nn.Module:
        return create("convpool_cnn_c", act=act, width=cell.width).to(memory_format=torch.channels_last)

    steps = {act: stepper(model(act), batches, cell.precision) for act in activations}
    if "prelu" in activations:
        steps["prelu_unfused"] = unfused(stepper(model("prelu"), batches, cell.precision))
    return steps


def plain_variants(split: Split, batch: int, width: float) -> dict[str, Callable[[], None]]:
    pipeline = transforms.Compose(
        [transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    loader = torch.utils.data.DataLoader(PILImages(split, pipeline), batch_size=batch, shuffle=True, drop_last=True)
    fixed = next(iter(loader))
    return {
        "plain": stepper(plain_convpool(width), forever(lambda: iter(loader))),
        "plain_model_only": stepper(plain_convpool(width), forever(lambda: iter([fixed]))),
    }


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class Timed:
    """A step, timed by `clock`: `warmup()` runs (and times) the first step, `__call__(n)` the seconds n steps
    take."""

    def __init__(self, step: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self.step, self.clock = step, clock

    def warmup(self) -> float:
        return self(1)

    def __call__(self, n: int) -> float:
        start = self.clock()
        for _ in range(n):
            self.step()
        return self.clock() - start


def plain_process(conn, threads: int | None, images: int, batch: int, widths: list[float], clock: str) -> None:
    """The hand-written loop in a fresh interpreter with PyTorch's defaults (no rectnet runtime settings):
    sends {name: warm-up seconds}, then answers (name, steps) with the seconds those steps took, until None."""
    if threads:
        torch.set_num_threads(threads)
    split = random_split(images)
    steps = {
        (width, name): Timed(step, CLOCKS[clock])
        for width in widths
        for name, step in plain_variants(split, batch, width).items()
    }
    conn.send({key: run.warmup() for key, run in steps.items()})
    while (request := conn.recv()) is not None:
        key, n = request
        conn.send(steps[key](n))


class Remote:
    """A plain variant in the child process, with the Timed interface."""

    def __init__(self, conn, key: tuple[float, str], warmup_s: float) -> None:
        self.conn, self.key, self.warmup_s = conn, key, warmup_s

    def warmup(self) -> float:
        return self.warmup_s  # the child ran it before answering

    def __call__(self, n: int) -> float:
        self.conn.send((self.key, n))
        return self.conn.recv()


def start_plain(args: argparse.Namespace, widths: list[float]) -> tuple[object, object, dict]:
    context = mp.get_context("spawn")
    conn, child_conn = context.Pipe()
    child = context.Process(
        target=plain_process,
        args=(child_conn, args.threads, args.images, args.batch, widths, args.clock),
        daemon=True,
    )
    child.start()
    warmups = conn.recv()
    return conn, child, {key: Remote(conn, key, seconds) for key, seconds in warmups.items()}


def cell_ratios(rates: dict[str, float]) -> dict[str, float]:
    """RATIOS whose two variants ran in this cell, from the rates as printed (rounded)."""
    return {
        name: round(rates[num] / rates[den], 3)
        for name, (num, den) in RATIOS.items()
        if num in rates and den in rates and rates[den] > 0
    }


def measure(variants: dict[tuple[str, str], Timed], rounds: int, steps: int) -> dict[tuple[str, str], float]:
    """Median seconds per step of each variant, every variant once per round, in the same order each round."""
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, run in variants.items():
            times[key].append(run(steps) / steps)
    return {key: statistics.median(t) for key, t in times.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0], help="filter multipliers")
    parser.add_argument(
        "--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "auto"], help="auto: trainer.precision=auto"
    )
    parser.add_argument("--activations", nargs="+", help="default: every registered activation but identity")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2048, help="size of the random uint8 training split")
    parser.add_argument("--no-plain", action="store_true", help="skip the hand-written loop (its child process)")
    parser.add_argument("--gemm-n", type=int, default=1024, help="GEMM size for the CPU's rates; 0 skips them")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="cpu: this process's CPU time (use with --threads 1)"
    )
    parser.add_argument(
        "--threads", type=int, help="intra-op threads (default: train.py's); shared machine: at most the free cores"
    )
    return parser.parse_args(argv)


def gemm_rates(n: int) -> dict[str, float]:
    if n <= 0:
        return {}
    return {
        name: round(gemm_gflops(dtype, n), 1) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }


def all_variants(args, cells: list[Cell], activations: list[str], remote: dict) -> dict[tuple[str, str], Timed]:
    """(cell key, variant) -> its timed step: rectnet's variants in every cell, the plain loop's in fp32 cells."""
    split = random_split(args.images)
    variants: dict[tuple[str, str], Timed] = {}
    for cell in cells:
        steps = rectnet_variants(split, args.batch, cell, activations)
        variants |= {(cell.key, name): Timed(step, CLOCKS[args.clock]) for name, step in steps.items()}
        if cell.precision == "fp32":
            variants |= {(cell.key, name): run for (width, name), run in remote.items() if width == cell.width}
    return variants


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    activations = args.activations or default_activations()
    auto, auto_reason = resolve_precision("auto", torch.device("cpu"))
    cells = plan_cells(args.widths, args.precisions, auto)
    plain_widths = [] if args.no_plain else sorted({c.width for c in cells if c.precision == "fp32"})
    conn = child = None
    remote: dict = {}
    if plain_widths:  # first, and waited for: the child's start-up and warm-up overlap nothing that is timed
        conn, child, remote = start_plain(args, plain_widths)
    make_runtime(TrainerConfig(device="cpu", threads=args.threads, precision="fp32"))  # as train.py sets up a CPU run
    gemm = gemm_rates(args.gemm_n)
    variants = all_variants(args, cells, activations, remote)
    warmup = {key: run.warmup() for key, run in variants.items()}  # allocator, oneDNN caches, the PReLU kernel
    seconds = measure(variants, args.rounds, args.steps)
    if conn is not None:
        conn.send(None)
        child.join()
    result = report(args, cells, activations, seconds, warmup, gemm, auto, auto_reason)
    print(json.dumps(result))
    return result


def report(args, cells, activations, seconds, warmup, gemm, auto, auto_reason) -> dict:
    cell_results = []
    for cell in cells:
        names = [name for key, name in seconds if key == cell.key]
        rates = {name: round(args.batch / seconds[(cell.key, name)], 2) for name in names}
        flops = train_flops_per_image(cell.width)
        for name, rate in rates.items():
            print(f"{cell.key:>12} {name:>18}: {rate:8.1f} images/s  (step {1000 * args.batch / rate:7.1f} ms)")
        cell_results.append(
            {
                "key": cell.key,
                "width": cell.width,
                "precision": cell.precision,
                "asked_as": list(cell.asked_as),
                "images_per_s": rates,
                "warmup_step_ms": {name: round(1000 * warmup[(cell.key, name)], 1) for name in names},
                "achieved_gflops": {name: round(rate * flops / 1e9, 2) for name, rate in rates.items()},
                "ratios": cell_ratios(rates),
            }
        )
    return {
        "benchmark": "train_step",
        "model": "convpool_cnn_c",
        "batch": args.batch,
        "widths": args.widths,
        "precisions_asked": args.precisions,
        "precision_auto": auto,
        "precision_auto_reason": auto_reason,
        "activations": activations,
        "cells": cell_results,
        "ratio_table": {
            name: {c["key"]: c["ratios"][name] for c in cell_results if name in c["ratios"]} for name in TABLE_RATIOS
        },
        "gemm_gflops": gemm,
        "clock": args.clock,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model() or platform.processor() or platform.machine(),
        "cpu_bf16_flags": native_bf16_flags(),
        "cpu_has_avx512f": "avx512f" in cpu_flags(),
        "numpy": np.__version__,
    }


if __name__ == "__main__":
    main()
