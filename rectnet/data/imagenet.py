"""ImageNet from an ImageFolder tree: the papers' training pipeline at full speed and their test protocols.

Training input (He et al. 2015 §3, papers.md A3; the CReLU paper follows Krizhevsky et al. 2012, B5):
shorter side s drawn uniformly from the integers [s_min, s_max] ([256, 512], fixed s = 256 for the 14-layer
net), a random 224x224 crop, a horizontal flip for half of the samples, AlexNet's PCA colour augmentation,
then mean subtraction: per pixel (He et al.) or per channel with std division (Shang et al.).

Fast path. The plain pipeline decodes the JPEG, resizes the whole image to shorter side s, then crops.
Here the crop is drawn exactly as there (offsets uniform over the valid integer positions in the resized
frame), mapped back to source coordinates, and only that region is resampled:

- one decode per image, by libjpeg-turbo: through torchvision's decoder where present (the same pixels as
  PIL's, straight into a tensor) or PIL. When the image is at least twice the resized frame (times
  `draft_gap`), the decoder is asked for a reduced-size decode (PIL `draft`: DCT scaling by 1/2, 1/4 or 1/8),
  never smaller than the resized frame, so large sources cost a fraction of a full decode;
- the crop's region is resampled with torch's antialiased bilinear filter (PIL's triangle filter, about four
  times faster on uint8 images) at the plain pipeline's scale, reading across the crop's edges as the whole
  resize would. Its grid starts on a whole decoded pixel, within half a pixel of the exact box (median 1/30
  on ImageNet-like sizes; `_plan`): the crops are the plain pipeline's to about one grey level on average,
  and their scales and positions have its distribution (tests and scripts/bench_data.py check both);
- the worker returns uint8 images in HWC memory, stacked without transposition into channels-last batches;
  lighting and normalization run batched on the training device (`Preprocess`).

Every random choice for sample i in epoch e comes from a generator seeded by (seed, e, i), so batches do
not depend on the number of workers or on how they are seeded, and a run resumed mid-epoch is exact.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from rectnet.data.batches import generator, shard_bounds
from rectnet.data.views import (
    DENSE_SCALES,
    PROTOCOLS,
    View,
    cut_views,
    protocol_views,
    resized_size,
    stack_channels_last,
)

try:  # deprecated in torchvision 0.29 in favour of TorchCodec; PIL decodes the same JPEGs where it is gone
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _decode_jpeg
except ImportError:
    _decode_jpeg = None

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
Size = tuple[float, float]
LEAD_CHOICES = 8  # extra outputs `resample` may compute to start its grid nearer a whole pixel
LAYOUT = "<root>/<split>/<class>/<image>.JPEG, one folder per class (e.g. train/n01440764/n01440764_10026.JPEG)"

# AlexNet's PCA of ImageNet RGB pixel values, scaled to [0, 1] pixels: eigenvalues and eigenvectors (one per
# column). Published constants, as used by fb.resnet.torch (datasets/imagenet.lua, `pca`) and many later
# reimplementations; Krizhevsky et al. 2012 §4.1 describe the augmentation but print no values.
IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = torch.tensor(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)
LIGHTING_STD = 0.1  # alpha ~ N(0, 0.1) per component (Krizhevsky et al. 2012 §4.1)


class ImageFolderError(RuntimeError):
    """The ImageFolder tree is missing or malformed; the message says what was expected and what was found."""


class CorruptImageError(RuntimeError):
    """An image file could not be read or decoded (corrupt, truncated, not an image)."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(f"cannot decode {path}: {cause}")
        self.path = path


# ---------------------------------------------------------------------------------------------- index


@dataclass(frozen=True, eq=False)
class ImageIndex:
    """The images of one split: paths relative to `root`, labels 0..C-1 in sorted class order.

    Paths and labels are numpy arrays, not lists of Python objects: DataLoader workers forked from the main
    process then share their pages instead of copying them as reference counts get touched.
    """

    root: Path
    classes: tuple[str, ...]
    relative_paths: np.ndarray  # bytes, (N,)
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.relative_paths[i]))

    def take(self, indices: np.ndarray) -> ImageIndex:
        """The images at `indices` (in that order), with the same classes."""
        return ImageIndex(self.root, self.classes, self.relative_paths[indices], self.labels[indices])

    def sample(self, n: int | None, seed: int = 0) -> ImageIndex:
        """A fixed random sample of n images, kept in index order (all when n is None or >= len): images are
        sorted by class, so the first n would cover only the first classes."""
        if n is None or n >= len(self):
            return self
        chosen = torch.randperm(len(self), generator=generator(seed)).numpy()[:n]
        return self.take(np.sort(chosen))


def index_image_folder(root: str | Path, split: str | None = None) -> ImageIndex:
    """Index `root/split/<class>/*.(JPEG|jpg|jpeg|png)` (or `root/<class>/...` without a split)."""
    folder = Path(root) / split if split else Path(root)
    if not folder.exists():
        raise ImageFolderError(f"the image folder {folder} does not exist; expected {LAYOUT}")
    if not folder.is_dir():
        raise ImageFolderError(f"the image folder {folder} is a file, not a folder; expected {LAYOUT}")
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if loose:
        raise ImageFolderError(
            f"{folder} has {len(loose)} image files at the top level ({_examples(loose)}) and "
            f"{len(class_dirs)} class folders; expected {LAYOUT}. Images must sit in their class's folder "
            "(ImageNet's validation images come flat and must first be sorted into class folders)"
        )
    if not class_dirs:
        raise ImageFolderError(f"{folder} has no class folders (found {_describe(entries)}); expected {LAYOUT}")
    files = {
        d.name: sorted(e.name for e in os.scandir(d.path) if e.is_file() and _is_image(e.name)) for d in class_dirs
    }
    empty = [name for name, names in files.items() if not names]
    if empty:
        raise ImageFolderError(
            f"{len(empty)} of {len(class_dirs)} class folders in {folder} have no images "
            f"(*{', *'.join(IMAGE_SUFFIXES)}): {_examples(empty)}; expected {LAYOUT}{_split_hint(folder, empty)}"
        )
    classes = tuple(files)
    relative = [f"{name}/{file}" for name in classes for file in files[name]]
    labels = [label for label, name in enumerate(classes) for _ in files[name]]
    paths = np.array([os.fsencode(path) for path in relative], dtype=np.bytes_)
    return ImageIndex(folder, classes, paths, np.array(labels, dtype=np.int64))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _examples(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names) - count} more)" if len(names) > count else "")


def _describe(entries: Sequence[os.DirEntry]) -> str:
    if not entries:
        return "an empty folder"
    return f"{len(entries)} entries: {_examples([e.name for e in entries])}"


def _split_hint(folder: Path, empty: Sequence[str]) -> str:
    """A hint when the 'class folders' hold folders rather than images: the root is one level too high."""
    nested = [name for name in empty if any(e.is_dir() for e in os.scandir(folder / name))]
    if len(nested) != len(empty):
        return ""
    return f". {', '.join(nested)} hold folders, not images: pass the split (e.g. split={nested[0]!r})"


# --------------------------------------------------------------------------------------------- decode


@dataclass
class EncodedImage:
    """An image file read in one go, with only its header parsed: the size is known, the pixels are not yet."""

    path: str
    data: bytearray
    header: Image.Image
    size: tuple[int, int]  # (w, h) of the source (the header's size changes when a reduced decode is asked for)

    @classmethod
    def read(cls, path: str) -> EncodedImage:
        try:
            with open(path, "rb") as file:
                data = bytearray(file.read())
            header = Image.open(io.BytesIO(data))
            return cls(path, data, header, header.size)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # what PIL raises on bad data
            raise CorruptImageError(path, exc) from exc

    def decode(self, needed: tuple[int, int] | None = None, draft_gap: float = 1.0) -> tuple[torch.Tensor, Size]:
        """Decode once, as RGB uint8 (3, h, w) with channels-last memory, reduced by the JPEG decoder where that
        keeps the image >= `needed` * `draft_gap` (w, h).

        Also returns the size, in decoded pixels, of the whole source: a reduced decode at scale 1/r covers
        W/r of its pixels and may have one padding column or row more.
        """
        image, content = self.header, self.size
        try:
            if needed is not None:
                request = (max(1, math.ceil(needed[0] * draft_gap)), max(1, math.ceil(needed[1] * draft_gap)))
                # JPEG only (other formats give None): picks the largest r in {8, 4, 2, 1} with size / r >= request
                drafted = image.draft("RGB", request)
                content = drafted[1][2:] if drafted is not None else content
            if (
                _decode_jpeg is not None
                and image.format == "JPEG"
                and image.mode in ("RGB", "L")
                and content == self.size
            ):
                return self._decode_full_jpeg(), content
            image.load()
            return torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1), content
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptImageError(self.path, exc) from exc

    def _decode_full_jpeg(self) -> torch.Tensor:
        """libjpeg-turbo through torchvision: the same pixels as PIL's decode, straight into a tensor (faster)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # each call warns; PIL takes over once removed
                return _decode_jpeg(torch.frombuffer(self.data, dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            raise CorruptImageError(self.path, exc) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, CMYK, palette and alpha images as RGB (alpha is dropped, as torchvision's loader does)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL asks palette transparency to go through RGBA first
    return image.convert("RGB")


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


# ------------------------------------------------------------------------------------ training crops


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
    """He et al. 2015 §3 (papers.md A3): shorter side s ~ U{scale_min..scale_max}, a random crop x crop
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


# ------------------------------------------------------------------------------ colour, normalization


def draw_lighting(n: int, gen: torch.Generator, std: float = LIGHTING_STD) -> torch.Tensor:
    """AlexNet lighting coefficients alpha ~ N(0, std), (n, 3): one per image and principal component."""
    return torch.randn(n, 3, generator=gen) * std


def apply_lighting(
    images: torch.Tensor,
    alphas: torch.Tensor,
    eigval: torch.Tensor = IMAGENET_EIGVAL,
    eigvec: torch.Tensor = IMAGENET_EIGVEC,
) -> torch.Tensor:
    """AlexNet's PCA colour augmentation (Krizhevsky et al. 2012 §4.1; He et al. 2015 §3 "random color
    altering"): add sum_i alpha_i * lambda_i * p_i to every pixel of each image.

    `images` are float (N, 3, H, W) in [0, 255] pixel units; the eigen-data are for [0, 1] pixels, hence 255.
    """
    eigval, eigvec = eigval.to(images), eigvec.to(images)
    shift = (alphas.to(images) * eigval) @ eigvec.T  # (N, 3): rgb_c = sum_i eigvec[c, i] alpha_i lambda_i
    return images + 255.0 * shift.view(-1, 3, 1, 1)


def normalize_channels(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, mean and std (3,) in [0, 1] units (Shang et al. 2016 §3.2)."""
    mean, std = mean.to(images).view(1, -1, 1, 1), std.to(images).view(1, -1, 1, 1)
    return torch.addcmul(-mean / std, images, 1.0 / (255.0 * std))  # one pass over the batch


def subtract_mean_image(images: torch.Tensor, mean_image: torch.Tensor) -> torch.Tensor:
    """x - mean image, both in [0, 255] units (He et al. 2015 §3: per-pixel mean; inputs in about [-128, 128]).

    A mean image of another size (dense evaluation feeds whole images) is resized to the input's size: the
    paper does not say what it did there, and the mean image is smooth, so this is a mild choice.
    """
    mean_image = mean_image.to(images)
    if mean_image.shape[-2:] != images.shape[-2:]:
        mean_image = F.interpolate(mean_image[None], size=images.shape[-2:], mode="bilinear", antialias=True)[0]
    return images - mean_image


@dataclass
class Preprocess:
    """uint8 batches -> float network input, batched on the batch's device: lighting (training only), then
    per-channel normalization (`mean`, `std`: (3,), [0, 1] units) or per-pixel mean subtraction
    (`mean_image`: (3, H, W), [0, 255] units). Exactly one of the two normalizations is given."""

    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    mean_image: torch.Tensor | None = None
    channels_last: bool = False
    eigval: torch.Tensor = field(default_factory=lambda: IMAGENET_EIGVAL.clone())
    eigvec: torch.Tensor = field(default_factory=lambda: IMAGENET_EIGVEC.clone())

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None) or (self.mean is None) == (self.mean_image is None):
            raise ValueError("give either mean and std (per channel) or mean_image (per pixel), not both")

    def __call__(self, images: torch.Tensor, lighting: torch.Tensor | None = None) -> torch.Tensor:
        x = images.float()
        if lighting is not None:
            x = apply_lighting(x, lighting, self.eigval, self.eigvec)
        if self.mean_image is not None:
            x = subtract_mean_image(x, self.mean_image)
        else:
            x = normalize_channels(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


# ------------------------------------------------------------------------------------------ datasets


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
        spec: ScaleJitterCrop = ScaleJitterCrop(),
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


# ------------------------------------------------------------------------------------------ samplers


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's part of each global batch, as (epoch, index) keys for TrainDataset.

    Global batches of `batch_size * world_size` are cut from a permutation seeded by (seed, epoch); rank r
    takes slice r. The last incomplete global batch is dropped, so every step has the same global batch (as
    TrainBatches does for tensor-held splits: the same permutation, the same slices). `set_epoch(epoch,
    start_step)` chooses what the next iteration yields; start_step > 0 resumes mid-epoch exactly.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.seed, self.rank = size, batch_size, seed, rank
        self.global_batch = batch_size * world_size
        if size < self.global_batch:
            raise ValueError(f"the training split has {size} images, fewer than one global batch ({self.global_batch})")
        self.epoch, self.start_step = 0, 0

    @property
    def steps(self) -> int:
        return self.size // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step {start_step} is outside an epoch of {self.steps} steps")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        order = torch.randperm(self.size, generator=generator(self.seed, epoch)).tolist()
        for step in range(self.start_step, self.steps):
            first = step * self.global_batch + self.rank * self.batch_size
            yield [(epoch, i) for i in order[first : first + self.batch_size]]


class ShardSampler(Sampler[int]):
    """This rank's contiguous shard of [0, size), in order, unpadded: across ranks every index once."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.start, self.stop = shard_bounds(size, rank, world_size)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))


# ------------------------------------------------------------------------------------------- loaders


def loader_options(workers: int, prefetch_factor: int = 2, persistent: bool = True) -> dict:
    """DataLoader keywords: `workers` processes (kept alive across epochs when `persistent`); pinned memory
    only with CUDA."""
    options: dict = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    if workers > 0:
        options |= {"persistent_workers": persistent, "prefetch_factor": prefetch_factor}
    return options


class TrainLoader:
    """This rank's training batches, epoch by epoch: `for batch in loader.epoch(epoch, start_step)`.

    One DataLoader over `dataset` with a GlobalBatchSampler; workers persist across epochs and get the
    epoch through the sampler's keys, so nothing has to be told to them.
    """

    def __init__(
        self,
        dataset: TrainDataset,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        prefetch_factor: int = 2,
    ) -> None:
        self.sampler = GlobalBatchSampler(len(dataset), batch_size, dataset.seed, rank, world_size)
        collate = TrainCollate(dataset.spec.crop)
        options = loader_options(workers, prefetch_factor)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, collate_fn=collate, **options)

    def __len__(self) -> int:
        return self.sampler.steps

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]:
        self.sampler.set_epoch(epoch, start_step)
        return iter(self.loader)


def eval_loader(
    dataset: ViewDataset,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    prefetch_factor: int = 2,
    persistent: bool = True,
) -> DataLoader:
    """This rank's contiguous shard of `dataset`, in order, unpadded, as EvalBatches (batch_size 1 for dense)."""
    sampler = ShardSampler(len(dataset), rank, world_size)
    options = loader_options(workers, prefetch_factor, persistent)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_views, **options)
