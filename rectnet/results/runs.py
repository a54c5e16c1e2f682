"""Run directories: finding them, and reading their status, config, results and per-epoch metrics.

A folder that holds `results.json`, `FAILED` or `.hydra/` is a run directory (the search does not descend into
one). A run is completed (`results.json` with status "completed" and no `FAILED`), failed (a `FAILED` file:
train.py writes it when a run stops on an error) or missing (neither: interrupted, still running, never
finished). Its config is results.json's resolved "config", else `.hydra/config.yaml` for runs that never finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rectnet.config import register_resolvers
from rectnet.results.variants import Variant, variant_from_config

# Command-line overrides that shorten a run's schedule or data
SHORTENING_KEYS = ("trainer.epochs", "dataset.num_train", "dataset.num_test")


@dataclass
class Run:
    """One run directory: its status, config (when readable) and results (when completed)."""

    path: Path
    status: str  # completed | failed | missing
    config: dict | None = None
    results: dict | None = None

    @property
    def dataset(self) -> str | None:
        return self.config["dataset"]["name"] if self.config else None

    @property
    def seed(self) -> int | None:
        return self.config.get("seed") if self.config else None

    @property
    def num_folds(self) -> int:
        return int(self.config["dataset"].get("num_folds") or 0) if self.config else 0

    @property
    def fold(self) -> int:
        return int(self.config["dataset"].get("fold") or 0) if self.config else 0

    @property
    def single_stage(self) -> int:
        """1 or 2 for the two runs of the "Single" protocol (scripts/reproduce/single.sh), 0 for any other run."""
        if not self.config:
            return 0
        if self.config["dataset"].get("holdout_in_train"):
            return 2
        return 1 if self.config.get("trainer", {}).get("record_train_loss_at_best") else 0

    @property
    def init(self) -> str | None:
        if not self.config:
            return None
        init = self.config.get("init", {})
        return f"{init.get('name')}/{init.get('mode')}"

    @property
    def variant(self) -> Variant | None:
        return variant_from_config(self.config) if self.config else None

    def shortened(self) -> list[str]:
        """Why this run did not run its recipe's full schedule and data, e.g. ["trainer.max_steps_per_epoch=10",
        "dataset.num_train=1000"]; empty for a full run. A capped epoch, and the epoch count or a subset of the
        training or test images set on the command line (`.hydra/overrides.yaml`; a recipe's own subset, such
        as Fig. 2's 3,000 test images, is its recipe), make its numbers incomparable with the paper's."""
        if not self.config:
            return []
        capped = self.config.get("trainer", {}).get("max_steps_per_epoch")
        reasons = [] if capped is None else [f"trainer.max_steps_per_epoch={capped}"]
        for override in _overrides(self.path):
            key, _, value = override.lstrip("+").partition("=")
            if key in SHORTENING_KEYS and value not in ("null", "None"):  # null: the whole split
                reasons.append(override)
        return reasons

    def overrides(self) -> list[str]:
        """The command-line overrides Hydra saved for the run (`.hydra/overrides.yaml`); [] when absent."""
        return _overrides(self.path)

    def schedule_overrides(self) -> list[str]:
        """The lr schedule set on the command line (`schedule.*` overrides, e.g. a compressed schedule's
        "schedule.milestones=[6,7,9]"): what a shortened run's note adds to say how its schedule ran."""
        return [o for o in _overrides(self.path) if o.lstrip("+").startswith(("schedule.", "schedule="))]

    def failure(self) -> str:
        """The first line of FAILED (the error), for the inventory."""
        path = self.path / "FAILED"
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        return lines[0][:200] if lines else ""


def is_run_dir(path: Path) -> bool:
    return (path / "results.json").is_file() or (path / "FAILED").is_file() or (path / ".hydra").is_dir()


def find_run_dirs(roots: Iterable[Path | str]) -> list[Path]:
    """Run directories at or under `roots`, sorted; a run directory's own sub-folders are not searched."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        for folder, subdirs, _ in os.walk(root):
            here = Path(folder)
            if is_run_dir(here):
                found.add(here)
                subdirs.clear()
            else:  # Hydra's and submitit's bookkeeping folders hold no runs
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return sorted(found)


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`; None when absent, unreadable or not an object (a half-written file)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_hydra_config(run_dir: Path) -> dict | None:
    """`.hydra/config.yaml`, each top-level part resolved where that needs no Hydra runtime: rectnet's resolvers
    (`${activation_default:prelu,slope}`, the slope of an unfinished PReLU run) resolve, a part that refers to
    `${hydra:...}` (run_dir) stays as written."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = OmegaConf.load(path)
        parts = OmegaConf.to_container(config, resolve=False)
    except Exception:  # a half-written or foreign yaml: the run stays unattributed, the table goes on
        return None
    register_resolvers()
    for key in parts:
        try:
            parts[key] = _resolved(config, key)
        except Exception:  # an interpolation only Hydra's runtime resolves
            pass
    return parts


def _resolved(config: DictConfig, key: str) -> Any:
    value = config[key]  # a scalar resolves here
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _overrides(run_dir: Path) -> list[str]:
    """The command-line overrides Hydra saved for the run (`.hydra/overrides.yaml`); [] when absent."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
    except Exception:  # a half-written yaml: no overrides known
        return []
    return [o for o in overrides if isinstance(o, str)] if isinstance(overrides, list) else []


def read_run(path: Path) -> Run:
    """Status, config and results of the run directory `path`."""
    results = read_json(path / "results.json")
    if (path / "FAILED").is_file():
        status = "failed"
    elif results is not None and results.get("status") == "completed":
        status = "completed"
    else:
        status = "missing"
    config = (results or {}).get("config") or _read_hydra_config(path)
    return Run(path, status, config if _is_train_config(config) else None, results if status == "completed" else None)


def _is_train_config(config: object) -> bool:
    """A rectnet training config: the sections the grouping reads are there (not some other yaml)."""
    sections = ("dataset", "model", "activation")
    return isinstance(config, dict) and all(isinstance(config.get(k), dict) and "name" in config[k] for k in sections)


def read_runs(roots: Iterable[Path | str]) -> list[Run]:
    return [read_run(path) for path in find_run_dirs(roots)]


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records; a line cut short by an interrupted write is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def epoch_times_by_attempt(records: Iterable[dict]) -> list[list[float]]:
    """metrics.jsonl's time_s (seconds since the attempt started, at each epoch's end) split into attempts: a
    resumed attempt begins where time_s falls back."""
    attempts: list[list[float]] = []
    for time_s in (float(r["time_s"]) for r in records if "time_s" in r):
        if not attempts or time_s < attempts[-1][-1]:
            attempts.append([])
        attempts[-1].append(time_s)
    return attempts


def epoch_durations(times: Sequence[float]) -> list[float]:
    """The seconds between consecutive epoch ends of one attempt: its first epoch (start-up, or a partial epoch
    after a resume) is not among them."""
    return [b - a for a, b in zip(times[:-1], times[1:], strict=True)]


def count_statuses(runs: Iterable[Run]) -> tuple[int, int, int]:
    """(completed, failed, missing) run directories."""
    runs = list(runs)
    return tuple(sum(r.status == s for r in runs) for s in ("completed", "failed", "missing"))
