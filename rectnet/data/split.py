"""Whole dataset splits as uint8 tensors (N, C, H, W) with int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rectnet.config import ConfigError, DatasetConfig, TrainerConfig


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first `n` samples (all when n is None)."""
        return self if n is None else Split(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    def folds(self, num_folds: int, fold: int, seed: int = 0) -> tuple[Split, Split]:
        """(the other folds, fold `fold`) of a fixed partition into `num_folds` near-equal folds.

        The partition depends on `seed` only (default 0, not the run's seed), so the 10 networks of the
        CReLU paper's 10-fold protocol (§3.1: train on 9 folds, validate on 1) see complementary folds.
        """
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        start, stop = fold_bounds(len(self), num_folds, fold)
        held_out = order[start:stop].sort().values
        kept = torch.cat([order[:start], order[stop:]]).sort().values
        return self.take(kept), self.take(held_out)


def fold_bounds(images: int, num_folds: int, fold: int) -> tuple[int, int]:
    """Where fold `fold` of `num_folds` near-equal folds of `images` images starts and stops in the shuffled order."""
    return images * fold // num_folds, images * (fold + 1) // num_folds


def check_folds(images: int, data: DatasetConfig, source: str, at_most: bool = False) -> None:
    """Refuse k-fold cross-validation (dataset.num_folds) of a training split of `images` images (`source` says
    where that count comes from; `at_most`: an upper bound, known before the data are read) that leaves a fold
    empty: the held-out fold picks the best model, and an empty one would pick it on the test set."""
    if data.num_folds and images < data.num_folds:
        raise ConfigError(
            f"dataset.num_folds={data.num_folds} needs at least one image per fold, but the training split holds "
            f"{'at most ' if at_most else ''}{images} images ({source}): folds would be empty, and an empty held-out "
            f"fold picks the best model on the test set; use at most {images} folds"
        )


def held_out(images: int, data: DatasetConfig) -> int:
    """The images of a training split of `images` that k-fold cross-validation holds out of training."""
    if not data.num_folds or data.holdout_in_train:
        return 0
    start, stop = fold_bounds(images, data.num_folds, data.fold)
    return stop - start


def check_batch(
    images: int, data: DatasetConfig, trainer: TrainerConfig, world_size: int, source: str, at_most: bool = False
) -> None:
    """Refuse `images` training images (k-fold: the held-out fold already taken out; `source` says where the count
    comes from) that cannot fill one global batch: every step takes a whole one, the last incomplete batch of an
    epoch is dropped."""
    _, global_batch = trainer.batch_sizes(world_size)
    if images >= global_batch:
        return
    if data.num_folds and not data.holdout_in_train:
        source += f", less held-out fold {data.fold} of dataset.num_folds={data.num_folds}"
    scope = f" per process x {world_size}" if trainer.batch_scope == "process" else ""
    raise ConfigError(
        f"the training split holds {'at most ' if at_most else ''}{images} images ({source}), fewer than one global "
        f"batch of {global_batch} (trainer.batch_size={trainer.batch_size}{scope}): lower trainer.batch_size or "
        "train on more images"
    )


@dataclass
class ImageSplits:
    train: Split
    test: Split
    val: Split | None = None  # the held-out fold under k-fold cross-validation

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units (CReLU paper §3.1)."""
        pixels = self.train.images.transpose(0, 1).reshape(self.train.images.shape[1], -1).double() / 255.0
        return pixels.mean(1).tolist(), pixels.std(1).tolist()
