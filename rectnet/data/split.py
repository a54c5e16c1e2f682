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


@dataclass
class ImageSplits:
    train: Split
    test: Split

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units (CReLU paper §3.1)."""
        pixels = self.train.images.transpose(0, 1).reshape(self.train.images.shape[1], -1).double() / 255.0
        return pixels.mean(1).tolist(), pixels.std(1).tolist()
