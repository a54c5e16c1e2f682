"""The run directories of a `python train.py -m ...` sweep, and which of them still need training.

    python scripts/reproduce/grid.py pending --sweep-dir DIR -- OVERRIDE...   what to launch (NUL-separated)
    python scripts/reproduce/grid.py runs --sweep-dir DIR [--completed] -- OVERRIDE...   run directories (NUL-separated)
    python scripts/reproduce/grid.py state --sweep-dir DIR -- OVERRIDE...    each run's state and directory
    python scripts/reproduce/grid.py queue --sweep-dir DIR [--jobs FILE] -- OVERRIDE...   note the runs in DIR/queue.txt
    python scripts/reproduce/grid.py exclude-keys                             the keys left out of the names

Used by scripts/reproduce/*.sh (common.sh), which launch every sweep with

    hydra.sweep.dir=DIR  hydra.sweep.subdir='${hydra.job.override_dirname}'
    hydra.job.config.override_dirname.exclude_keys=[<EXCLUDE_KEYS>]

so that each job's run directory is DIR/<its overrides, sorted, comma-joined> (e.g.
`dataset=cifar10,experiment=convpool_crelu,seed=1`): the same on every invocation, so an interrupted run resumes
from its checkpoints/last.pt (trainer.resume=auto, the default) and a finished one is found again. The
expansion and the names are Hydra's own (BasicSweeper.split_arguments and the config loader's
get_overrides_dirname, hydra-core 1.3), so they match what `train.py -m` creates.

`pending` prints the smallest sub-grid (one value list per swept key) that covers every job not yet finished,
or nothing when all are: finished jobs that share a value list with unfinished ones are launched again and
cost one resume each (load last.pt, no epoch to train, results.json rewritten). `state` prints, per job, its
status (completed, failed, partial or new) and its run directory (common.sh's queue trains one run at a time in
its directory). `queue` adds the grid's run directory names (with --jobs FILE: those of each line of FILE, one job's
overrides separated by \\x1f, with OVERRIDE... added) to DIR/queue.txt, so that `python -m rectnet.results.progress`
can list the runs that have no directory yet. A job is finished when its
results.json says "completed" with the configured trainer.epochs (or stopped early by trainer.stop_at_val_loss)
and no FAILED file is there.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

# Keys that do not change what a run computes (paths, hardware, logging): left out of run directory names, so a
# re-run with another data path, thread count or number of processes finds the same runs (the recipes state the
# global batch; the per-process one follows from the number of processes).
EXCLUDE_KEYS = (
    "dataset.root",
    "dataset.download",
    "dataset.workers",
    "dataset.prefetch_factor",
    "dataset.on_device",
    "dataset.skip_corrupt",
    "trainer.device",
    "trainer.threads",
    "trainer.progress",
    "trainer.log_every_steps",
    "trainer.checkpoint_every_steps",
    "trainer.eval_batch_size",
    "trainer.resume",
    "logger",
    "logger.tensorboard",
    "logger.slope_histograms",
    "trainer.stop_at_val_loss",  # "Single" stage 2: fixed by its stage-1 run, which the other keys name
)
MAX_NAME = 255  # bytes in one path component on common file systems
QUEUE_FILE = "queue.txt"  # rectnet.results.progress reads it (progress.QUEUE_FILE)


def _parse(overrides: Sequence[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(overrides))


def task_overrides(overrides: Sequence[str]) -> list[str]:
    """What Hydra treats as the job's own overrides: everything but hydra.* and hydra/... ones."""
    return [o.input_line for o in _parse(overrides) if not o.is_hydra_override()]


def hydra_overrides(overrides: Sequence[str]) -> list[str]:
    """The hydra.* and hydra/... overrides (launcher settings, ...): passed on unchanged."""
    return [o.input_line for o in _parse(overrides) if o.is_hydra_override()]


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """Each job's override strings, in Hydra's order (BasicSweeper: the product of every swept key's values)."""
    return BasicSweeper.split_arguments(_parse(task_overrides(overrides)), None)[0]


def run_name(job: Sequence[str]) -> str:
    """${hydra.job.override_dirname} of a job (default separators "," and "=")."""
    name = get_overrides_dirname(_parse(job), list(EXCLUDE_KEYS), item_sep=",", kv_sep="=")
    if not name or "/" in name or len(name.encode()) > MAX_NAME:
        raise SystemExit(
            f"grid.py: the run directory name {name!r} is empty, holds a '/' or is over {MAX_NAME} bytes; "
            "add the offending key to EXCLUDE_KEYS in scripts/reproduce/grid.py if it does not change the run"
        )
    return name


def status(run_dir: Path) -> str:
    """completed | failed | partial (a checkpoint to resume from) | new."""
    if (run_dir / "FAILED").is_file():
        return "failed"
    try:
        results = json.loads((run_dir / "results.json").read_text())
        epochs = results["config"]["trainer"]["epochs"]
        done = results.get("epochs") == epochs or "stopped_at_epoch" in results  # "Single" stage 2 stops early
        if results.get("status") == "completed" and done:
            return "completed"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "partial" if (run_dir / "checkpoints" / "last.pt").is_file() else "new"


def record_queue(sweep_dir: Path, names: Sequence[str]) -> None:
    """Adds to <sweep dir>/queue.txt the `names` it lacks, in order: every run some invocation on this sweep
    queued, one directory name per line. Several invocations may start at once: under an flock, written whole."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / QUEUE_FILE
    with open(sweep_dir / f".{QUEUE_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = path.read_text().splitlines() if path.is_file() else []
        listed = set(known)
        new = [name for name in dict.fromkeys(names) if name not in listed]
        if new:
            partial = path.with_name(f".{QUEUE_FILE}.{os.getpid()}")
            partial.write_text("".join(f"{name}\n" for name in [*known, *new]))
            os.replace(partial, path)


def queued_jobs(jobs_file: Path | None, overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of `queue`: the grid of `overrides`, or each line of `jobs_file` (\\x1f-separated) with them."""
    if jobs_file is None:
        return expand(overrides)
    lines = [line for line in jobs_file.read_text().splitlines() if line]
    return [job for line in lines for job in expand([*line.split("\x1f"), *overrides])]


def _key(job_override: str) -> str:
    return _parse([job_override])[0].get_key_element()


def covering_grid(jobs: Sequence[Sequence[str]]) -> list[str]:
    """The value lists (in the jobs' key order) whose product covers `jobs`: `key=v1,v2` or `key=v`."""
    values: dict[str, list[str]] = {}
    for job in jobs:
        for override in job:
            key = _key(override)
            seen = values.setdefault(key, [])
            if override not in seen:
                seen.append(override)
    grid = []
    for key, lines in values.items():
        if len(lines) == 1:
            grid.append(lines[0])
        else:
            grid.append(f"{key}=" + ",".join(line[len(key) + 1 :] for line in lines))
    return grid


def _emit(items: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{item}\0" for item in items))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("pending", "runs", "state", "queue", "exclude-keys"))
    parser.add_argument("--sweep-dir", type=Path)
    parser.add_argument("--completed", action="store_true", help="runs: only finished runs")
    parser.add_argument("--jobs", type=Path, help="queue: a file of jobs, one per line (overrides \\x1f-separated)")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1 :]
    if args.command == "exclude-keys":
        print(",".join(EXCLUDE_KEYS))
        return
    if args.sweep_dir is None:
        parser.error("--sweep-dir is required")
    if args.command == "queue":
        record_queue(args.sweep_dir, [run_name(job) for job in queued_jobs(args.jobs, args.overrides)])
        return
    jobs = expand(args.overrides)
    dirs = [args.sweep_dir / run_name(job) for job in jobs]
    states = [status(d) for d in dirs]
    if args.command == "state":
        _emit([item for d, s in zip(dirs, states, strict=True) for item in (s, str(d))])
        return
    if args.command == "runs":
        _emit([str(d) for d, s in zip(dirs, states, strict=True) if s == "completed" or not args.completed])
        return
    todo = [job for job, s in zip(jobs, states, strict=True) if s != "completed"]
    grid = covering_grid(todo) if todo else []
    launched = len(expand(grid)) if todo else 0
    if todo and not {tuple(j) for j in todo} <= {tuple(j) for j in expand(grid)}:  # a value that did not round-trip
        grid, launched = task_overrides(args.overrides), len(jobs)
    counts = {s: states.count(s) for s in ("completed", "partial", "failed", "new") if states.count(s)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    again = launched - len(todo)
    note = f"; {again} finished run(s) share the sub-grid and only resume" if again > 0 else ""
    print(f"grid: {len(jobs)} runs in {args.sweep_dir} ({summary}): launching {launched}{note}", file=sys.stderr)
    _emit([*hydra_overrides(args.overrides), *grid] if todo else [])


if __name__ == "__main__":
    main()
