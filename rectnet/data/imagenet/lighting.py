"""AlexNet's PCA colour augmentation ("lighting"; Krizhevsky et al. 2012 §4.1, He et al. 2015 §3)."""

from __future__ import annotations

import torch

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
