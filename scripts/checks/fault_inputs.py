"""The fault cases of chaos.py --faults in what a run is given: bad data files (data: CIFAR batch files,
ImageNet-style JPEGs) and bad config values (config: issue 21's, valid edge values that must train, and a seeded
fuzz). What a case is and how it is judged: faults.py."""

from __future__ import annotations

import contextlib
import itertools
import pickle
import random
from collections.abc import Callable
from pathlib import Path

from faults import FINISH, RUNS_CODE, Case, Lab, Prepare, RunsCode, no_file, tiny

# ---------------------------------------------------------------------------------------------------- data

CIFAR_IMAGES = 32  # per batch file: 160 training images, 32 test images
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_RUN = [
    "dataset=cifar10",
    "model.width=0.125",
    "model.dropout=0",
    "schedule=constant",
    "trainer.batch_size=32",
    "trainer.epochs=1",
    "trainer.max_steps_per_epoch=2",
    "trainer.progress=none",
    "trainer.threads=1",
    "trainer.precision=fp32",
    "logger=none",
]
CifarFault = Callable[[dict, Path, random.Random], "dict | bytes | None"]  # good entry -> bad entry or bytes


def cifar_entry(rng: random.Random) -> dict:
    import numpy as np

    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (CIFAR_IMAGES, 3072), dtype=np.uint8)
    return {"data": pixels, "labels": [rng.randrange(10) for _ in range(CIFAR_IMAGES)]}


def float_pixels(entry: dict, path: Path, rng: random.Random) -> dict:
    return {**entry, "data": entry["data"].astype("float32") / 255}  # scaled images, as some converters store


def nan_pixels(entry: dict, path: Path, rng: random.Random) -> dict:
    data = entry["data"].astype("float32")
    data[0, :5] = float("nan")
    return {**entry, "data": data}


def label_out_of_range(entry: dict, path: Path, rng: random.Random) -> dict:
    return {**entry, "labels": [*entry["labels"][:-1], 10]}  # CIFAR-10: labels 0..9


def wrong_shape(entry: dict, path: Path, rng: random.Random) -> dict:
    return {**entry, "data": entry["data"].reshape(-1, 1024)}  # one channel's worth per row


def cut_short(entry: dict, path: Path, rng: random.Random) -> bytes:
    whole = pickle.dumps(entry, protocol=2)
    return whole[: len(whole) // 2]


def missing(entry: dict, path: Path, rng: random.Random) -> None:
    return None


def cifar_runs_code(entry: dict, path: Path, rng: random.Random) -> dict:
    return {**entry, "labels": RunsCode(path.parents[2] / RUNS_CODE)}  # <case folder>/data/<layout>/<file>


def cifar_tree(bad_file: str, fault: CifarFault) -> Prepare:
    """A CIFAR-10 tree of small batch files, `bad_file` written as `fault` makes it (None: not written)."""

    def prepare(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
        layout = folder / "data" / "cifar-10-batches-py"
        layout.mkdir(parents=True)
        rng = lab.rng(folder.name)
        for name in CIFAR_FILES:
            entry = cifar_entry(rng)
            content = fault(entry, layout / name, rng) if name == bad_file else entry
            if content is not None:
                data = content if isinstance(content, bytes) else pickle.dumps(content, protocol=2)
                (layout / name).write_bytes(data)
        return [*CIFAR_RUN, f"dataset.root={folder / 'data'}"]

    return prepare


IMAGENET_RUN = [
    "dataset=imagenet",
    "dataset.num_classes=2",
    "dataset.image_size=32",
    "dataset.scale_min=36",
    "dataset.scale_max=40",
    "dataset.stats_images=16",
    "eval.size=36",
    "model.width=0.125",
    "model.dropout=0",
    "schedule=constant",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=8",
    "trainer.epochs=1",
    "trainer.progress=none",
    "trainer.threads=1",
    "trainer.precision=fp32",
    "logger=none",
]
JPEG_FAULTS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda good: good[: len(good) // 3],
    "zero_bytes": lambda good: b"",
    "text": lambda good: b"this is a text file, not a JPEG\n" * 20,
}


def image_tree(root: Path, rng: random.Random) -> None:
    """<root>/{train,val}/<class>/*.JPEG: 2 classes, 8 training and 4 validation images each, 48x40."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(rng.getrandbits(32))
    for c in range(2):
        for split, count in (("train", 8), ("val", 4)):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(noise.normal(80 + 100 * c, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG", "JPEG", quality=90)


def corrupt_jpeg(kind: str, workers: int) -> Prepare:
    def prepare(lab: Lab, folder: Path, cleanup: contextlib.ExitStack) -> list[str]:
        root = folder / "data"
        image_tree(root, lab.rng(folder.name))
        good = (root / "train" / "n00000001" / "train_1_0.JPEG").read_bytes()
        (root / "train" / "n00000001" / f"{kind}.JPEG").write_bytes(JPEG_FAULTS[kind](good))
        return [*IMAGENET_RUN, f"dataset.root={root}", f"dataset.workers={workers}"]

    return prepare


def data_cases() -> list[Case]:
    cifar = [
        ("cifar_float_pixels", "data_batch_2", float_pixels, ("data_batch_2",), ()),
        ("cifar_nan_pixels", "data_batch_2", nan_pixels, ("data_batch_2",), ()),
        ("cifar_label_out_of_range", "data_batch_2", label_out_of_range, ("label",), ()),
        ("cifar_wrong_shape", "data_batch_2", wrong_shape, ("data_batch_2",), ()),
        ("cifar_cut_short", "data_batch_4", cut_short, ("data_batch_4",), ()),
        ("cifar_missing_file", "data_batch_3", missing, ("data_batch_3",), ()),
        ("cifar_pickle_runs_code", "test_batch", cifar_runs_code, ("test_batch",), (no_file(RUNS_CODE),)),
    ]
    jpegs = [
        Case(f"jpeg_{kind}_workers{workers}", "data", corrupt_jpeg(kind, workers), says=(f"{kind}.JPEG",))
        for kind, workers in itertools.product(JPEG_FAULTS, (0, 2))
    ]
    return [
        Case(name, "data", cifar_tree(bad, fault), says=says, checks=checks) for name, bad, fault, says, checks in cifar
    ] + jpegs


# -------------------------------------------------------------------------------------------------- config

# Issue 21's values (and wrong types, unknown keys and options): refused, naming what the refusal says.
# A name no registry or config group holds, nor will: a plausible one (swish, mnist, adamw, fp8) may become valid.
NO_SUCH = "nonesuch"
CONFIG_REFUSED: list[tuple[list[str], tuple[str, ...]]] = [
    (["trainer.batch_size=100000"], ("trainer.batch_size",)),
    (["dataset.num_train=10"], ("dataset.num_train",)),  # fewer images than one batch of 32
    (["dataset.num_folds=1000"], ("dataset.num_folds",)),  # more folds than the 256 training images
    (["model.act_at=[99]"], ("model.act_at",)),  # ConvPool-CNN-C has 9 weight layers
    (["model.halve_at=[50]"], ("model.halve_at",)),
    ([f"activation.name={NO_SUCH}"], ("activation.name",)),
    ([f"model.base_act={NO_SUCH}"], ("model.base_act",)),
    ([f"model.name={NO_SUCH}"], ("model.name",)),
    ([f"init.name={NO_SUCH}"], ("init.name",)),
    ([f"dataset.name={NO_SUCH}"], ("dataset.name",)),
    (["activation=relu", "activation.slope=0.5"], ("activation.slope",)),  # ReLU has no slope
    (["dataset.padding_mode=reflect", "dataset.crop_padding=40"], ("dataset.crop_padding",)),
    (["schedule.warmup_epochs=1e308"], ("schedule.warmup_epochs",)),
    (["model.width=1e6"], ("model.width",)),  # terabytes of activations
    (["dataset.image_size=100000"], ("dataset.image_size",)),
    (["dataset.crop_padding=1000000"], ("dataset.crop_padding",)),
    (["trainer.epochs=abc"], ("trainer.epochs",)),
    (["optim.lr=abc"], ("optim.lr",)),
    (["optim.learning_rate=0.1"], ("learning_rate",)),  # no such key
    ([f"activation={NO_SUCH}"], (NO_SUCH,)),  # no such option of the activation group
    (["trainer.resume=/nonexistent/last.pt"], ("/nonexistent/last.pt",)),
]
# Values at the edge of the valid range: a run that refuses them is wrong too.
CONFIG_VALID: list[list[str]] = [
    ["trainer.batch_size=256"],  # the whole split in one batch
    ["dataset.crop_padding=15"],  # one pixel less than the image
    ["model.act_at=[9]"],  # the last weight layer
    ["dataset.num_folds=2"],  # 128 images left to train on, four batches
    ["schedule.warmup_epochs=1"],
]
# The fuzz table: values no run of FAULT_RUN can honour, by what the key means (a count below 1, a rate
# outside its range, a name nothing has, a type that is not the key's, a size beyond any machine). A key of
# a part FAULT_RUN does not use (the step schedule's step size under schedule=constant) is left out: whether
# an unused setting must be valid is a matter of taste.
FUZZ: dict[str, list[str]] = {
    "trainer.epochs": ["abc", "-1", "0", "2.5", "null"],
    "trainer.batch_size": ["0", "-32", "abc", "100000"],
    "trainer.eval_batch_size": ["0", "-1"],
    "trainer.log_every_steps": ["0"],
    "trainer.checkpoint_every_steps": ["-1"],
    "trainer.threads": ["0", "-2"],
    "trainer.precision": [NO_SUCH],
    "trainer.device": [NO_SUCH, "cuda:99"],
    "trainer.progress": [NO_SUCH],
    "optim.lr": ["0", "-0.1", "abc", "nan", "inf", "1e400"],
    "optim.momentum": ["1", "-0.5", "1.5"],
    "optim.weight_decay": ["-1", "nan"],
    "optim.name": [NO_SUCH],
    "schedule.name": [NO_SUCH],
    "schedule.warmup_factor": ["-0.1", "1.5"],
    "schedule.warmup_steps": ["-1"],
    "schedule.warmup_epochs": ["-0.5", "inf"],
    "model.width": ["0", "-1", "abc", "1e6"],
    "model.dropout": ["1", "-0.1", "1.5"],
    "model.act_at": ["[0]", "[10]", "abc"],
    "model.halve_at": ["[0]", "[10]"],
    "model.name": [NO_SUCH],
    "model.base_act": [NO_SUCH],
    "model.source": [NO_SUCH],
    "activation.name": [NO_SUCH],
    "init.name": [NO_SUCH],
    "init.mode": [NO_SUCH],
    "init.distribution": [NO_SUCH],
    "init.head_scale": ["-1"],
    "dataset.name": [NO_SUCH],
    "dataset.image_size": ["0", "-16", "100000"],
    "dataset.num_train": ["0", "-5", "10"],
    "dataset.num_test": ["0", "-1"],
    "dataset.num_classes": ["0", "1"],
    "dataset.crop_padding": ["-1", "16"],
    "dataset.padding_mode": [NO_SUCH],
    "dataset.num_folds": ["1", "-2", "1000"],
    "dataset.synthetic_noise": ["-1", "nan"],
    "seed": ["abc"],
}


def fuzz_overrides(n: int, seed: int) -> list[str]:
    """The first n of FUZZ's key=value overrides in a seeded order, none of CONFIG_REFUSED's: a larger n only
    adds cases, so a longer fuzz includes a shorter one with the same seed."""
    named = {override for overrides, _ in CONFIG_REFUSED for override in overrides}
    pool = [f"{key}={value}" for key, values in FUZZ.items() for value in values if f"{key}={value}" not in named]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def case_name(overrides: list[str]) -> str:
    """The overrides as one folder name: `a=1+b=2` (a / in a value would make it a path)."""
    return "+".join(overrides).replace("/", "_")


def config_cases(fuzz: int, seed: int) -> list[Case]:
    refused = [Case(case_name(o), "config", tiny(o), says=says) for o, says in CONFIG_REFUSED]
    valid = [Case(f"valid:{case_name(o)}", "config", tiny(o), FINISH) for o in CONFIG_VALID]
    fuzzed = [
        Case(f"fuzz:{case_name([o])}", "config", tiny([o]), says=(o.split("=")[0],)) for o in fuzz_overrides(fuzz, seed)
    ]
    return refused + valid + fuzzed
