"""Samplers and DataLoaders: this rank's part of each global training batch, and its contiguous shard of an
evaluation split."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rectnet.data.batches import check_start, generator, shard_bounds
from rectnet.data.imagenet.datasets import TrainBatch, TrainCollate, TrainDataset, ViewDataset, collate_views
from rectnet.data.imagenet.decode import CorruptImageError, jpeg_decoder
from rectnet.engine.preemption import shield_worker, workers_start_deaf_to_sigterm


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's part of each global batch, as (epoch, index) keys for TrainDataset.

    Global batches of `batch_size * world_size` are cut from a permutation seeded by (seed, epoch); rank r
    takes slice r. The last incomplete global batch is dropped, so every step has the same global batch (as
    TrainBatches does for tensor-held splits: the same permutation, the same slices). `set_epoch(epoch,
    start)` chooses what the next iteration yields: the global batches from position `start` of the epoch's
    order (the samples already trained, on any number of ranks), so a mid-epoch resume is exact.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.seed, self.rank = size, batch_size, seed, rank
        self.global_batch = batch_size * world_size
        if size < self.global_batch:
            raise ValueError(f"the training split has {size} images, fewer than one global batch ({self.global_batch})")
        self.epoch, self.start = 0, 0

    @property
    def steps(self) -> int:
        return self.size // self.global_batch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        check_start(start, self.size)
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return (self.size - self.start) // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        order = torch.randperm(self.size, generator=generator(self.seed, epoch)).tolist()
        for step in range(len(self)):
            first = self.start + step * self.global_batch + self.rank * self.batch_size
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


@dataclass(frozen=True)
class _Undecodable:
    """A corrupt file's error as a sample or batch: it reaches the main process as data, not as a worker's crash."""

    error: CorruptImageError


class _CatchCorrupt(Dataset):
    """`dataset`, with a corrupt file's CorruptImageError returned as `_Undecodable` instead of raised."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except CorruptImageError as err:
            return _Undecodable(err)


@dataclass(frozen=True)
class _CollateOrUndecodable:
    """The batch, or the first corrupt file's `_Undecodable` when the batch has one."""

    collate: Callable[[Sequence[Any]], Any]

    def __call__(self, samples: Sequence[Any]) -> Any:
        return next((s for s in samples if isinstance(s, _Undecodable)), None) or self.collate(samples)


class Loader(DataLoader):
    """A DataLoader whose workers outlive the stop signals a scheduler sends the whole job (shield_worker and
    workers_start_deaf_to_sigterm: rectnet.engine.preemption), and whose corrupt files raise CorruptImageError
    in the process that draws the batches, with or without workers: the one-line "cannot decode <file>:
    <reason>" that train.py and eval.py report. Raised in a worker it would reach the main process as torch's
    RuntimeError("Caught CorruptImageError in DataLoader worker process 0") holding the worker's traceback
    (torch rebuilds a worker's exception from its message alone, which CorruptImageError's signature does not
    take)."""

    def __init__(self, dataset: Dataset, collate_fn: Callable[[Sequence[Any]], Any], **options: Any) -> None:
        collate = _CollateOrUndecodable(collate_fn)
        jpeg_decoder()  # imported here, before the workers fork, not once in each of them
        super().__init__(_CatchCorrupt(dataset), collate_fn=collate, worker_init_fn=shield_worker, **options)

    def __iter__(self) -> Iterator[Any]:
        with workers_start_deaf_to_sigterm():  # where the workers start (the first time, if persistent)
            batches = super().__iter__()
        for batch in batches:
            if isinstance(batch, _Undecodable):
                self._stop(batches)
                raise batch.error
            yield batch

    def _stop(self, batches: Iterator[Any]) -> None:
        """Stop the workers now, not whenever the iterator is collected (their queue threads then fail noisily)."""
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._iterator = None  # persistent workers: the next epoch starts new ones


def loader_options(workers: int, prefetch_factor: int = 2, persistent: bool = True) -> dict:
    """DataLoader keywords: `workers` processes (kept alive across epochs when `persistent`); pinned memory
    only with CUDA."""
    options: dict = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    if workers > 0:
        options |= {"persistent_workers": persistent, "prefetch_factor": prefetch_factor}
    return options


class TrainLoader:
    """This rank's training batches, epoch by epoch: `for batch in loader.epoch(epoch, start)`.

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
        self.loader = Loader(dataset, collate, batch_sampler=self.sampler, **options)

    def __len__(self) -> int:
        return self.sampler.steps

    def epoch(self, epoch: int, start: int = 0) -> Iterator[TrainBatch]:
        """From position `start` of the epoch's order (see GlobalBatchSampler.set_epoch)."""
        self.sampler.set_epoch(epoch, start)
        return iter(self.loader)


def eval_loader(
    dataset: ViewDataset,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    prefetch_factor: int = 2,
    persistent: bool = True,
) -> Loader:
    """This rank's contiguous shard of `dataset`, in order, unpadded, as EvalBatches (batch_size 1 for dense)."""
    sampler = ShardSampler(len(dataset), rank, world_size)
    options = loader_options(workers, prefetch_factor, persistent)
    return Loader(dataset, collate_views, batch_size=batch_size, sampler=sampler, **options)
