"""What the analyses' command lines share (`python -m rectnet.analysis.<module>`).

Each prints its table and ends with one line, a JSON object of its results, which scripts and tests parse. An input
it cannot use (no checkpoint there, no such layer, nothing logged, a config value out of range) ends it with
"error: <message>" and exit status 1: the message says what to fix, where a traceback would bury it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rectnet.data.cifar import DatasetError
from rectnet.engine.checkpoint import CheckpointError


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """The parser of `python -m rectnet.analysis.<module>`."""
    return argparse.ArgumentParser(prog=f"python -m rectnet.analysis.{module}", description=description)


def checkpoint_parser(module: str, description: str) -> argparse.ArgumentParser:
    """The parser of an analysis that reads one checkpoint: a file, or a run directory and which of its two."""
    checkpoint = parser(module, description)
    checkpoint.add_argument("path", help="a checkpoint file or a run directory")
    checkpoint.add_argument("--which", default="last", choices=("last", "best"), help="checkpoint of a run directory")
    return checkpoint


def run(
    command: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], dict | None],
) -> None:
    """Parse `argv`, run `body` and print the record it returns as the last line (None: it printed its own
    output); FileNotFoundError, ValueError, CheckpointError (a damaged or foreign checkpoint) and DatasetError
    (missing or corrupt data), what unusable inputs raise, end the command with their message."""
    args = command.parse_args(argv)
    try:
        record = body(args)
    except (FileNotFoundError, ValueError, CheckpointError, DatasetError) as err:
        sys.exit(f"error: {err}")
    if record is not None:
        print(json.dumps(record))


def print_written(paths: Sequence[Path]) -> None:
    """Name the files an analysis wrote, and say why there is no PNG among them (matplotlib is optional)."""
    png = any(path.suffix == ".png" for path in paths)
    print(f"written: {', '.join(map(str, paths))}" + ("" if png else " (no PNG: matplotlib not installed)"))
