"""Whole dataset splits as uint8 tensors (N, C, H, W) with int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
        start, stop = len(self) * fold // num_folds, len(self) * (fold + 1) // num_folds
        held_out = order[start:stop].sort().values
        kept = torch.cat([order[:start], order[stop:]]).sort().values
        return self.take(kept), self.take(held_out)


@dataclass
class ImageSplits:
    train: Split
    test: Split
    val: Split | None = None  # the held-out fold under k-fold cross-validation

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units (CReLU paper §3.1)."""
        pixels = self.train.images.transpose(0, 1).reshape(self.train.images.shape[1], -1).double() / 255.0
        return pixels.mean(1).tolist(), pixels.std(1).tolist()
