"""Training throughput of ConvPool-CNN-C per activation, against a plain hand-written PyTorch loop.

    python scripts/bench_train.py [--batch 128] [--steps 3] [--rounds 3] [--width 1.0] [--threads N]

Variants interleaved round by round (a noisy shared machine slows all of them alike), median step time per
variant. Every variant trains: forward, backward, SGD step, batch 128, fp32,
32x32 inputs. "rectnet" = rectnet's model (channels_last, in-place ReLU) fed by rectnet's tensor batches
(uint8 split, flip + normalize on the whole batch). "plain" = the same layers written the way a user
writes them by hand: nn.Sequential with nn.ReLU, NCHW, fed by a torch DataLoader over PIL images with
torchvision's per-image RandomHorizontalFlip/ToTensor/Normalize. "plain_model_only" = the plain model on a
pre-made batch, to separate model speed from input-pipeline speed. The plain variants run in a child process
(a fresh interpreter with PyTorch's defaults); rectnet's run in a process set up as train.py sets one up
(rectnet.engine.runtime.make_runtime: threads, malloc keeping freed activation memory, the fused PReLU
backward). "rectnet_prelu_unfused" = PReLU with
F.prelu's own CPU backward instead of the fused one (rectnet/layers/fused.py). "rectnet_relu_bf16" = the ReLU
variant under bf16 autocast, "rectnet_relu_auto" = under what trainer.precision=auto picks on this CPU (bf16
with avx512_bf16 or amx_bf16, else fp32). Beside images/s the JSON gives each variant's achieved GFLOP/s
(3x the forward FLOPs torch's counter finds, per image) and this CPU's measured fp32 and bf16 GEMM rates in
the same run, with the CPU model and its bf16 flags. The last line is one JSON object.

On a shared machine pass --threads with no more threads than free cores: oversubscribed OpenMP threads
spin against each other and single steps then vary by several times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

from rectnet.config import TrainerConfig
from rectnet.data.batches import BatchAugment, TrainBatches
from rectnet.data.split import Split
from rectnet.engine.runtime import AUTOCAST_DTYPES, cpu_flags, make_runtime, native_bf16_flags, resolve_precision
from rectnet.layers import fused
from rectnet.models import create

ACTIVATIONS = ["relu", "prelu", "prelu_shared", "leaky_relu", "avr", "crelu"]
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def plain_convpool(num_classes: int = 10) -> nn.Sequential:
    """ConvPool-CNN-C as a user writes it: the layer list of rectnet/models/convpool.py, by hand."""

    def conv(c_in: int, c_out: int, k: int, p: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, k, padding=p), nn.ReLU()]

    return nn.Sequential(
        nn.Dropout(0.2), *conv(3, 96, 3, 1), *conv(96, 96, 3, 1), *conv(96, 96, 3, 1), nn.MaxPool2d(3, 2, 1),
        nn.Dropout(0.5), *conv(96, 192, 3, 1), *conv(192, 192, 3, 1), *conv(192, 192, 3, 1), nn.MaxPool2d(3, 2, 1),
        nn.Dropout(0.5), *conv(192, 192, 3, 0), *conv(192, 192, 1, 0), nn.Conv2d(192, num_classes, 1),
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


def gemm_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
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


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def unfused(step: Callable[[], None]) -> Callable[[], None]:
    """`step` with PReLU's fused CPU backward off (F.prelu's own kernels), to show what fusing buys."""

    def run() -> None:
        with fused.unfused():
            step()

    return run


def random_split(images: int) -> Split:
    torch.manual_seed(0)
    return Split(torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (images,)))


def rectnet_variants(split: Split, batch: int, width: float) -> dict[str, Callable[[], None]]:
    augment = BatchAugment(torch.tensor(MEAN), torch.tensor(STD), flip=True, channels_last=True)
    rectnet_batches = TrainBatches(split, batch, augment, seed=0)
    steps = {}
    for act in ACTIVATIONS:
        model = create("convpool_cnn_c", act=act, width=width).to(memory_format=torch.channels_last)
        steps[f"rectnet_{act}"] = stepper(model, all_epochs(rectnet_batches))
    model = create("convpool_cnn_c", act="prelu", width=width).to(memory_format=torch.channels_last)
    steps["rectnet_prelu_unfused"] = unfused(stepper(model, all_epochs(rectnet_batches)))
    auto = resolve_precision("auto", torch.device("cpu"))[0]
    for name, precision in (("rectnet_relu_bf16", "bf16"), ("rectnet_relu_auto", auto)):
        model = create("convpool_cnn_c", act="relu", width=width).to(memory_format=torch.channels_last)
        steps[name] = stepper(model, all_epochs(rectnet_batches), precision)
    return steps


def plain_variants(split: Split, batch: int) -> dict[str, Callable[[], None]]:
    pipeline = transforms.Compose(
        [transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    loader = torch.utils.data.DataLoader(PILImages(split, pipeline), batch_size=batch, shuffle=True, drop_last=True)
    fixed = next(iter(loader))
    return {
        "plain": stepper(plain_convpool(), forever(lambda: iter(loader))),
        "plain_model_only": stepper(plain_convpool(), forever(lambda: iter([fixed]))),
    }


def timed(step: Callable[[], None]) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step()
        return time.perf_counter() - start

    return run


def plain_process(conn, threads: int | None, images: int, batch: int) -> None:
    """The hand-written loop in a fresh interpreter with PyTorch's defaults (no rectnet runtime settings):
    answers (variant, steps) with the seconds those steps took, until it gets None."""
    if threads:
        torch.set_num_threads(threads)
    steps = {name: timed(step) for name, step in plain_variants(random_split(images), batch).items()}
    for run in steps.values():  # warm-up
        run(1)
    conn.send(sorted(steps))
    while (request := conn.recv()) is not None:
        name, n = request
        conn.send(steps[name](n))


def remote(conn, name: str) -> Callable[[int], float]:
    def run(n: int) -> float:
        conn.send((name, n))
        return conn.recv()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0, help="filter multiplier (plain loop only at 1.0)")
    parser.add_argument("--images", type=int, default=2048, help="size of the random uint8 training split")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads (default: train.py's); shared machine: at most the free cores"
    )
    args = parser.parse_args()

    variants = {}
    if args.width == 1.0:
        conn, child_conn = mp.get_context("spawn").Pipe()
        child = mp.get_context("spawn").Process(
            target=plain_process, args=(child_conn, args.threads, args.images, args.batch), daemon=True
        )
        child.start()
        variants |= {name: remote(conn, name) for name in conn.recv()}
    make_runtime(TrainerConfig(device="cpu", threads=args.threads, precision="fp32"))  # as train.py sets up a CPU run
    gemm = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    local = {
        name: timed(step) for name, step in rectnet_variants(random_split(args.images), args.batch, args.width).items()
    }
    for run in local.values():  # warm-up: allocator, oneDNN primitive caches, the fused PReLU kernel
        run(1)
    variants = local | variants
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name].append(run(args.steps) / args.steps)
    if args.width == 1.0:
        conn.send(None)
        child.join()
    rate = {name: args.batch / statistics.median(t) for name, t in times.items()}
    flops = train_flops_per_image(args.width)
    for name, r in rate.items():
        print(f"{name:>22}: {r:8.1f} images/s  (step {1000 * args.batch / r:7.1f} ms)")
    result = {
        "benchmark": "train_step",
        "model": "convpool_cnn_c",
        "width": args.width,
        "batch": args.batch,
        "precision": "fp32 unless the variant's name says bf16 or auto",
        "precision_auto": resolve_precision("auto", torch.device("cpu"))[0],
        "images_per_s": {k: round(v, 2) for k, v in rate.items()},
        "achieved_gflops": {k: round(v * flops / 1e9, 2) for k, v in rate.items()},
        "gemm_gflops": {k: round(v, 1) for k, v in gemm.items()},
        "bf16_over_fp32": round(rate["rectnet_relu_bf16"] / rate["rectnet_relu"], 3),
        "prelu_over_relu_step_time": round(rate["rectnet_relu"] / rate["rectnet_prelu"], 3),
        "unfused_prelu_over_relu_step_time": round(rate["rectnet_relu"] / rate["rectnet_prelu_unfused"], 3),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_bf16_flags": native_bf16_flags(),
        "cpu_has_avx512f": "avx512f" in cpu_flags(),
        "numpy": np.__version__,
    }
    if "plain" in rate:
        result["rectnet_relu_over_plain"] = round(rate["rectnet_relu"] / rate["plain"], 3)
        result["rectnet_relu_over_plain_model_only"] = round(rate["rectnet_relu"] / rate["plain_model_only"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
