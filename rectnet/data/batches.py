"""Batches cut from a tensor-held split and augmented as whole tensors, not image by image through PIL.

Order and augmentation are functions of (seed, epoch) and the sample's place in the epoch's order only, never
of a running RNG or of the batch size: the sequence of images (and their flips and shifts) is the same
however many ranks share it (rank r takes its slice of each global batch), and a run resumed at any position
of an epoch, on any number of ranks, trains on exactly the samples not yet seen, in the same order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rectnet.data.split import Split


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, step, ...)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*parts))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`. CPU to GPU goes through pinned memory without blocking the host: the copy is queued
    on the current stream, before the kernels that read it (the pinned buffer is kept alive until then)."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class BatchAugment:
    """Random horizontal flip and random shift (pad by `padding`, crop back), then per-channel normalization."""

    mean: torch.Tensor  # (C,) in [0, 1] units
    std: torch.Tensor
    flip: bool = False
    padding: int = 0
    padding_mode: str = "zeros"
    channels_last: bool = False

    def draw(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Random parameters for `n` images: flip flags and shifts in [-padding, padding]."""
        return {
            "flip": torch.rand(n, generator=gen) < 0.5,
            "shift": torch.randint(-self.padding, self.padding + 1, (n, 2), generator=gen),
        }

    def __call__(self, images: torch.Tensor, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        x = images.float()
        if params is not None and self.padding > 0:
            x = shift(x, to_device(params["shift"], x.device), self.padding, self.padding_mode)
        if params is not None and self.flip:
            x = torch.where(to_device(params["flip"], x.device).view(-1, 1, 1, 1), x.flip(3), x)
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        scale = (1.0 / (255.0 * self.std)).to(x.device).view(1, -1, 1, 1)
        offset = (-self.mean / self.std).to(x.device).view(1, -1, 1, 1)
        x = torch.addcmul(offset, x, scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def shift(x: torch.Tensor, shifts: torch.Tensor, padding: int, mode: str) -> torch.Tensor:
    """Translate each image by (dy, dx) in [-padding, padding], filling with zeros or reflections."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="constant" if mode == "zeros" else "reflect")
    rows = (padding - shifts[:, 0]).view(n, 1) + torch.arange(h, device=x.device).view(1, h)
    cols = (padding - shifts[:, 1]).view(n, 1) + torch.arange(w, device=x.device).view(1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # (n, h, w, c) after advanced indexing over batch, rows, cols; back to (n, c, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)


class TrainBatches:
    """Shuffled global batches of `batch_size * world_size` images; this rank gets its `batch_size` slice.

    The last incomplete global batch of each epoch is dropped, so every step has the same global batch.
    Batches are cut where the split is held and augmented on `device` (default: there too): a split kept on
    the CPU (dataset.on_device=false) sends each batch as uint8, a quarter of the float bytes.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        augment: BatchAugment,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        if len(split) < self.global_batch:
            raise ValueError(
                f"the training split has {len(split)} images, fewer than one global batch ({self.global_batch})"
            )
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.device = device or split.images.device

    def __len__(self) -> int:
        return len(self.split) // self.global_batch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of `epoch` from position `start` of the epoch's order (the global samples
        already trained): the global batches start at start, start + G, ... (G the global batch)."""
        n = len(self.split)
        check_start(start, n)
        order = torch.randperm(n, generator=generator(self.seed, epoch))
        # One draw per place in the order, so a sample's flip and shift do not depend on the batch it lands in.
        params = self.augment.draw(n, generator(self.seed, epoch, AUGMENT_STREAM))
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for first in range(start, n - self.global_batch + 1, self.global_batch):
            places = slice(first, first + self.global_batch)
            index = to_device(order[places][mine], self.split.images.device)  # pinned, not blocking the host
            mine_params = {k: v[places][mine] for k, v in params.items()}
            images = to_device(self.split.images[index], self.device)
            yield self.augment(images, mine_params), to_device(self.split.labels[index], self.device)


AUGMENT_STREAM = -1  # the third part of the augmentation generator's seed; (seed, epoch) alone seeds the order


def check_start(start: int, size: int) -> None:
    if not 0 <= start <= size:
        raise ValueError(f"start position {start} is outside an epoch of {size} samples")


def eval_batches(
    split: Split,
    batch_size: int,
    augment: BatchAugment,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's contiguous shard of the split, in order, unpadded, on `device` (default: the split's):
    every sample once across ranks."""
    device = device or split.images.device
    start, stop = shard_bounds(len(split), rank, world_size)
    for first in range(start, stop, batch_size):
        last = min(first + batch_size, stop)
        images, labels = to_device(split.images[first:last], device), to_device(split.labels[first:last], device)
        yield augment(images, None), labels


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's shard; shard sizes differ by at most one, and they tile [0, n) exactly."""
    return n * rank // world_size, n * (rank + 1) // world_size
