"""CIFAR reader, tensor augmentation against per-image references, deterministic and shardable batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rectnet.data import DatasetError, load_dataset
from rectnet.data.batches import BatchAugment, TrainBatches, eval_batches, shard_bounds, shift
from rectnet.data.cifar import CIFAR10, CIFAR100, load_cifar
from rectnet.data.split import Split


def _write_cifar(root: Path, layout, n_per_file: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A miniature CIFAR in the python-pickle layout (other bytes, so other checksums, than the real one)."""
    rng = np.random.default_rng(seed)
    folder = root / layout.folder
    folder.mkdir(parents=True)
    written = {}
    for name in layout.train_files + layout.test_files:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, n_per_file).tolist()
        with (folder / name).open("wb") as f:
            pickle.dump({"data": data, layout.label_key: labels}, f)
        written[name] = data
    return written


def test_reads_cifar10_layout_with_foreign_checksums(tmp_path):
    written = _write_cifar(tmp_path, CIFAR10, 20, 10)
    splits = load_cifar(CIFAR10, tmp_path, 10, download=False)
    assert splits.train.images.shape == (100, 3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert splits.test.images.shape == (20, 3, 32, 32)
    # row-major CIFAR rows: 1024 red, 1024 green, 1024 blue values
    first = written["data_batch_1"][0]
    assert torch.equal(splits.train.images[0, 1].flatten(), torch.from_numpy(first[1024:2048]))


def test_reads_cifar100_fine_labels(tmp_path):
    _write_cifar(tmp_path, CIFAR100, 30, 100)
    splits = load_cifar(CIFAR100, tmp_path, 100, download=False)
    assert len(splits.train) == 30 and int(splits.train.labels.max()) < 100


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_cifar(CIFAR10, tmp_path, 10, download=False)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "dataset.download=true" in message


def test_corrupt_file_is_reported_with_its_path(tmp_path):
    _write_cifar(tmp_path, CIFAR10, 5, 10)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(DatasetError, match="data_batch_3 is not a readable CIFAR batch"):
        load_cifar(CIFAR10, tmp_path, 10, download=False)


def test_labels_outside_the_class_count_are_refused(tmp_path):
    _write_cifar(tmp_path, CIFAR10, 50, 100)  # CIFAR-100-like labels in a CIFAR-10 folder
    with pytest.raises(DatasetError, match="labels outside"):
        load_cifar(CIFAR10, tmp_path, 10, download=False)


def test_shift_matches_a_per_image_reference():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    shifts = torch.tensor([[0, 0], [2, -1], [-2, 2], [1, 1], [-1, 0], [2, 2]])
    out = shift(x, shifts, 2, "zeros")
    for i, (dy, dx) in enumerate(shifts.tolist()):
        expected = torch.zeros(3, 8, 8)
        src = x[i, :, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
        expected[:, max(0, dy) : 8 + min(0, dy), max(0, dx) : 8 + min(0, dx)] = src
        assert torch.equal(out[i], expected)


def test_reflect_padding_shift_equals_torch_pad_then_crop():
    x = torch.randn(1, 3, 8, 8)
    out = shift(x, torch.tensor([[1, -2]]), 2, "reflect")
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    assert torch.equal(out[0], padded[0, :, 1:9, 4:12])


def test_normalization_gives_zero_mean_unit_std_per_channel():
    images = torch.randint(0, 256, (500, 3, 8, 8), dtype=torch.uint8)
    images[:, 1] //= 2  # a channel with other statistics
    pixels = images.transpose(0, 1).reshape(3, -1).double() / 255
    augment = BatchAugment(pixels.mean(1).float(), pixels.std(1).float())
    out = augment(images, None)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_flip_mirrors_exactly_the_drawn_images():
    images = torch.arange(4 * 1 * 2 * 3, dtype=torch.uint8).view(4, 1, 2, 3)
    augment = BatchAugment(torch.zeros(1), torch.ones(1) / 255, flip=True)  # identity normalization
    params = {"flip": torch.tensor([True, False, True, False]), "shift": torch.zeros(4, 2, dtype=torch.long)}
    out = augment(images, params)
    assert torch.equal(out[0], images[0].flip(2).float()) and torch.equal(out[1], images[1].float())


def _split(n: int = 40) -> Split:
    return Split(torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8), torch.arange(n) % 10)


def test_batches_depend_only_on_seed_epoch_and_position():
    split, augment = _split(), BatchAugment(torch.zeros(3), torch.ones(3), flip=True, padding=1)
    full = list(TrainBatches(split, 8, augment, seed=3).epoch(2))
    again = list(TrainBatches(split, 8, augment, seed=3).epoch(2, start=3 * 8))
    assert len(full) == 5 and all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], again, strict=True))
    other_epoch = list(TrainBatches(split, 8, augment, seed=3).epoch(3))
    assert not torch.equal(full[0][1], other_epoch[0][1])
    # each epoch is a permutation: every image exactly once (40 = 5 full batches)
    assert sorted(torch.cat([y for _, y in full]).tolist()) == sorted(split.labels.tolist())


def test_ranks_slice_the_same_global_batches():
    split, augment = _split(), BatchAugment(torch.zeros(3), torch.ones(3), flip=True, padding=1)
    single = list(TrainBatches(split, 8, augment, seed=1).epoch(1))
    ranks = [list(TrainBatches(split, 4, augment, seed=1, rank=r, world_size=2).epoch(1)) for r in range(2)]
    for step, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), x)
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), y)


@pytest.mark.parametrize("n,world", [(10, 3), (7, 4), (3, 4), (100, 1)])
def test_eval_shards_tile_the_split_exactly(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))
    split, augment = _split(n), BatchAugment(torch.zeros(3), torch.ones(3))
    seen = [y for r in range(world) for _, batch in eval_batches(split, 3, augment, r, world) for y in batch.tolist()]
    assert seen == split.labels.tolist()


@pytest.mark.slow
def test_real_cifar10_from_shared_has_the_known_statistics(shared_cifar10):
    from rectnet.config import DatasetConfig

    cfg = DatasetConfig(name="cifar10", root=str(shared_cifar10), num_classes=10)
    splits = load_dataset(cfg, seed=0)
    assert (len(splits.train), len(splits.test)) == (50_000, 10_000)
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10
    mean, std = splits.channel_stats()
    # CIFAR-10's widely published training-set statistics; JPEG round trip moves them by < 0.01
    assert mean == pytest.approx([0.4914, 0.4822, 0.4465], abs=0.01)
    assert std == pytest.approx([0.2470, 0.2435, 0.2616], abs=0.01)


def test_download_is_opt_in_and_checks_the_official_checksum(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, root, md5=None, **kwargs):
        calls.append((url, md5))
        _write_cifar(Path(root), CIFAR10, 5, 10)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    with pytest.raises(DatasetError):
        load_cifar(CIFAR10, tmp_path, 10, download=False)
    assert calls == []
    splits = load_cifar(CIFAR10, tmp_path, 10, download=True)
    assert len(splits.train) == 25
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
