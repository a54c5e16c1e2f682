"""Datasets over an ImageIndex: training crops keyed by (epoch, index), and the evaluation views of each image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from rectnet.data.batches import generator
from rectnet.data.imagenet.crops import MULTI_SCALE, ScaleJitterCrop, render_views, train_crop
from rectnet.data.imagenet.decode import CorruptImageError
from rectnet.data.imagenet.index import ImageIndex
from rectnet.data.imagenet.lighting import LIGHTING_STD, draw_lighting
from rectnet.data.views import DENSE_SCALES, PROTOCOLS, stack_channels_last


class TrainSample(NamedTuple):
    image: torch.Tensor | None  # uint8 (3, crop, crop), HWC memory; None: a corrupt file, skip_corrupt on
    label: int
    index: int
    lighting: torch.Tensor  # (3,) alphas


class TrainBatch(NamedTuple):
    images: torch.Tensor  # uint8 (N, 3, crop, crop), channels-last memory; N < batch size when files were skipped
    labels: torch.Tensor  # int64 (N,)
    lighting: torch.Tensor  # (N, 3) alphas: preprocess(images, lighting) on the device, preprocess a Preprocess
    indices: torch.Tensor  # int64 (N,) dataset indices
    skipped: torch.Tensor  # int64 (K,) dataset indices of the corrupt files dropped from this batch


class TrainDataset(Dataset):
    """Training crops keyed by (epoch, index), the keys GlobalBatchSampler yields: every random choice comes from
    generator(seed, epoch, index), so the epoch reaches persistent workers with each key.

    Items are TrainSample (uint8 image, label, index, lighting alphas). A corrupt file raises
    CorruptImageError naming it, or with `skip_corrupt` gives image None, which `TrainCollate` drops and
    reports in `TrainBatch.skipped`.
    """

    def __init__(
        self,
        index: ImageIndex,
        seed: int,
        spec: ScaleJitterCrop = MULTI_SCALE,
        lighting_std: float = LIGHTING_STD,
        skip_corrupt: bool = False,
        draft_gap: float = 1.0,
    ) -> None:
        self.index, self.seed, self.spec = index, seed, spec
        self.lighting_std, self.skip_corrupt, self.draft_gap = lighting_std, skip_corrupt, draft_gap

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: tuple[int, int]) -> TrainSample:
        epoch, i = key
        gen = generator(self.seed, epoch, i)
        try:
            image = train_crop(self.index.path(i), self.spec, gen, self.draft_gap)
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            image = None
        return TrainSample(image, int(self.index.labels[i]), i, draw_lighting(1, gen, self.lighting_std)[0])


@dataclass(frozen=True)
class TrainCollate:
    """Stack TrainSamples into a TrainBatch, dropping the corrupt ones (image None) and listing them."""

    crop: int

    def __call__(self, samples: Sequence[TrainSample]) -> TrainBatch:
        kept = [s for s in samples if s.image is not None]
        images = (
            stack_channels_last([s.image for s in kept]) if kept else torch.empty(0, 3, self.crop, self.crop).byte()
        )
        return TrainBatch(
            images,
            torch.tensor([s.label for s in kept], dtype=torch.int64),
            torch.stack([s.lighting for s in kept]) if kept else torch.empty(0, 3),
            torch.tensor([s.index for s in kept], dtype=torch.int64),
            torch.tensor([s.index for s in samples if s.image is None], dtype=torch.int64),
        )


class EvalSample(NamedTuple):
    views: list[torch.Tensor] | None  # see render_views; None: corrupt file skipped
    label: int
    index: int


class EvalBatch(NamedTuple):
    views: list[torch.Tensor]  # per view size: uint8 (B, V, 3, h, w), HWC memory; empty when every file was skipped
    labels: torch.Tensor  # int64 (B,)
    indices: torch.Tensor  # int64 (B,)
    skipped: torch.Tensor  # int64 (K,) dataset indices of corrupt files dropped


class ViewDataset(Dataset):
    """The evaluation views of each image under `protocol` ("center", "ten_view", "dense"); see views.py.

    center / ten_view: shorter side `size`, crop x crop views. dense: the whole image at each of `scales`
    and its flip; dense views differ in size from image to image, so batch them one image at a time.
    """

    def __init__(
        self,
        index: ImageIndex,
        protocol: str,
        size: int = 256,
        crop: int = 224,
        scales: Sequence[int] = DENSE_SCALES,
        skip_corrupt: bool = False,
        draft_gap: float = 1.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown evaluation protocol {protocol!r}; expected one of {PROTOCOLS}")
        self.index, self.protocol, self.size, self.crop, self.scales = index, protocol, size, crop, tuple(scales)
        self.skip_corrupt, self.draft_gap = skip_corrupt, draft_gap

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> EvalSample:
        try:
            views = render_views(self.index.path(i), self.protocol, self.size, self.crop, self.scales, self.draft_gap)
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            views = None
        return EvalSample(views, int(self.index.labels[i]), i)


def collate_views(samples: Sequence[EvalSample]) -> EvalBatch:
    """Stack each view size across the batch into (B, V, 3, h, w), dropping corrupt files (views None)."""
    kept = [s for s in samples if s.views is not None]
    shapes = {tuple(v.shape for v in s.views) for s in kept}
    if len(shapes) > 1:
        raise ValueError(f"views of different sizes in one batch ({len(shapes)} kinds): use batch_size=1 (dense)")
    views = [stack_channels_last(group) for group in zip(*(s.views for s in kept), strict=True)] if kept else []
    return EvalBatch(
        views,
        torch.tensor([s.label for s in kept], dtype=torch.int64),
        torch.tensor([s.index for s in kept], dtype=torch.int64),
        torch.tensor([s.index for s in samples if s.views is None], dtype=torch.int64),
    )
