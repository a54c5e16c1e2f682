"""Evaluation views of the two papers: their geometry, cutting them from a resized image, dense scoring.

Protocols (He et al. 2015 §3; Shang et al. 2016 §3.2):

- `center`: shorter side 256, the central 224x224 crop (CReLU paper §3.2, "centre crop only").
- `ten_view`: shorter side 256, the four corner crops and the central one, and the horizontal flips of
  those five (He et al. 2015 Tables 2/5; CReLU paper Table 4, marked †). The caller averages the scores.
- `dense`: the whole image resized so its shorter side is each of (256, 384, 480), and its flip (He et al.
  2015 §3, Tables 4/6): the conv layers run on the full image, every 14x14 window of the last feature map
  is pooled by SPP and classified by the fc layers, the scores of all windows are averaged (`dense_scores`).

Geometry follows torchvision's conventions, so the views are those of the plain torchvision pipeline a
reproduction would write (Resize(256) then CenterCrop/TenCrop(224)): the resized size keeps the shorter
side exact and truncates the longer one, int(s * long / short); the center offset rounds half to even
(Python's round, as torchvision's center_crop). Boxes are (left, top, right, bottom), right/bottom
exclusive, in the pixel frame of the resized image. Every view of one image is cut from one decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Box = tuple[int, int, int, int]
PROTOCOLS = ("center", "ten_view", "dense")
DENSE_SCALES = (256, 384, 480)  # He et al. 2015 Table 4


@dataclass(frozen=True)
class View:
    """One evaluation input: `box` cut from the image resized to `resized` (w, h), mirrored when `flip`."""

    resized: tuple[int, int]
    box: Box
    flip: bool = False


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(w, h) of the image resized so its shorter side is `shorter`; the longer side is truncated."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_box(width: int, height: int, crop: int) -> Box:
    """The central crop x crop box of a width x height frame."""
    _check_fits(width, height, crop)
    left, top = round((width - crop) / 2), round((height - crop) / 2)
    return left, top, left + crop, top + crop


def five_boxes(width: int, height: int, crop: int) -> list[Box]:
    """Top-left, top-right, bottom-left, bottom-right and center crop x crop boxes (torchvision's order)."""
    _check_fits(width, height, crop)
    right, bottom = width - crop, height - crop
    corners = [(0, 0), (right, 0), (0, bottom), (right, bottom)]
    return [(x, y, x + crop, y + crop) for x, y in corners] + [center_box(width, height, crop)]


def center_views(width: int, height: int, size: int = 256, crop: int = 224) -> list[View]:
    """The single center view of a width x height image."""
    resized = resized_size(width, height, size)
    return [View(resized, center_box(*resized, crop))]


def ten_views(width: int, height: int, size: int = 256, crop: int = 224) -> list[View]:
    """The five crops, then the same five mirrored: 10 views from one resized image."""
    resized = resized_size(width, height, size)
    boxes = five_boxes(*resized, crop)
    return [View(resized, box, flip) for flip in (False, True) for box in boxes]


def dense_views(width: int, height: int, scales: Sequence[int] = DENSE_SCALES) -> list[View]:
    """The whole image at each scale (shorter side), and its mirror image."""
    views = []
    for scale in scales:
        resized = resized_size(width, height, scale)
        views += [View(resized, (0, 0, *resized), flip) for flip in (False, True)]
    return views


def protocol_views(
    protocol: str, width: int, height: int, size: int = 256, crop: int = 224, scales: Sequence[int] = DENSE_SCALES
) -> list[View]:
    """The views of `protocol` (one of PROTOCOLS) for a width x height image."""
    if protocol == "center":
        return center_views(width, height, size, crop)
    if protocol == "ten_view":
        return ten_views(width, height, size, crop)
    if protocol == "dense":
        return dense_views(width, height, scales)
    raise ValueError(f"unknown evaluation protocol {protocol!r}; expected one of {PROTOCOLS}")


def cut_views(resized: torch.Tensor, views: Sequence[View]) -> torch.Tensor:
    """Stack the views' boxes of one resized image (C, h, w) into (V, C, crop_h, crop_w), flipping as asked."""
    crops = []
    for view in views:
        left, top, right, bottom = view.box
        crop = resized[:, top:bottom, left:right]
        crops.append(crop.flip(-1) if view.flip else crop)
    return stack_channels_last(crops)


def stack_channels_last(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (..., C, H, W) tensors into (N, ..., C, H, W) with channels-last (HWC) memory.

    The decoders and the resampler produce HWC memory; stacking it as such is a plain copy, where
    torch.stack would transpose every image into CHW memory (about 20 times slower for uint8 crops).
    """
    return torch.stack([image.movedim(-3, -1) for image in images]).movedim(-1, -3)


def _check_fits(width: int, height: int, crop: int) -> None:
    if crop > width or crop > height:
        raise ValueError(f"a {crop}x{crop} view does not fit in a {width}x{height} image")


def dense_scores(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    head_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    window: int = 14,
    stride: int = 1,
    average: str = "softmax",
    max_windows: int = 512,
) -> torch.Tensor:
    """Sliding-window scores on the last conv feature map (He et al. 2015 §3, Tables 4/6): (N, K) per image.

    `features_fn` maps images (N, 3, H, W) to the last conv map (N, C, h, w); `head_fn` maps pooled windows
    (M, C, window, window) to logits (M, K), i.e. SPP followed by the fc layers. Every `window` x `window`
    window of the map is scored and the softmax scores (`average="softmax"`) or the logits ("logits") of all
    windows are averaged. At total stride 16 a 14x14 window sees a 224x224 image window, the training crop.

    `stride` is the step between windows on the feature map. The paper does not give it (He et al. 2015 §3);
    the default 1 (16 image pixels) takes every window, the densest choice. The conv layers run once per
    image; the fc layers run once per window (model A: about 0.15 GMAC per window, so at scale 480, with
    some 460 windows, about as much as its conv layers there); stride 2 quarters that. A map smaller than
    `window` along an axis is used whole along that axis (one window position there), so small images
    still get a score.

    Windows go through `head_fn` in groups of at most about `max_windows`, bounding memory at large scales.
    """
    if average not in ("softmax", "logits"):
        raise ValueError(f"average must be 'softmax' or 'logits', got {average!r}")
    maps = features_fn(images)
    n, c, h, w = maps.shape
    win_h, win_w = min(window, h), min(window, w)
    # (N, C, rows, cols, win_h, win_w): a view, no copy; windows are copied a group of rows at a time
    windows = maps.unfold(2, win_h, stride).unfold(3, win_w, stride)
    rows, cols = windows.shape[2], windows.shape[3]
    rows_per_group = max(1, max_windows // (n * cols))
    total = None
    for first in range(0, rows, rows_per_group):
        group = windows[:, :, first : first + rows_per_group]
        batch = group.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, win_h, win_w)
        scores = head_fn(batch).float()
        scores = scores.softmax(-1) if average == "softmax" else scores
        summed = scores.view(n, -1, scores.shape[-1]).sum(1)
        total = summed if total is None else total + summed
    return total / (rows * cols)
