"""Optional plots: matplotlib is not a dependency, so every analysis writes tables/CSV and adds a PNG when it can."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any


def pyplot() -> ModuleType | None:
    """matplotlib.pyplot on the non-interactive Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt: ModuleType, fig: Any, path: Path | str) -> None:
    """Lay out, write and close `fig` (figures stay open in pyplot until closed)."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_figure(path: Path | str, draw: Callable[[Any, Any], None], **subplots: Any) -> bool:
    """Make a figure with `plt.subplots(**subplots)`, let `draw(fig, axes)` fill it and write it to `path`.
    False, and nothing written, where matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(**subplots)
    draw(fig, axes)
    save_figure(plt, fig, path)
    return True
