"""What the training loop and eval.py read: one data source per dataset kind, behind one interface.

A source turns a dataset config into network inputs on the training device:

* `train_epoch(epoch, start)`: this rank's training batches (`TrainInput`) of one epoch, from position `start`
  of the epoch's global order on (the samples already trained), a pure function of (seed, epoch, position):
  exact mid-epoch resume on any number of ranks;
* `eval_sets`: "test" (and "val" under k-fold cross-validation), each yielding this rank's contiguous shard
  of its split as `EvalInput`s: every image once across ranks, with all the views its protocol asks for;
* `state`: the preprocessing constants (per-channel mean/std, or the mean image), computed from the training
  split once and then carried in checkpoints, so a resumed run and eval.py preprocess exactly as training did.

Two kinds: tensor-held splits (CIFAR, synthetic: the whole split is one uint8 tensor, augmented batch-wise
on the device) and ImageFolder trees (ImageNet: JPEGs decoded by worker processes, see rectnet.data.imagenet).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from rectnet.config import ConfigError, TrainConfig
from rectnet.data import DATASETS, load_dataset
from rectnet.data.batches import BatchAugment, TrainBatches, eval_batches
from rectnet.data.imagenet import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    ImageFolderError,
    ImageIndex,
    Preprocess,
    ScaleJitterCrop,
    TrainDataset,
    TrainLoader,
    ViewDataset,
    eval_loader,
    index_image_folder,
)
from rectnet.data.imagenet.resources import eval_batch_images, fit_loaders
from rectnet.data.split import ImageSplits, Split, check_batch
from rectnet.registry import Registry

log = logging.getLogger("rectnet")
Reduce = Callable[[torch.Tensor], torch.Tensor]  # a sum over ranks (identity on one process)


class TrainInput(NamedTuple):
    images: torch.Tensor  # float network input on the device
    labels: torch.Tensor  # int64 on the device
    skipped: int = 0  # images of this batch dropped as corrupt (dataset.skip_corrupt)


class EvalInput(NamedTuple):
    # Float network inputs on the device, one tensor (B*V, C, h, w) per view size: each image's V views are
    # consecutive rows. One view per image for whole-image and centre-crop tests.
    views: list[torch.Tensor]
    labels: torch.Tensor  # (B,)
    skipped: int = 0


class EvalSet(Protocol):
    def __len__(self) -> int: ...  # images in the split (the exact count every evaluation must reach)

    def batches(self) -> Iterator[EvalInput]: ...  # this rank's shard


@dataclass
class Evaluation:
    """What evaluating a network needs: its input channels, the evaluation sets and the preprocessing constants."""

    in_chans: int
    eval_sets: dict[str, EvalSet]
    state: dict[str, torch.Tensor]


class Source(Protocol):
    """A training stream with its evaluation sets (Evaluation's fields, and the batches of each epoch)."""

    in_chans: int
    num_train: int
    eval_sets: dict[str, EvalSet]
    state: dict[str, torch.Tensor]

    def __len__(self) -> int: ...  # training steps per epoch

    def train_epoch(self, epoch: int, start: int = 0) -> Iterator[TrainInput]: ...


class SourceContext(NamedTuple):
    """Where a source runs: the device, this process's rank, the rank count, a sum over ranks, a broadcast
    of rank 0's object to every rank, and the ranks on this node (they share its cores and /dev/shm)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    reduce: Reduce = lambda t: t
    share: Callable[[Any], Any] = lambda obj: obj
    local_world_size: int = 1


# ------------------------------------------------------------------------------------- tensor splits


class TensorEvalSet:
    def __init__(self, split: Split, batch_size: int, augment: BatchAugment, where: SourceContext) -> None:
        self.split, self.batch_size, self.augment, self.where = split, batch_size, augment, where

    def __len__(self) -> int:
        return len(self.split)

    def batches(self) -> Iterator[EvalInput]:
        where = self.where
        for images, labels in eval_batches(
            self.split, self.batch_size, self.augment, where.rank, where.world_size, where.device
        ):
            yield EvalInput([images], labels)


@dataclass
class _TensorSplits:
    """A tensor dataset's splits (on the device with dataset.on_device), preprocessing constants and batch
    augmentation: what the training stream and the evaluation sets share."""

    splits: ImageSplits
    state: dict[str, torch.Tensor]
    augment: BatchAugment

    @classmethod
    def load(cls, settings: TrainConfig, where: SourceContext, state: dict | None) -> _TensorSplits:
        data = settings.dataset
        if settings.eval.protocol != "center":
            raise ConfigError(
                f"eval.protocol={settings.eval.protocol} is for ImageFolder datasets (dataset=imagenet); "
                f"{data.name} is tested on whole images (eval.protocol=center)"
            )
        if data.per_pixel_mean or data.lighting_std:
            raise ConfigError(
                f"dataset.per_pixel_mean and dataset.lighting_std are for ImageFolder datasets (dataset=imagenet); "
                f"{data.name} normalizes per channel (dataset.normalize): set them to false / 0"
            )
        splits = load_dataset(data, settings.seed)
        if data.on_device:
            splits.train, splits.test = splits.train.to(where.device), splits.test.to(where.device)
            splits.val = splits.val.to(where.device) if splits.val else None
        state = state or _channel_state(*splits.channel_stats())
        channels = len(state["mean"])
        mean, std = (
            (state["mean"].float(), state["std"].float())
            if data.normalize
            else (torch.zeros(channels), torch.ones(channels))
        )
        mean, std = mean.to(where.device), std.to(where.device)  # once here, not a host copy per batch
        augment = BatchAugment(
            mean, std, data.flip, data.crop_padding, data.padding_mode, settings.trainer.channels_last
        )
        return cls(splits, state, augment)

    def evaluation(self, settings: TrainConfig, where: SourceContext) -> Evaluation:
        named = {"test": self.splits.test, "val": self.splits.val}
        if settings.trainer.record_train_loss_at_best:  # the whole training split, unaugmented ("Single" stage 1)
            named["train"] = self.splits.train
        batch_size = settings.trainer.eval_batch_size
        sets = {
            name: TensorEvalSet(split, batch_size, self.augment, where)
            for name, split in named.items()
            if split is not None
        }
        return Evaluation(self.splits.train.images.shape[1], sets, self.state)


def tensor_evaluation(settings: TrainConfig, where: SourceContext, state: dict | None = None) -> Evaluation:
    """CIFAR-10/100 and the synthetic set, tested on whole images."""
    return _TensorSplits.load(settings, where, state).evaluation(settings, where)


class TensorSource:
    """CIFAR-10/100 and the synthetic set: uint8 splits held whole (on the device with dataset.on_device),
    flipped/shifted/normalized as batches (CReLU paper §3.1); tested on whole images."""

    def __init__(self, settings: TrainConfig, where: SourceContext, state: dict | None = None) -> None:
        loaded = _TensorSplits.load(settings, where, state)
        evaluation = loaded.evaluation(settings, where)
        self.in_chans, self.eval_sets, self.state = evaluation.in_chans, evaluation.eval_sets, evaluation.state
        train, trainer = loaded.splits.train, settings.trainer
        self.num_train = len(train)
        check_batch(len(train), settings.dataset, trainer, where.world_size, f"{settings.dataset.name} as loaded")
        per_process, _ = trainer.batch_sizes(where.world_size)
        self.batches = TrainBatches(
            train, per_process, loaded.augment, settings.seed, where.rank, where.world_size, where.device
        )

    def __len__(self) -> int:
        return len(self.batches)

    def train_epoch(self, epoch: int, start: int = 0) -> Iterator[TrainInput]:
        for images, labels in self.batches.epoch(epoch, start):
            yield TrainInput(images, labels)


def _channel_state(mean: Sequence[float], std: Sequence[float]) -> dict[str, torch.Tensor]:
    return {"mean": torch.tensor(mean, dtype=torch.float64), "std": torch.tensor(std, dtype=torch.float64)}


# ------------------------------------------------------------------------------------- ImageFolder trees


class ImageFolderEvalSet:
    """The test split under `eval.protocol`: decoded by worker processes (started for each evaluation, see
    rectnet.data.imagenet.resources), views normalized on the device. `eval_batch_size` counts network inputs,
    so a ten_view batch holds a tenth as many images; dense runs one image (and its mirror image, at one scale
    per forward) at a time."""

    def __init__(self, index: ImageIndex, settings: TrainConfig, preprocess: Preprocess, where: SourceContext) -> None:
        data, protocol = settings.dataset, settings.eval
        dataset = ViewDataset(
            index, protocol.protocol, protocol.size, data.image_size, protocol.scales, data.skip_corrupt, data.draft_gap
        )
        images = eval_batch_images(protocol.protocol, settings.trainer.eval_batch_size)
        self.size, self.preprocess, self.device = len(index), preprocess, where.device
        self.loader = eval_loader(
            dataset, images, where.rank, where.world_size, data.workers, data.prefetch_factor, persistent=False
        )

    def __len__(self) -> int:
        return self.size

    def batches(self) -> Iterator[EvalInput]:
        for batch in self.loader:
            views = [self.preprocess(group.flatten(0, 1).to(self.device, non_blocking=True)) for group in batch.views]
            yield EvalInput(views, batch.labels.to(self.device, non_blocking=True), len(batch.skipped))


def image_folder_evaluation(settings: TrainConfig, where: SourceContext, state: dict | None = None) -> Evaluation:
    """The test split under `eval.protocol`. With a checkpoint's statistics (`state`) the training tree (1.28M
    files on ImageNet) is never read."""
    settings = fit_loaders(settings, where.local_world_size, None)
    data = settings.dataset
    data.image_folder_checks()
    test = _index_split(settings, where, data.test_split, data.num_test)
    if state is None:
        train = _index_split(settings, where, data.train_split, data.num_train, test)
        state = image_statistics(train.sample(data.stats_images), settings, where)
    preprocess = _preprocess_for(settings, state, where)
    return Evaluation(3, {"test": ImageFolderEvalSet(test, settings, preprocess, where)}, state)


class ImageFolderSource:
    """ImageNet-style trees (`<root>/<train_split>/<class>/*.JPEG`, `<root>/<test_split>/...`): the papers'
    training crops (rectnet.data.imagenet) decoded by `dataset.workers` processes per rank, sent to the device
    as uint8 and lit/normalized there; tests under `eval.protocol`."""

    def __init__(self, settings: TrainConfig, where: SourceContext, state: dict | None = None) -> None:
        per_process, _ = settings.trainer.batch_sizes(where.world_size)
        settings = fit_loaders(settings, where.local_world_size, per_process)
        data = settings.dataset
        data.image_folder_checks()
        test = _index_split(settings, where, data.test_split, data.num_test)
        train = _index_split(settings, where, data.train_split, data.num_train, test)
        check_batch(len(train), data, settings.trainer, where.world_size, f"{train.root}, as indexed")
        self.state = state or image_statistics(train.sample(data.stats_images), settings, where)
        self.preprocess = _preprocess_for(settings, self.state, where)
        self.eval_sets = {"test": ImageFolderEvalSet(test, settings, self.preprocess, where)}
        spec = ScaleJitterCrop(data.scale_min, data.scale_max, data.image_size, data.flip)
        dataset = TrainDataset(train, settings.seed, spec, data.lighting_std, data.skip_corrupt, data.draft_gap)
        self.loader = TrainLoader(
            dataset, per_process, where.rank, where.world_size, data.workers, data.prefetch_factor
        )
        self.lighting, self.device = data.lighting_std > 0, where.device
        self.in_chans, self.num_train = 3, len(train)

    def __len__(self) -> int:
        return len(self.loader)

    def train_epoch(self, epoch: int, start: int = 0) -> Iterator[TrainInput]:
        for batch in self.loader.epoch(epoch, start):
            images = batch.images.to(self.device, non_blocking=True)
            lighting = batch.lighting.to(self.device, non_blocking=True) if self.lighting else None
            labels = batch.labels.to(self.device, non_blocking=True)
            yield TrainInput(self.preprocess(images, lighting), labels, len(batch.skipped))


def _index_split(
    settings: TrainConfig, where: SourceContext, split: str, n: int | None, other: ImageIndex | None = None
) -> ImageIndex:
    """Index <root>/<split> and keep a fixed sample of n images; its classes must be the dataset's (and
    `other` split's: a label means the same class in both). Rank 0 scans the tree (1.28M files for
    ImageNet's training split) and the other ranks receive its index."""
    data = settings.dataset
    index = _from_rank_0(where, lambda: index_image_folder(data.root, split or None))
    if other is not None and index.classes != other.classes:
        extra = sorted(set(index.classes) ^ set(other.classes))
        raise ImageFolderError(
            f"{index.root} and {other.root} have different class folders ({len(index.classes)} vs "
            f"{len(other.classes)}; e.g. {extra[:5]}): both splits need the same classes for the labels to agree"
        )
    if len(index.classes) != data.num_classes:
        raise ImageFolderError(
            f"{index.root} has {len(index.classes)} class folders but dataset.num_classes={data.num_classes}; "
            f"set dataset.num_classes={len(index.classes)} to use this tree"
        )
    return index.sample(n)


def _from_rank_0(where: SourceContext, make: Callable[[], Any]) -> Any:
    """`make()` run on rank 0 only; its result, or its ImageFolderError, on every rank (a rank raising alone
    would leave the others waiting in the broadcast). The others wait while rank 0 works (minutes for ImageNet's
    tree on a shared filesystem): `where.share` is the setup broadcast, whose timeout is trainer.setup_timeout_min,
    not the short one of training's collectives (engine/distributed.py)."""
    result: tuple[Any, str | None] = (None, None)
    if where.rank == 0:
        try:
            result = (make(), None)
        except ImageFolderError as err:
            result = (None, str(err))
    value, error = where.share(result)
    if error is not None:
        raise ImageFolderError(error)
    return value


def image_statistics(index: ImageIndex, settings: TrainConfig, where: SourceContext) -> dict[str, torch.Tensor]:
    """Per-channel mean/std ([0, 1] units) and the mean image ([0, 255] units, crop x crop) of the centre
    crops (shorter side eval.size) of `index`'s images; the ranks split the work and sum exact totals."""
    data, crop = settings.dataset, settings.dataset.image_size
    dataset = ViewDataset(index, "center", settings.eval.size, crop, skip_corrupt=data.skip_corrupt)
    channel_sum = torch.zeros(3, dtype=torch.float64)
    channel_squares = torch.zeros(3, dtype=torch.float64)
    image_sum = torch.zeros(3, crop, crop, dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    shard = eval_loader(dataset, 64, where.rank, where.world_size, data.workers, data.prefetch_factor, False)
    for batch in shard:
        if not batch.views:
            continue
        x = batch.views[0].flatten(0, 1).double()  # (B, 3, crop, crop)
        channel_sum += x.sum((0, 2, 3))
        channel_squares += x.square().sum((0, 2, 3))
        image_sum += x.sum(0)
        count += len(x)
    # summed on the collective's device (a GPU under NCCL), then back here for the arithmetic below
    totals = where.reduce(torch.cat([channel_sum, channel_squares, image_sum.flatten(), count.view(1)])).cpu()
    n = totals[-1].item()
    if n == 0:
        raise ImageFolderError(f"no readable image among the {len(index)} sampled from {index.root}")
    pixels = n * crop * crop
    mean = totals[:3] / pixels
    std = (totals[3:6] / pixels - mean.square()).clamp_min(0).sqrt()
    log.info("preprocessing statistics from %d training images (centre crops)", int(n))
    return {"mean": mean / 255.0, "std": std / 255.0, "mean_image": (totals[6:-1] / n).view(3, crop, crop).float()}


def _preprocess_for(settings: TrainConfig, state: dict[str, torch.Tensor], where: SourceContext) -> Preprocess:
    data = settings.dataset
    return make_preprocess(state, data.normalize, data.per_pixel_mean, settings.trainer.channels_last, where)


def make_preprocess(
    state: dict[str, torch.Tensor], normalize: bool, per_pixel: bool, channels_last: bool, where: SourceContext
) -> Preprocess:
    """He et al.: subtract the mean image; Shang et al.: per-channel mean/std; normalize=false: x / 255.
    Every constant is put on the device once here, not copied from the host for every batch."""
    device = where.device
    pca = {"eigval": IMAGENET_EIGVAL.to(device), "eigvec": IMAGENET_EIGVEC.to(device)}
    if normalize and per_pixel:
        return Preprocess(mean_image=state["mean_image"].to(device), channels_last=channels_last, **pca)
    mean, std = (state["mean"], state["std"]) if normalize else (torch.zeros(3), torch.ones(3))
    return Preprocess(mean.float().to(device), std.float().to(device), channels_last=channels_last, **pca)


# ------------------------------------------------------------------------------------------ registry


class SourceKind(NamedTuple):
    """How one kind of dataset is read: as a training stream (train.py), or as evaluation sets only (eval.py)."""

    train: Callable[[TrainConfig, SourceContext, dict | None], Source]
    evaluation: Callable[[TrainConfig, SourceContext, dict | None], Evaluation]


SOURCES: Registry[SourceKind] = Registry("dataset")
for _name in DATASETS:
    SOURCES.register(_name)(SourceKind(TensorSource, tensor_evaluation))
SOURCES.register("imagenet")(SourceKind(ImageFolderSource, image_folder_evaluation))


def make_source(settings: TrainConfig, where: SourceContext, state: dict | None = None) -> Source:
    """The training stream for `settings.dataset.name`; `state` (from a checkpoint) skips recomputing statistics."""
    return SOURCES.get(settings.dataset.name).train(settings, where, state)


def make_evaluation(settings: TrainConfig, where: SourceContext, state: dict | None = None) -> Evaluation:
    """The evaluation sets alone (eval.py): no training stream is prepared."""
    return SOURCES.get(settings.dataset.name).evaluation(settings, where, state)


__all__ = [
    "SOURCES",
    "EvalInput",
    "EvalSet",
    "Evaluation",
    "Source",
    "SourceContext",
    "SourceKind",
    "TrainInput",
    "make_evaluation",
    "make_source",
]
