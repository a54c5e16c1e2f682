""" "Did you mean ...?" for a mistyped train.py override.

Hydra refuses `trainer.epoch=3` with "Key 'epoch' not in 'TrainerConfig'" and the advice to append it with
`+trainer.epoch=3`, which the typed schema then refuses too; it refuses `activation=prelo` with the list of
every activation. Neither names the likely intended key. `suggestions` finds, for each key=value word of a
command line, a close match (config.close_match) for a key that the schema (rectnet/config.py) lacks or an
option that a config group (configs/<group>/) lacks; `hint_on_failure` prints them under Hydra's error when a
command exits non-zero, and leaves everything else as Hydra does it.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rectnet.config import CONFIG_DIR, TrainConfig, close_match


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str] | None:
    """The options of config group `group` (configs/<group>/**/*.yaml, as `group=option` names them); None when
    `group` is not a group."""
    folder = config_dir / group
    if group == "hydra" or not folder.is_dir():
        return None
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def _key_suggestion(parts: list[str]) -> str | None:
    """The key path with its first unknown part replaced by the closest field name; None when the path is
    known as far as the schema types it (a dict- or Any-typed field takes any key below it)."""
    schema: type = TrainConfig
    for i, part in enumerate(parts):
        fields = typing.get_type_hints(schema)
        if part not in fields:
            match = close_match(part, list(fields))
            return ".".join([*parts[:i], match, *parts[i + 1 :]]) if match else None
        if not dataclasses.is_dataclass(fields[part]):
            return None
        schema = fields[part]
    return None


def suggestion(word: str, config_dir: Path = CONFIG_DIR) -> str | None:
    """A corrected `key=value` for one command-line word, or None (unknown nothing, or nothing close)."""
    key, sep, value = word.partition("=")
    if not sep or word.startswith(("~", "+")) or "@" in key or key.startswith("hydra.") or key == "hydra":
        return None  # +key=value: composes, and the schema check names a close key itself (config.py)
    parts = key.split(".")
    options = group_options(key, config_dir) if len(parts) == 1 else None
    if options is not None:
        known = [*options, "null", ""]
        fixed = [v if v in known else close_match(v, options) for v in value.split(",")]
        return f"{key}={','.join(fixed)}" if None not in fixed and fixed != value.split(",") else None
    if len(parts) == 1:  # a top-level key (seed) or a group name misspelt (activaton=prelu)
        groups = [p.name for p in config_dir.iterdir() if p.is_dir() and p.name != "hydra"]
        match = close_match(key, sorted(set(groups) | set(typing.get_type_hints(TrainConfig))))
        return f"{match}={value}" if match and match != key else None
    corrected = _key_suggestion(parts)
    return f"{corrected}={value}" if corrected else None


def suggestions(argv: Sequence[str], config_dir: Path = CONFIG_DIR) -> list[str]:
    """One "hint: ... did you mean" line per word of `argv` that has a close match."""
    lines = []
    for word in argv:
        found = suggestion(word, config_dir)
        if found:
            lines.append(f"hint: did you mean {found} (not {word})")
    return lines


@contextmanager
def hint_on_failure(argv: Sequence[str]) -> Iterator[None]:
    """Around a Hydra main: when it exits non-zero, print the suggestions for `argv` under its error."""
    try:
        yield
    except SystemExit as stop:
        if stop.code not in (None, 0):
            for line in suggestions(argv):
                print(line, file=sys.stderr)
        raise
