"""CIFAR-10/100 from the python-pickle layout, held as one uint8 tensor per split.

The reader trusts the files' content, not their checksums: a locally re-encoded copy (such as the JPEG
round trip in ../shared/data) has other MD5s and must still load. Checksums are checked only when
`dataset.download=true` fetches the archive, by torchvision's download utilities.

Trusting the content never means running it: a pickle can name any callable, so a crafted `data_batch_N`
would run code under `pickle.load`. `CifarUnpickler` admits only what CIFAR batch files hold (dicts, lists,
strings, bytes, numbers and numpy arrays, as numpy and Python 2's pickles spell them) and refuses the rest.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rectnet.data.split import ImageSplits, Split


class DatasetError(RuntimeError):
    """The dataset is missing or unreadable; the message says where it looked and what to do."""


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    url: str
    md5: str


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)
SHARED_COPY_HINT = (
    "On rectnet's development machines a real CIFAR-10 copy is in ../shared/data: "
    "`python ../shared/tools/make_cifar10.py --out <root>` writes cifar-10-batches-py/ there."
)


# The only globals a CIFAR batch pickle names: numpy arrays, dtypes and scalars (numpy 1 and 2 module names,
# protocol 5's buffer form) and bytes as Python 3 pickles them at protocol 2. None of them runs code.
CIFAR_PICKLE_GLOBALS = frozenset(
    {
        *((module, "_reconstruct") for module in ("numpy.core.multiarray", "numpy._core.multiarray")),
        *((module, "scalar") for module in ("numpy.core.multiarray", "numpy._core.multiarray")),
        *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class UnsafePickleError(pickle.UnpicklingError):
    """A dataset pickle names something other than plain data (it could run code when loaded)."""


class CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise UnsafePickleError(f"{module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            entry = CifarUnpickler(f, encoding="latin1").load()
        data, labels = np.asarray(entry["data"]), np.asarray(entry[label_key])
    except FileNotFoundError:
        raise
    except UnsafePickleError as err:
        raise DatasetError(
            f"{path} refers to {err}, which CIFAR batch files never contain (only dicts, lists, strings, bytes and "
            "numpy arrays): refused to load it, since unpickling it could run code. Replace the file with an "
            "official copy."
        ) from None
    except Exception as err:  # truncated pickle, wrong file, missing keys: all mean "corrupt"
        raise DatasetError(f"{path} is not a readable CIFAR batch file ({type(err).__name__}: {err})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DatasetError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape}, {labels.shape}")
    _check_pixels(path, data)
    _check_labels(path, labels, num_classes)
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels.astype(np.int64, copy=False)


def _check_pixels(path: Path, data: np.ndarray) -> None:
    """uint8, or integers within 0..255: a re-encoded copy may keep the pixel values in a wider integer type,
    and casting those is lossless. Anything else would be cast silently into other images: floats in [0, 1]
    (scaled pixels) into near-black ones, NaN into arbitrary bytes."""
    if data.dtype == np.uint8 or (np.issubdtype(data.dtype, np.integer) and _within(data, 0, 255)):
        return
    hint = ""
    if np.issubdtype(data.dtype, np.floating) and _within(data, 0, 1):
        hint = ". Floats in [0, 1] are scaled images: store round(x * 255) as uint8"
    raise DatasetError(f"{path}: data holds {_describe(data)}; expected uint8 pixels 0..255, shape (N, 3072){hint}")


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    expected = f"expected integers in [0, {num_classes}) (dataset.num_classes={num_classes})"
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: labels hold {_describe(labels)}; {expected}")
    if len(labels) and not _within(labels, 0, num_classes - 1):
        raise DatasetError(
            f"{path}: labels outside [0, {num_classes}): found values in [{labels.min()}, {labels.max()}]; "
            f"{expected} - wrong dataset for this config?"
        )


def _within(values: np.ndarray, low: float, high: float) -> bool:
    return not len(values) or bool(low <= values.min() and values.max() <= high)


def _describe(values: np.ndarray) -> str:
    """The dtype, the range of the finite values and the count of NaN and infinite ones."""
    text = f"{values.dtype} values"
    if not np.issubdtype(values.dtype, np.number):
        return text
    inexact = np.issubdtype(values.dtype, np.inexact)
    finite = values[np.isfinite(values)] if inexact else values
    if finite.size:
        text += f" in [{finite.min():g}, {finite.max():g}]"
    if inexact:
        counts = ((int(np.isnan(values).sum()), "NaN"), (int(np.isinf(values).sum()), "infinite"))
        text += "".join(f" and {count} {what}" for count, what in counts if count)
    return text


def _read_split(folder: Path, files: tuple[str, ...], label_key: str, num_classes: int) -> Split:
    parts = [_read_batch(folder / name, label_key, num_classes) for name in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return Split(images, labels)


def _download(layout: CifarLayout, root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(layout.url, str(root), md5=layout.md5)


def load_cifar(layout: CifarLayout, root: str | Path, num_classes: int, download: bool) -> ImageSplits:
    root = Path(root).expanduser()
    folder = root / layout.folder
    if download and not folder.is_dir():
        _download(layout, root)
    missing = [name for name in layout.train_files + layout.test_files if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"CIFAR files not found: looked for {', '.join(missing)} in {folder.resolve()}. "
            f"Set dataset.root=<dir holding {layout.folder}/> (or env RECTNET_DATA), or add "
            f"dataset.download=true on a machine that is online. {SHARED_COPY_HINT}"
        )
    return ImageSplits(
        train=_read_split(folder, layout.train_files, layout.label_key, num_classes),
        test=_read_split(folder, layout.test_files, layout.label_key, num_classes),
    )
