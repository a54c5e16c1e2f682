"""Bad input of the fault-injection audit: none is accepted silently, none ends as a traceback.

CIFAR batch files whose pixels are not uint8 (floats in [0, 1], NaN), k-fold splits that leave a split empty,
corrupt ImageNet files decoded by worker processes, and config values that only the registries, the model's
layer list or the memory of the machine can refuse: each ends as one line naming what was found and what is
expected, with a non-zero exit, before anything is built or written.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, TINY_IMAGE_FOLDER, compose_train, make_image_folder, run_cli

from rectnet.config import ConfigError, to_settings
from rectnet.data.cifar import CIFAR10, DatasetError, load_cifar
from rectnet.data.imagenet import (
    CorruptImageError,
    TrainDataset,
    TrainLoader,
    ViewDataset,
    eval_loader,
    index_image_folder,
)
from rectnet.engine.train import run


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).strip().splitlines()[-1]


def _assert_one_line(proc: subprocess.CompletedProcess, prefix: str) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output and "Error executing job" not in output, output
    last = _last_line(proc)
    assert last.startswith(prefix), output
    return last


# ---------------------------------------------------------------------------------------------------------
# 1. CIFAR batch files: the pixels must be uint8 (or integers within 0..255), the labels integers in range


def _write_cifar(root: Path, data: np.ndarray, labels=None, bad_file: str = "data_batch_2") -> Path:
    """Every file of a CIFAR-10 tree holds two good images; `bad_file` holds `data` and `labels` instead."""
    folder = root / CIFAR10.folder
    folder.mkdir(parents=True)
    good = {"data": np.full((2, 3072), 7, np.uint8), "labels": [0, 1]}
    for name in CIFAR10.train_files + CIFAR10.test_files:
        entry = {"data": data, "labels": [0] * len(data) if labels is None else labels} if name == bad_file else good
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return folder / bad_file


def _unit_floats() -> np.ndarray:
    return np.linspace(0, 1, 2 * 3072, dtype=np.float32).reshape(2, 3072)


def test_cifar_pixels_as_floats_in_0_1_are_refused_saying_what_was_found(tmp_path):
    bad = _write_cifar(tmp_path, _unit_floats())
    with pytest.raises(DatasetError) as caught:
        load_cifar(CIFAR10, tmp_path, 10, download=False)
    assert str(caught.value) == (
        f"{bad}: data holds float32 values in [0, 1]; expected uint8 pixels 0..255, shape (N, 3072). "
        "Floats in [0, 1] are scaled images: store round(x * 255) as uint8"
    )


def test_cifar_pixels_with_nan_and_inf_are_refused_counting_them(tmp_path):
    data = _unit_floats() * 255
    data[0, 1:4], data[1, 5] = np.nan, np.inf
    bad = _write_cifar(tmp_path, data)
    with pytest.raises(DatasetError) as caught:
        load_cifar(CIFAR10, tmp_path, 10, download=False)
    assert str(caught.value) == (
        f"{bad}: data holds float32 values in [0, 255] and 3 NaN and 1 infinite; expected uint8 pixels 0..255, "
        "shape (N, 3072)"
    )


def test_cifar_integers_outside_0_255_are_refused_and_integers_within_load_unchanged(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072) - 5
    bad = _write_cifar(tmp_path / "out", data)
    with pytest.raises(DatasetError) as caught:
        load_cifar(CIFAR10, tmp_path / "out", 10, download=False)
    found = "data holds int64 values in [-5, 6138]; expected uint8 pixels 0..255, shape (N, 3072)"
    assert str(caught.value) == f"{bad}: {found}"
    within = data % 256  # a re-encoded copy that kept the pixel values in a wider integer type: lossless
    _write_cifar(tmp_path / "in", within)
    splits = load_cifar(CIFAR10, tmp_path / "in", 10, download=False)
    assert splits.train.images[2:4].flatten().tolist() == within.flatten().tolist()


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        ([0.0, 1.5], "labels hold float64 values in [0, 1.5]; expected integers in [0, 10)"),
        ([3, 10], "labels outside [0, 10): found values in [3, 10]; expected integers in [0, 10)"),
        ([-1, 2], "labels outside [0, 10): found values in [-1, 2]; expected integers in [0, 10)"),
    ],
    ids=["floats", "too_large", "negative"],
)
def test_cifar_labels_must_be_integers_within_the_class_count(tmp_path, labels, found):
    bad = _write_cifar(tmp_path, np.zeros((2, 3072), np.uint8), labels)
    with pytest.raises(DatasetError) as caught:
        load_cifar(CIFAR10, tmp_path, 10, download=False)
    assert str(caught.value).startswith(f"{bad}: {found}")


# ---------------------------------------------------------------------------------------------------------
# 2. k-fold splits and training splits that the data cannot fill


def test_more_folds_than_training_images_is_refused_naming_the_keys_and_sizes():
    with pytest.raises(ConfigError) as caught:
        to_settings(compose_train([*TINY, "dataset.num_folds=1000"]))
    assert str(caught.value) == (
        "dataset.num_folds=1000 needs at least one image per fold, but the training split holds at most 512 "
        "images (dataset.num_train=512): folds would be empty, and an empty held-out fold picks the best model on "
        "the test set; use at most 512 folds"
    )


def test_folds_that_leave_fewer_training_images_than_one_batch_are_refused():
    # 512 images in 2 folds: 256 left to train on, fewer than the global batch of 300
    with pytest.raises(ConfigError) as caught:
        to_settings(compose_train([*TINY, "dataset.num_folds=2", "trainer.batch_size=300"]))
    assert str(caught.value) == (
        "the training split holds at most 256 images (dataset.num_train=512, less held-out fold 0 of "
        "dataset.num_folds=2), fewer than one global batch of 300 (trainer.batch_size=300): lower "
        "trainer.batch_size or train on more images"
    )


def test_a_split_smaller_than_the_config_says_is_refused_once_read(tmp_path):
    """CIFAR's size is known only once its files are read: 5 files of two images hold 10 training images."""
    _write_cifar(tmp_path / "data", np.zeros((2, 3072), np.uint8), bad_file="none")
    cifar = ["dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "trainer.epochs=1", "trainer.progress=none"]
    with pytest.raises(ConfigError) as caught:
        run(compose_train([*cifar, "dataset.num_folds=20"], tmp_path / "a"))
    assert str(caught.value).startswith(
        "dataset.num_folds=20 needs at least one image per fold, but the training split holds 10 images "
        "(cifar10 as loaded)"
    )
    with pytest.raises(ConfigError) as caught:
        run(compose_train([*cifar, "trainer.batch_size=16"], tmp_path / "b"))
    assert str(caught.value).startswith("the training split holds 10 images (cifar10 as loaded)")
    assert str(caught.value).endswith(
        "fewer than one global batch of 16 (trainer.batch_size=16): lower trainer.batch_size or train on more images"
    )


# ---------------------------------------------------------------------------------------------------------
# 3. Corrupt ImageNet files decoded by worker processes: the same one line as without workers


CORRUPTIONS = {
    "truncated": lambda good: good[: len(good) // 3],
    "garbled_header": lambda good: b"\x00" * 64 + good[64:],
    "zero_bytes": lambda good: b"",
    "text": lambda good: b"this is a text file, not a JPEG\n" * 20,
}


def _corrupt_tree(root: Path, kind: str, split: str = "train") -> Path:
    make_image_folder(root, classes=2, train=8, val=4)
    folder = root / split / "n00000001"
    good = (folder / f"{split}_1_0.JPEG").read_bytes()
    bad = folder / f"{kind}.JPEG"
    bad.write_bytes(CORRUPTIONS[kind](good))
    return bad


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_file_read_by_workers_raises_its_own_error_naming_the_file(tmp_path, kind):
    bad = _corrupt_tree(tmp_path, kind)
    index = index_image_folder(tmp_path / "train")
    loader = TrainLoader(TrainDataset(index, seed=0), batch_size=len(index), workers=2)
    with pytest.raises(CorruptImageError) as caught:
        list(loader.epoch(0))
    assert str(caught.value).startswith(f"cannot decode {bad}: ") and "Traceback" not in str(caught.value)
    with pytest.raises(CorruptImageError) as caught:
        list(eval_loader(ViewDataset(index, "center", 40, 32), batch_size=4, workers=2, persistent=False))
    assert str(caught.value).startswith(f"cannot decode {bad}: ") and "Traceback" not in str(caught.value)


IMAGENET = [
    *TINY_IMAGE_FOLDER,
    "model.width=0.125",
    "model.dropout=0",
    "schedule=constant",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=8",
    "trainer.epochs=1",
    "trainer.progress=none",
    "trainer.precision=fp32",
    "logger.tensorboard=false",
]


@pytest.mark.slow
def test_train_py_and_eval_py_name_a_corrupt_file_in_one_line_with_workers(tmp_path):
    bad = _corrupt_tree(tmp_path / "tree", "truncated")
    expected = f"CorruptImageError: cannot decode {bad}: "
    for workers in (0, 2):  # the same line either way
        proc = run_cli([*IMAGENET, f"dataset.root={tmp_path / 'tree'}", f"dataset.workers={workers}",
                        f"hydra.run.dir={tmp_path / f'train{workers}'}"])  # fmt: skip
        assert _assert_one_line(proc, expected) == _last_line(proc)
    # eval.py reads the test split through the same loaders: a run on a good tree, then a corrupt test file
    good = tmp_path / "good"
    make_image_folder(good, classes=2, train=8, val=4)
    run(compose_train([*IMAGENET, f"dataset.root={good}", "dataset.workers=0"], tmp_path / "run"))
    bad_val = good / "val" / "n00000000" / "zero_bytes.JPEG"
    bad_val.write_bytes(b"")
    proc = run_cli([f"run_dir={tmp_path / 'run'}", "dataset.workers=2"], "eval.py")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and _last_line(proc).startswith(f"eval.py: error: cannot decode {bad_val}: ")


# ---------------------------------------------------------------------------------------------------------
# 4. Config values only a registry, the model's layer list or the machine can refuse: one line, before start

TIMM = ["model=timm", "model.width=1", "model.dropout=null"]  # TINY's width and dropout are for rectnet's nets


REFUSED = [
    (["trainer.batch_size=100000"], "ConfigError", ["fewer than one global batch of 100000", "num_train=512"]),
    (["dataset.num_train=10"], "ConfigError", ["at most 10 images (dataset.num_train=10)", "batch of 64"]),
    (["dataset.num_folds=1000"], "ConfigError", ["dataset.num_folds=1000", "at most 512 images"]),
    (["model.act_at=[99]"], "ConfigError", ["model.act_at=[99]", "convpool_cnn_c has 9 weight layers"]),
    (["model.halve_at=[50]"], "ConfigError", ["model.halve_at=[50]", "convpool_cnn_c has 9 weight layers"]),
    (["+model.init_std={99: 0.1}"], "ConfigError", ["model.init_std", "convpool_cnn_c has 9 weight layers"]),
    (["activation.name=swish"], "ConfigError", ["activation.name", "valid: avr, crelu, custom, elu"]),
    (["model.base_act=swish"], "ConfigError", ["model.base_act", "valid: avr, crelu, custom, elu"]),
    (["model.name=resnet9000"], "ConfigError", ["model.name", "valid: allcnn_b, convpool_cnn_c"]),
    ([*TIMM, "model.name=resnet9000"], "ConversionError", ["model.name='resnet9000' is not a timm architecture"]),
    (["init.name=orthogonal"], "ConfigError", ["init.name", "valid: kaiming, lsuv, xavier"]),
    (["init.mode=avg"], "ConfigError", ["init.mode=avg", "kaiming takes fan_in, fan_out"]),
    (["dataset.name=mnist"], "ConfigError", ["dataset.name", "valid: cifar10, cifar100, imagenet, synthetic"]),
    (["activation=relu", "activation.slope=0.5"], "ConfigError", ["activation.slope=0.5", "relu takes"]),
    (["activation=avr", "activation.slope=0.5"], "ConfigError", ["activation.slope=0.5", "avr takes"]),
    (["dataset.padding_mode=reflect", "dataset.crop_padding=40"], "ConfigError", ["crop_padding", "got 40"]),
    (["schedule.warmup_epochs=1e308"], "ConfigError", ["schedule.warmup_epochs", "trainer.epochs=2"]),
    (["model.width=1e6"], "ConfigError", ["one training step needs at least", "model.width"]),
    (["dataset.image_size=100000"], "ConfigError", ["one training step needs at least", "dataset.image_size"]),
    (["dataset.crop_padding=1000000"], "ConfigError", ["dataset.crop_padding", "image_size (16)", "got 1000000"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "error", "says"), REFUSED, ids=[" ".join(args) for args, _, _ in REFUSED])
def test_a_config_the_run_cannot_honour_is_refused_in_one_line_before_anything_is_built(tmp_path, args, error, says):
    proc = run_cli([*TINY, *args, f"hydra.run.dir={tmp_path}"])
    last = _assert_one_line(proc, f"{error}: ")
    assert all(part in last for part in says), last
    # what a refused run leaves (Hydra's .hydra/ and the run-directory lock); no FAILED, log or checkpoint
    assert set(os.listdir(tmp_path)) <= {".hydra", ".lock"}
