"""ImageNet input-pipeline throughput on real JPEGs: rectnet's training decode against the plain torchvision one.

    python scripts/bench/data.py dataset.root=DIR [--split train|test] [--workers N] [--rounds 5] [--images 400]

dataset.root means what it means to train.py: the folder that holds the splits, DIR/train/<class>/*.JPEG and
DIR/val/<class>/*.JPEG. The benchmark reads the training split (dataset.train_split, default train), or with
--split test the test split (dataset.test_split, default val: ImageNet's validation images). A split of "" is
DIR itself, as for train.py: the 100-image sample is one folder of classes, so after
tar -xf ../shared/data/imagenet-sample-100.tar -C /tmp it is dataset.root=/tmp/imagenet-sample dataset.train_split=
Overrides are Hydra-style key=value words, as train.py takes them; options start with --.

Both pipelines do the He et al. 2015 training transform (§3): shorter side s uniform in [256, 512],
random 224 crop, horizontal flip. "plain" is what a user writes by hand: torchvision ImageFolder (PIL loader),
a transform drawing s per call then Resize(s), RandomCrop(224), RandomHorizontalFlip, ToTensor, Normalize.
"fast" is rectnet.data.imagenet: one decode (reduced by the JPEG decoder when the image is >= 2x the resized
frame), only the crop's region resampled, uint8 out; lighting and normalization run batched on the training
device, and are timed here separately on the CPU ("fast + batched preprocess on CPU").

Per-worker rates: one process (num_workers=0), torch at one thread as in a DataLoader worker, the two
pipelines interleaved round by round (a noisy shared machine slows both alike), median over rounds. With
--workers N the same is measured with N worker processes (total images/s). Then the evaluation side:
time per image of the 10-view protocol against the center view (each decoded once per image), and checks
that the fast pipeline draws the plain one's distribution of scales, crop positions and flips (two-sample
Kolmogorov-Smirnov) and cuts the same pixels (mean absolute difference at the same draw). The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms

from rectnet.config import DatasetConfig
from rectnet.data.batches import generator
from rectnet.data.imagenet import (
    Preprocess,
    ScaleJitterCrop,
    TrainDataset,
    TrainLoader,
    ViewDataset,
    index_image_folder,
    train_crop,
)
from rectnet.data.views import resized_size

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # per-channel ImageNet statistics, [0, 1] units
KEYS = {"dataset.root", "dataset.train_split", "dataset.test_split"}


class RandomShorterSide:
    """Resize so the shorter side is s ~ U{low..high}, drawn per call: scale jitter as a user writes it."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __call__(self, image: Image.Image) -> Image.Image:
        return transforms.functional.resize(image, random.randint(self.low, self.high))


def plain_transform(crop: int = 224) -> transforms.Compose:
    return transforms.Compose(
        [
            RandomShorterSide(256, 512),
            transforms.RandomCrop(crop),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="+", metavar="key=value", help=f"one of {sorted(KEYS)}")
    parser.add_argument(
        "--split", choices=("train", "test"), default="train", help="the split of dataset.root to read (train)"
    )
    parser.add_argument("--workers", type=int, default=0, help="also measure with this many worker processes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=400, help="images per pipeline per round")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--draws", type=int, default=20000, help="crop draws per pipeline for the statistics")
    args = parser.parse_args(argv)
    pairs = dict(word.split("=", 1) for word in args.overrides if "=" in word)
    if len(pairs) != len(args.overrides) or not set(pairs) <= KEYS or "dataset.root" not in pairs:
        parser.error(f"overrides must be key=value with keys in {sorted(KEYS)}, dataset.root required")
    args.folder = split_folder(pairs, args.split)
    return args


def split_folder(pairs: dict[str, str], split: str) -> Path:
    """The folder of `split` (train or test) under dataset.root, as train.py finds it: <root>/<train_split> or
    <root>/<test_split>, with the config's defaults for the split names; an empty split name is the root."""
    key = f"dataset.{split}_split"
    name = pairs.get(key, getattr(DatasetConfig, f"{split}_split"))
    return Path(pairs["dataset.root"]) / name


def timed(run: Callable[[], int]) -> float:
    """Images per second of `run`, which returns how many images it produced."""
    start = time.perf_counter()
    count = run()
    return count / (time.perf_counter() - start)


def fast_runner(loader: TrainLoader, images: int) -> Callable[[], int]:
    epochs = iter(range(10**9))

    def run() -> int:
        count = 0
        while count < images:
            count += sum(len(batch.labels) for batch in loader.epoch(next(epochs)))
        return count

    return run


def plain_runner(loader: torch.utils.data.DataLoader, images: int) -> Callable[[], int]:
    def run() -> int:
        count = 0
        while count < images:
            count += sum(len(labels) for _, labels in loader)
        return count

    return run


def loaders(root: Path, batch: int, workers: int) -> dict[str, Callable[[], int]]:
    index = index_image_folder(root)
    fast = TrainLoader(TrainDataset(index, seed=0), batch, workers=workers)
    plain = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root), plain_transform()),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    return {"fast": fast, "plain": plain}


def throughput(root: Path, args: argparse.Namespace, workers: int) -> dict[str, list[float]]:
    """Images/s of each pipeline in each of the interleaved rounds."""
    made = loaders(root, args.batch, workers)
    runners = {"fast": fast_runner(made["fast"], args.images), "plain": plain_runner(made["plain"], args.images)}
    for run in runners.values():  # warm-up: file cache, worker start
        run()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            rates[name].append(timed(run))
    return rates


def preprocess_seconds_per_image(root: Path, batch: int) -> float:
    """CPU time of the batched lighting + normalization that the fast pipeline leaves to the device."""
    loader = TrainLoader(TrainDataset(index_image_folder(root), seed=0), batch)
    batches = list(loader.epoch(0))
    preprocess = Preprocess(mean=torch.tensor(MEAN), std=torch.tensor(STD))
    start = time.perf_counter()
    count = 0
    for _ in range(3):
        for b in batches:
            preprocess(b.images, b.lighting)
            count += len(b.images)
    return (time.perf_counter() - start) / count


def eval_seconds_per_image(root: Path, rounds: int) -> dict[str, float]:
    """Median time per image to produce each protocol's views (one decode per image), interleaved."""
    index = index_image_folder(root)
    protocols = {name: ViewDataset(index, name) for name in ("center", "ten_view", "dense")}
    times: dict[str, list[float]] = {name: [] for name in protocols}
    for _ in range(rounds):
        for name, dataset in protocols.items():
            start = time.perf_counter()
            for i in range(len(dataset)):
                dataset[i]
            times[name].append((time.perf_counter() - start) / len(dataset))
    return {name: statistics.median(t) for name, t in times.items()}


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov distance of two samples and its critical value at the 1% level."""
    values = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), values, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), values, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max()), 1.628 * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))


def draws(sizes: list[tuple[int, int]], count: int) -> dict[str, dict[str, np.ndarray]]:
    """(scale, normalized crop centre x and y, flip) of `count` crops, cycling over the image sizes, drawn
    by the fast pipeline (per-sample generators) and by the plain one (random + RandomCrop.get_params)."""
    spec, crop = ScaleJitterCrop(), 224
    fast, plain = [], []
    random.seed(0)
    torch.manual_seed(0)
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        d = spec.draw(width, height, generator(0, 0, i))
        fast.append((d.scale, (d.offset[0] + crop / 2) / d.resized[0], (d.offset[1] + crop / 2) / d.resized[1], d.flip))
        scale = random.randint(256, 512)  # as RandomShorterSide, then RandomCrop and RandomHorizontalFlip
        w, h = resized_size(width, height, scale)
        top, left, _, _ = transforms.RandomCrop.get_params(torch.empty(1, 1, 1).expand(3, h, w), (crop, crop))
        flip = bool(torch.rand(1) < 0.5)
        plain.append((scale, (left + crop / 2) / w, (top + crop / 2) / h, flip))
    names = ("scale", "center_x", "center_y", "flip")
    return {
        label: {n: np.array([row[k] for row in rows], dtype=np.float64) for k, n in enumerate(names)}
        for label, rows in (("fast", fast), ("plain", plain))
    }


def distribution_check(sizes: list[tuple[int, int]], count: int) -> dict[str, dict[str, float]]:
    sample = draws(sizes, count)
    report = {}
    for name in ("scale", "center_x", "center_y", "flip"):
        a, b = sample["fast"][name], sample["plain"][name]
        distance, critical = ks_two_sample(a, b)
        report[name] = {
            "fast_mean": round(float(a.mean()), 4),
            "plain_mean": round(float(b.mean()), 4),
            "fast_std": round(float(a.std()), 4),
            "plain_std": round(float(b.std()), 4),
            "ks": round(distance, 4),
            "ks_critical_1pct": round(critical, 4),
        }
    return report


def pixel_check(root: Path, per_image: int = 3) -> dict[str, float]:
    """Mean absolute difference (0-255 levels) between the fast crop and Resize(s) + crop + flip at the same draw."""
    index, spec = index_image_folder(root), ScaleJitterCrop()
    diffs = []
    for i in range(len(index)):
        path = index.path(i)
        image = Image.open(path).convert("RGB")
        for k in range(per_image):
            d = spec.draw(*image.size, generator(1, k, i))
            x, y = d.offset
            plain = np.asarray(image.resize(d.resized, Image.BILINEAR).crop((x, y, x + 224, y + 224)), np.float32)
            plain = plain[:, ::-1] if d.flip else plain
            fast = train_crop(path, spec, generator(1, k, i)).permute(1, 2, 0).numpy().astype(np.float32)
            diffs.append(float(np.abs(fast - plain).mean()))
    return {"mean": round(statistics.mean(diffs), 3), "p99": round(float(np.percentile(diffs, 99)), 3)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    root = args.folder
    torch.set_num_threads(1)  # as in a DataLoader worker
    rounds = throughput(root, args, workers=0)
    single = {name: statistics.median(r) for name, r in rounds.items()}
    preprocess = preprocess_seconds_per_image(root, args.batch)
    with_preprocess = 1 / (1 / single["fast"] + preprocess)
    print(f"training pipeline, one process ({len(index_image_folder(root))} images, {args.rounds} rounds):")
    print(f"  {'':<34} {'median':>8} {'min':>8} {'max':>8}  images/s")
    for label, name in (("plain (torchvision, PIL)", "plain"), ("fast (rectnet)", "fast")):
        print(f"  {label:<34} {single[name]:8.1f} {min(rounds[name]):8.1f} {max(rounds[name]):8.1f}")
    print(f"  {'fast + batched preprocess on CPU':<34} {with_preprocess:8.1f}")
    print(f"  fast / plain: {single['fast'] / single['plain']:.2f}")
    parallel = None
    if args.workers > 0:
        parallel = {name: statistics.median(r) for name, r in throughput(root, args, args.workers).items()}
        print(f"with {args.workers} workers: plain {parallel['plain']:.1f}, fast {parallel['fast']:.1f} images/s")
    evaluation = eval_seconds_per_image(root, args.rounds)
    ratio = evaluation["ten_view"] / evaluation["center"]
    print("evaluation views, one decode per image:")
    for name, seconds in evaluation.items():
        print(f"  {name:<10} {1000 * seconds:7.2f} ms/image")
    print(f"  ten_view / center cost: {ratio:.2f}")
    index = index_image_folder(root)
    sizes = [Image.open(index.path(i)).size for i in range(len(index))]
    distribution = distribution_check(sizes, args.draws)
    print(
        f"crop distribution, {args.draws} draws each (KS distance < 1% critical value means no detectable difference):"
    )
    for name, row in distribution.items():
        verdict = "same" if row["ks"] < row["ks_critical_1pct"] else "DIFFERENT"
        print(
            f"  {name:<9} mean fast {row['fast_mean']:.4f} plain {row['plain_mean']:.4f}  "
            f"std {row['fast_std']:.4f} / {row['plain_std']:.4f}  KS {row['ks']:.4f} < {row['ks_critical_1pct']:.4f}? "
            f"{verdict}"
        )
    pixels = pixel_check(root)
    print(f"pixels vs Resize(s)+crop+flip at the same draw: mean |diff| {pixels['mean']} levels (p99 {pixels['p99']})")
    result = {
        "benchmark": "imagenet_input_pipeline",
        "fast_images_per_s": round(single["fast"], 1),
        "fast_images_per_s_range": [round(min(rounds["fast"]), 1), round(max(rounds["fast"]), 1)],
        "plain_images_per_s": round(single["plain"], 1),
        "plain_images_per_s_range": [round(min(rounds["plain"]), 1), round(max(rounds["plain"]), 1)],
        "fast_over_plain": round(single["fast"] / single["plain"], 3),
        "fast_with_cpu_preprocess_images_per_s": round(with_preprocess, 1),
        "workers": args.workers,
        "fast_images_per_s_workers": round(parallel["fast"], 1) if parallel else None,
        "plain_images_per_s_workers": round(parallel["plain"], 1) if parallel else None,
        "eval_ms_per_image": {k: round(1000 * v, 3) for k, v in evaluation.items()},
        "ten_view_over_center": round(ratio, 3),
        "distribution_same": all(r["ks"] < r["ks_critical_1pct"] for r in distribution.values()),
        "pixel_mean_abs_diff": pixels["mean"],
        "images": len(index),
        "split": args.split,
        "folder": str(root),
        "rounds": args.rounds,
        "images_per_round": args.images,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
