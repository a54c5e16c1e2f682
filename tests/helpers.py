"""Test helpers: compose the real Hydra config tree, run entry points as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import rectnet.config  # noqa: F401  (registers the schema)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED = ROOT.parent / "shared"

# A few seconds per run on 2 CPU cores: an eighth-width ConvPool-CNN-C on 16x16 synthetic images.
TINY = [
    "dataset=synthetic",
    "dataset.image_size=16",
    "dataset.num_train=512",
    "dataset.num_test=200",
    "model.width=0.125",
    "model.dropout=0",
    "optim.lr=0.01",
    "schedule=constant",
    "trainer.batch_size=64",
    "trainer.epochs=2",
    "trainer.progress=none",
    "trainer.precision=fp32",  # the exact numbers tests compare; precision=auto is bf16 on CPUs with avx512_bf16
]

# the dataset keys of a run on make_image_folder's two classes: 32 px crops from shorter sides 36..40
TINY_IMAGE_FOLDER = [
    "dataset=imagenet",
    "dataset.num_classes=2",
    "dataset.image_size=32",
    "dataset.scale_min=36",
    "dataset.scale_max=40",
    "dataset.stats_images=16",
    "eval.size=36",
]


def compose_train(overrides: list[str], run_dir: Path | str = ".") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, f"run_dir={run_dir}"])


def run_cli(args: list[str], script: str = "train.py", timeout: int = 300) -> subprocess.CompletedProcess:
    """Run an entry point in a fresh interpreter, as a user would; returns the completed process."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def make_image_folder(
    root: Path, classes: int = 2, train: int = 4, val: int = 2, size: tuple[int, int] = (48, 40)
) -> Path:
    """A tiny ImageNet-style tree of JPEGs: <root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG.

    Each class is its own smooth colour pattern plus noise (numpy seed 0), so the files differ; returns root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float64)
    for c in range(classes):
        base = np.stack([128 + 60 * np.sin((x * (c + 1) + y * k) / 9 + k) for k in range(3)], -1)
        for split, count in (("train", train), ("val", val)):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG", "JPEG", quality=90)
    return root
