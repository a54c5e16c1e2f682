"""Crop planning: the papers' scale-jittered training crops (He et al. 2015 §3) and the evaluation views
(`rectnet.data.views`), each cut from a single decode of its image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from rectnet.data.imagenet.decode import EncodedImage
from rectnet.data.imagenet.resample import resample
from rectnet.data.views import DENSE_SCALES, View, cut_views, protocol_views, resized_size


class CropDraw(NamedTuple):
    """One draw of the training crop: scale s, resized frame (w, h), crop offset (x, y) in it, flip."""

    scale: int
    resized: tuple[int, int]
    offset: tuple[int, int]
    crop: int
    flip: bool

    def box(self, frame: tuple[float, float]) -> tuple[float, float, float, float]:
        """The crop box mapped into a frame of size `frame` (w, h) covering the whole image (e.g. the source)."""
        fx, fy = frame[0] / self.resized[0], frame[1] / self.resized[1]
        (x, y), c = self.offset, self.crop
        return x * fx, y * fy, (x + c) * fx, (y + c) * fy


@dataclass(frozen=True)
class ScaleJitterCrop:
    """He et al. 2015 §3: shorter side s ~ U{scale_min..scale_max}, a random crop x crop
    window uniform over its valid integer offsets in the resized image, mirrored with probability 1/2."""

    scale_min: int = 256
    scale_max: int = 512
    crop: int = 224
    flip: bool = True

    def __post_init__(self) -> None:
        if not self.crop <= self.scale_min <= self.scale_max:
            raise ValueError(
                f"need crop <= scale_min <= scale_max, got {self.crop}, {self.scale_min}, {self.scale_max}"
            )

    def draw(self, width: int, height: int, gen: torch.Generator) -> CropDraw:
        scale = _randint(self.scale_min, self.scale_max, gen)
        resized = resized_size(width, height, scale)
        offset = (_randint(0, resized[0] - self.crop, gen), _randint(0, resized[1] - self.crop, gen))
        flip = bool(torch.rand((), generator=gen) < 0.5)  # drawn even when unused: the same stream either way
        return CropDraw(scale, resized, offset, self.crop, flip and self.flip)


MULTI_SCALE = ScaleJitterCrop()  # He et al. 2015 §3: s ~ U{256..512}, 224x224 crops, flips


def _randint(low: int, high: int, gen: torch.Generator) -> int:
    """Uniform over the integers low..high inclusive."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def train_crop(path: str, spec: ScaleJitterCrop, gen: torch.Generator, draft_gap: float = 1.0) -> torch.Tensor:
    """Decode the image at `path` once and return its random training crop, uint8 (3, crop, crop)."""
    encoded = EncodedImage.read(path)
    draw = spec.draw(*encoded.size, gen)
    pixels, content = encoded.decode(draw.resized, draft_gap)
    crop = resample(pixels, draw.box(content), (spec.crop, spec.crop))
    return crop.flip(-1) if draw.flip else crop


def render_views(
    path: str,
    protocol: str,
    size: int = 256,
    crop: int = 224,
    scales: Sequence[int] = DENSE_SCALES,
    draft_gap: float = 1.0,
) -> list[torch.Tensor]:
    """The views of `protocol` for the image at `path`, from a single decode.

    One uint8 tensor (V, 3, h, w) per resized size: [(1, ...)] for center, [(10, ...)] for ten_view, and for
    dense one (2, 3, h, w) per scale (the image and its mirror image).
    """
    encoded = EncodedImage.read(path)
    groups: dict[tuple[int, int], list[View]] = {}
    for view in protocol_views(protocol, *encoded.size, size, crop, scales):
        groups.setdefault(view.resized, []).append(view)
    pixels, content = encoded.decode(max(groups, key=lambda wh: wh[0] * wh[1]), draft_gap)
    return [cut_views(resample(pixels, (0, 0, *content), resized), group) for resized, group in groups.items()]
