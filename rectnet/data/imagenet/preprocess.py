"""uint8 batches to network input on the training device: lighting, then per-channel normalization (Shang et
al. 2016) or per-pixel mean subtraction (He et al. 2015)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rectnet.data.imagenet.lighting import IMAGENET_EIGVAL, IMAGENET_EIGVEC, apply_lighting


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
