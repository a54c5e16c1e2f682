"""A learnable offline dataset: each class is a fixed random low-frequency colour pattern.

An image is its class pattern plus Gaussian pixel noise, circularly shifted by a few pixels, so a
classifier must learn a shift-tolerant template match: a linear model does poorly, a small ConvNet
learns it in a few epochs. Everything is drawn from `seed`; nothing is read or downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rectnet.data.split import ImageSplits, Split

PATTERN_CELLS = 4  # patterns are drawn on a 4x4 grid and upsampled: low spatial frequency


def _patterns(num_classes: int, size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(num_classes, 3, PATTERN_CELLS, PATTERN_CELLS, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _draw(patterns: torch.Tensor, n: int, noise: float, generator: torch.Generator) -> Split:
    num_classes, _, size, _ = patterns.shape
    labels = torch.randint(num_classes, (n,), generator=generator)
    images = patterns[labels] + noise * torch.randn(n, *patterns.shape[1:], generator=generator)
    max_shift = max(1, size // 8)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        images[i] = images[i].roll((dy, dx), dims=(1, 2))
    pixels = (images * 64 + 128).round().clamp(0, 255).to(torch.uint8)
    return Split(pixels, labels)


def make_synthetic(
    num_classes: int, image_size: int, num_train: int, num_test: int, noise: float, seed: int
) -> ImageSplits:
    generator = torch.Generator().manual_seed(seed)
    patterns = _patterns(num_classes, image_size, generator)
    return ImageSplits(
        train=_draw(patterns, num_train, noise, generator),
        test=_draw(patterns, num_test, noise, generator),
    )
