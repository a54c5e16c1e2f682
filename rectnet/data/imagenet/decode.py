"""JPEG (and PNG) decoding: one read per file, one decode per image, reduced by the JPEG decoder where the
image is larger than what is asked for (PIL `draft`: DCT scaling by 1/2, 1/4 or 1/8)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

Size = tuple[float, float]


@cache
def jpeg_decoder() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's libjpeg-turbo decoder (uint8 bytes -> RGB (3, h, w)), or None where torchvision has none.

    Imported on first use, not with this module: torchvision's package import loads all its models (about
    1.5 s), which a CIFAR run, or any process that only imports rectnet, should not pay. Loader calls it in the
    main process, so that forked DataLoader workers inherit it instead of each importing torchvision."""
    try:  # deprecated in torchvision 0.29 in favour of TorchCodec; PIL decodes the same JPEGs where it is gone
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode_rgb(data: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # each call warns; PIL takes over once removed
            return decode_jpeg(data, mode=ImageReadMode.RGB)

    return decode_rgb


class CorruptImageError(RuntimeError):
    """An image file could not be read or decoded (corrupt, truncated, not an image)."""

    def __init__(self, path: str, cause: BaseException | str) -> None:
        super().__init__(f"cannot decode {path}: {cause}")
        self.path, self.reason = path, str(cause)

    def __reduce__(self) -> tuple:  # rebuilt from its path and reason where a DataLoader worker sends it back
        return type(self), (self.path, self.reason)


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
        except UnidentifiedImageError as exc:  # its message names the BytesIO object, not the file
            what = "the file is empty" if not data else "not an image format PIL recognizes (corrupt header?)"
            raise CorruptImageError(path, what) from exc
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
                jpeg_decoder() is not None
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
            return jpeg_decoder()(torch.frombuffer(self.data, dtype=torch.uint8))
        except RuntimeError as exc:
            raise CorruptImageError(self.path, exc) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, CMYK, palette and alpha images as RGB (alpha is dropped, as torchvision's loader does)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL asks palette transparency to go through RGBA first
    return image.convert("RGB")
