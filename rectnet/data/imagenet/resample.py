"""Resampling a box of a decoded image with torch's antialiased bilinear filter, as if the whole image had been
resized and the box cut out of it (the training crops' and evaluation views' fast path)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

LEAD_CHOICES = 8  # extra outputs `resample` may compute to start its grid nearer a whole pixel


def resample(pixels: torch.Tensor, box: Sequence[float], size: tuple[int, int]) -> torch.Tensor:
    """`box` (left, top, right, bottom; floats, in pixels) of uint8 `pixels` (3, H, W) resampled to `size` (w, h):
    uint8 (3, h, w) with channels-last (HWC) memory, as the decoders give and `stack_channels_last` stacks.

    Antialiased bilinear filter (PIL's triangle filter) at the box's scale, as if the whole image were resized
    and the box cut out of it: the filter reads across the box's edges as it would there, and is clipped only
    at the image's edges. The box's left/top edge is rounded to the nearest pixel, a move of at most half a
    pixel (none for the evaluation views, whose boxes start on pixel 0). Only the box's region and the filter's
    support around it are read and filtered.
    """
    (height, width), (out_w, out_h) = pixels.shape[1:], size
    x = _plan(box[0], (box[2] - box[0]) / out_w, out_w, width)
    y = _plan(box[1], (box[3] - box[1]) / out_h, out_h, height)
    # channels-last memory takes torch's fast uint8 path, and gives channels-last output (the batch dimension is
    # added to the HWC view, where its stride is a plain one); a copy only when the region is a part of the image
    region = pixels.movedim(0, -1)[None, y.start : y.stop, x.start : x.stop].movedim(-1, 1)
    region = region.contiguous(memory_format=torch.channels_last)
    factors = (y.factor, x.factor)
    out = F.interpolate(region, scale_factor=factors, mode="bilinear", antialias=True, recompute_scale_factor=False)
    return out[0, :, y.lead : y.lead + out_h, x.lead : x.lead + out_w]


class _Plan(NamedTuple):
    start: int  # pixels [start, stop) are read
    stop: int
    lead: int  # outputs computed before the box's first one
    factor: float  # outputs per pixel


def _plan(origin: float, scale: float, count: int, limit: int) -> _Plan:
    """Resampling along one axis: `count` outputs, `scale` pixels apart, from `origin`, in pixels [0, limit).

    Torch's filter starts its grid on a whole pixel: the region starts `lead` outputs before the box, where
    `lead` is at least enough for the box's first output to see the filter's full support (or reaches the
    image's edge, when the box is closer to it), so that no output of the box sees a filter clipped where the
    whole resized image would not. Among the next LEAD_CHOICES leads, the one whose grid start lies nearest a
    whole pixel is taken: the grid then starts within half a pixel of `origin` (median 1/30 over the scales and
    offsets of ImageNet training crops, against 1/4 for rounding `origin` alone).
    """
    support = max(scale, 1.0)  # the triangle filter reads this many pixels either side of a sample's centre
    room = math.floor(origin / scale + 1e-6)  # outputs that fit between the image's edge and the box
    need = math.ceil(support / scale)
    leads = range(min(need, room), min(need + LEAD_CHOICES, room) + 1)
    lead = min(leads, key=lambda k: abs((origin - k * scale + 0.5) % 1 - 0.5))
    start = max(0, math.floor(origin - lead * scale + 0.5))
    stop = min(limit, math.ceil(origin + count * scale + support) + 1)
    factor = 1.0 / scale
    if math.floor((stop - start) * factor) < lead + count:
        # the box ends at the image's edge and `start` was rounded up (or floating point fell short): squeeze
        # the grid by less than half a pixel so that the last output still lands inside the image
        factor = (lead + count + 1e-6) / (stop - start)
    return _Plan(start, stop, lead, factor)
