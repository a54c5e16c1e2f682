"""Datasets (a registry of loaders returning uint8 splits) and tensor batching."""

from __future__ import annotations

from collections.abc import Callable

from rectnet.config import DatasetConfig
from rectnet.data.batches import BatchAugment, TrainBatches, eval_batches
from rectnet.data.cifar import CIFAR10, CIFAR100, DatasetError, load_cifar
from rectnet.data.split import ImageSplits, Split, check_folds
from rectnet.data.synthetic import make_synthetic
from rectnet.registry import Registry

Loader = Callable[[DatasetConfig, int], ImageSplits]
DATASETS: Registry[Loader] = Registry("dataset")

DATASETS.register("cifar10")(lambda cfg, seed: load_cifar(CIFAR10, cfg.root, cfg.num_classes, cfg.download))
DATASETS.register("cifar100")(lambda cfg, seed: load_cifar(CIFAR100, cfg.root, cfg.num_classes, cfg.download))
DATASETS.register("synthetic")(
    lambda cfg, seed: make_synthetic(
        cfg.num_classes, cfg.image_size, cfg.num_train or 5000, cfg.num_test or 1000, cfg.synthetic_noise, seed
    )
)


def load_dataset(cfg: DatasetConfig, seed: int) -> ImageSplits:
    """Load `cfg.name`, keep the first num_train / num_test samples when those are set, and with
    `num_folds` > 0 hold fold `fold` of the training split out as a validation split (which stays in the
    training split too with `holdout_in_train`)."""
    splits = DATASETS.get(cfg.name)(cfg, seed)
    train, test = splits.train.head(cfg.num_train), splits.test.head(cfg.num_test)
    check_folds(len(train), cfg, f"{cfg.name} as loaded")
    if cfg.num_folds:
        rest, val = train.folds(cfg.num_folds, cfg.fold)
        return ImageSplits(train if cfg.holdout_in_train else rest, test, val)
    return ImageSplits(train, test)


__all__ = [
    "DATASETS",
    "BatchAugment",
    "DatasetError",
    "ImageSplits",
    "Split",
    "TrainBatches",
    "eval_batches",
    "load_dataset",
]
