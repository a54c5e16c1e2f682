"""The images of one split of an ImageFolder tree: `<root>/<split>/<class>/<image>`, labels in sorted class order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rectnet.data.batches import generator

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
LAYOUT = "<root>/<split>/<class>/<image>.JPEG, one folder per class (e.g. train/n01440764/n01440764_10026.JPEG)"


class ImageFolderError(RuntimeError):
    """The ImageFolder tree is missing or malformed; the message says what was expected and what was found."""


@dataclass(frozen=True, eq=False)
class ImageIndex:
    """The images of one split: paths relative to `root`, labels 0..C-1 in sorted class order.

    Paths and labels are numpy arrays, not lists of Python objects: DataLoader workers forked from the main
    process then share their pages instead of copying them as reference counts get touched.
    """

    root: Path
    classes: tuple[str, ...]
    relative_paths: np.ndarray  # bytes, (N,)
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.relative_paths[i]))

    def take(self, indices: np.ndarray) -> ImageIndex:
        """The images at `indices` (in that order), with the same classes."""
        return ImageIndex(self.root, self.classes, self.relative_paths[indices], self.labels[indices])

    def sample(self, n: int | None, seed: int = 0) -> ImageIndex:
        """A fixed random sample of n images, kept in index order (all when n is None or >= len): images are
        sorted by class, so the first n would cover only the first classes."""
        if n is None or n >= len(self):
            return self
        chosen = torch.randperm(len(self), generator=generator(seed)).numpy()[:n]
        return self.take(np.sort(chosen))


def index_image_folder(root: str | Path, split: str | None = None) -> ImageIndex:
    """Index `root/split/<class>/*.(JPEG|jpg|jpeg|png)` (or `root/<class>/...` without a split)."""
    folder = Path(root) / split if split else Path(root)
    if not folder.exists():
        raise ImageFolderError(f"the image folder {folder} does not exist; expected {LAYOUT}")
    if not folder.is_dir():
        raise ImageFolderError(f"the image folder {folder} is a file, not a folder; expected {LAYOUT}")
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if loose:
        raise ImageFolderError(
            f"{folder} has {len(loose)} image files at the top level ({_examples(loose)}) and "
            f"{len(class_dirs)} class folders; expected {LAYOUT}. Images must sit in their class's folder "
            "(ImageNet's validation images come flat and must first be sorted into class folders)"
        )
    if not class_dirs:
        raise ImageFolderError(f"{folder} has no class folders (found {_describe(entries)}); expected {LAYOUT}")
    files = {
        d.name: sorted(e.name for e in os.scandir(d.path) if e.is_file() and _is_image(e.name)) for d in class_dirs
    }
    empty = [name for name, names in files.items() if not names]
    if empty:
        raise ImageFolderError(
            f"{len(empty)} of {len(class_dirs)} class folders in {folder} have no images "
            f"(*{', *'.join(IMAGE_SUFFIXES)}): {_examples(empty)}; expected {LAYOUT}{_split_hint(folder, empty)}"
        )
    classes = tuple(files)
    relative = [f"{name}/{file}" for name in classes for file in files[name]]
    labels = [label for label, name in enumerate(classes) for _ in files[name]]
    paths = np.array([os.fsencode(path) for path in relative], dtype=np.bytes_)
    return ImageIndex(folder, classes, paths, np.array(labels, dtype=np.int64))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _examples(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names) - count} more)" if len(names) > count else "")


def _describe(entries: Sequence[os.DirEntry]) -> str:
    if not entries:
        return "an empty folder"
    return f"{len(entries)} entries: {_examples([e.name for e in entries])}"


def _split_hint(folder: Path, empty: Sequence[str]) -> str:
    """A hint when the 'class folders' hold folders rather than images: the root is one level too high."""
    nested = [name for name in empty if any(e.is_dir() for e in os.scandir(folder / name))]
    if len(nested) != len(empty):
        return ""
    return f". {', '.join(nested)} hold folders, not images: pass the split (e.g. split={nested[0]!r})"
