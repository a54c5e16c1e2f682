"""How far a sweep has got: every run directory under the given folders, one line each, and the time left.

    python -m rectnet.results.progress <sweep or run dir>...

A reproduce script's grid trains for hours or days, several runs at a time (JOBS) or on a cluster; this reads
the run directories only (it writes nothing and takes no lock), so it can be run at any time, beside the
training. Per run:

* state: `completed` (results.json); `failed` (a FAILED file: a re-run of the script retries it); `training`
  (its lock record names a live process on this host, or a claim from another host that was not released:
  the holder then says how long ago its heartbeat last wrote the record);
  `stopped` (nobody holds it and it has a checkpoint: the same command resumes it); `started` (nobody holds
  it and it has no checkpoint: it starts over); `queued` (no directory yet: a reproduce script queued it, as
  the sweep folder's queue.txt records, and has not reached it).
* epochs: those logged in metrics.jsonl / the config's trainer.epochs.
* test top-1: the last logged epoch's error (%).
* s/epoch: wall seconds per epoch of the latest attempt, from metrics.jsonl's time_s (seconds since the
  attempt started; an attempt begins where time_s falls back). With two or more epochs in the attempt, the
  median of their differences: start-up and a resumed first epoch do not count, and an epoch that was paused
  (SIGSTOP, a suspended job) or shared the machine with other work does not set the pace; with one, its time_s.
  A run with no epoch of its own yet (queued, started) takes the median pace and the epochs of its other seeds
  (the runs whose directory name differs only in `seed=`), marked `~`; none: unknown.
* left: epochs still to train x s/epoch, less the time since the last epoch ended for a run in training; an
  upper bound for a run with a stopping rule (trainer.stop_at_val_loss, the "Single" protocol's stage 2).

The last lines count the runs per state and sum the time left: a sum over runs, so runs that train at the same
time finish sooner than it says; while runs are training, how long the whole grid takes if as many train at once
as do now (each waiting run goes to the first worker free, in queue.txt's order; `finish_s` in the JSON). Then
one JSON line with the same numbers. The queued runs come from queue.txt
in each given folder and in each folder that holds run directories: scripts/reproduce/ adds every run it queues
(grid.py queue) before training, and a script that trains several grids in turn adds each as it reaches it.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rectnet.engine.run_log import format_duration
from rectnet.engine.rundir import LOCK_NAME, holder
from rectnet.results.runs import epoch_durations, epoch_times_by_attempt, find_run_dirs, read_metrics, read_run

STATES = ("training", "stopped", "started", "queued", "failed", "completed")
QUEUE_FILE = "queue.txt"  # written by scripts/reproduce/grid.py queue
CHECKPOINTS = ("last.pt", "prev.pt", ".last.pt.new")  # what trainer.resume=auto resumes from


@dataclass
class RunProgress:
    run: str  # the run directory, relative to the folder it was found under
    state: str
    epochs_done: int
    epochs: int | None  # the config's trainer.epochs; None when no config is readable
    top1_err: float | None
    seconds_per_epoch: float | None
    left_s: float | None  # None: unknown (no pace yet, no epoch count) or not to be trained as it is (failed)
    holder: str | None  # "pid N" or "host H" for a run in training
    estimated: bool = False  # pace and epochs taken from the run's other seeds (it has no epoch of its own)
    queue_position: int | None = None  # its line in queue.txt: the order the scripts reach it; None: not listed


def epoch_seconds(records: Sequence[dict]) -> float | None:
    """Wall seconds per epoch of the latest attempt (module docstring); None before its first epoch."""
    attempts = epoch_times_by_attempt(records)
    latest = attempts[-1] if attempts else []
    if len(latest) >= 2:
        return statistics.median(epoch_durations(latest))
    return latest[0] if latest else None


def run_state(path: Path, status: str, now: float) -> tuple[str, str | None]:
    """(state, holder) of a run directory whose runs.py status is `status`. For a claim from another machine,
    whose process this host cannot see, the holder says how long ago its heartbeat last rewrote the lock record
    (the record's mtime): minutes or hours mean a node that died without releasing it."""
    if status in ("completed", "failed"):
        return status, None
    owner = holder(path)
    if owner is not None and owner.startswith("host "):
        with contextlib.suppress(OSError):
            owner += f", last heartbeat {format_duration(max(0.0, now - (path / LOCK_NAME).stat().st_mtime))} ago"
    if owner is not None:
        return "training", owner
    resumable = any((path / "checkpoints" / name).is_file() for name in CHECKPOINTS)
    return ("stopped" if resumable else "started"), None


def run_progress(path: Path, root: Path, now: float) -> RunProgress:
    run = read_run(path)
    state, owner = run_state(path, run.status, now)
    records = [r for r in read_metrics(path) if "epoch" in r]
    done = max((int(r["epoch"]) for r in records), default=0)
    epochs = ((run.config or {}).get("trainer") or {}).get("epochs")
    epochs = int(epochs) if isinstance(epochs, int) else None
    pace = epoch_seconds(records)
    left = None
    if state == "completed":
        left = 0.0
    elif state != "failed" and epochs is not None and pace is not None:
        left = max(0, epochs - done) * pace
        if state == "training":  # the epoch under way has run since metrics.jsonl was last written
            left = max(0.0, left - (now - (path / "metrics.jsonl").stat().st_mtime))
    top1 = records[-1].get("test/top1_err") if records else None
    name = "." if path == root else str(path.relative_to(root))
    return RunProgress(name, state, done, epochs, top1, pace, left, owner)


def queue_order(root: Path, run_dirs: Sequence[Path]) -> list[str]:
    """The runs named in queue.txt of `root` or of a folder holding run directories, relative to `root`, once each
    in the order queued, with or without a directory yet. A line that is no directory name (grid.py writes one path
    component per line) is passed over: an edited or damaged queue.txt cannot point outside the folder."""
    names = []
    for folder in sorted({root, *(path.parent for path in run_dirs if path != root)}):
        listed = folder / QUEUE_FILE
        if listed.is_file():
            lines = listed.read_text(errors="replace").splitlines()
            names += [str((folder / n).relative_to(root)) for n in lines if n not in ("", ".", "..") and "/" not in n]
    return list(dict.fromkeys(names))


def other_seeds_key(run: str) -> str:
    """The run's path with its directory name's `seed=` item left out: equal for the runs that differ only in the
    seed (a key that merely ends in "seed", model.seed=, is kept)."""
    folder, slash, name = run.rpartition("/")
    return folder + slash + re.sub(r"(^|,)seed=[^,]*(?=,|$)", "", name)


def estimate_from_other_seeds(progress: Sequence[RunProgress]) -> None:
    """Gives each unfinished run without a pace of its own (or without an epoch count) the median pace and the
    most common epoch count of its other seeds, and the time left that follows."""
    by_key: dict[str, list[RunProgress]] = {}
    for p in progress:
        by_key.setdefault(other_seeds_key(p.run), []).append(p)
    for p in progress:
        if p.state in ("completed", "failed") or (p.seconds_per_epoch is not None and p.epochs is not None):
            continue
        others = [o for o in by_key[other_seeds_key(p.run)] if o is not p and not o.estimated]
        paces = [o.seconds_per_epoch for o in others if o.seconds_per_epoch is not None]
        epochs = [o.epochs for o in others if o.epochs is not None]
        if p.epochs is None and epochs:
            p.epochs, p.estimated = Counter(epochs).most_common(1)[0][0], True
        if p.seconds_per_epoch is None and paces:
            p.seconds_per_epoch, p.estimated = statistics.median(paces), True
        if p.epochs is not None and p.seconds_per_epoch is not None and p.estimated:
            p.left_s = max(0, p.epochs - p.epochs_done) * p.seconds_per_epoch


def collect(roots: Sequence[Path]) -> list[RunProgress]:
    now = time.time()
    found, queued_before = [], 0
    for root in roots:
        run_dirs = find_run_dirs([root])
        listed = queue_order(root, run_dirs)
        runs = [run_progress(path, root, now) for path in run_dirs]
        waiting = [name for name in listed if not (root / name).is_dir()]
        runs += [RunProgress(name, "queued", 0, None, None, None, None, None) for name in waiting]
        position = {name: queued_before + i for i, name in enumerate(listed)}  # after the folders before this one
        for p in runs:
            p.queue_position = position.get(p.run)
        found += runs
        queued_before += len(listed)
    estimate_from_other_seeds(found)
    return found


def _cell(value: float | None, text) -> str:
    return "—" if value is None else text(value)


def render(progress: Sequence[RunProgress]) -> str:
    header = f"{'state':<10} {'epochs':>7} {'test top-1':>10} {'s/epoch':>8} {'left':>9}  run"
    lines = [header]
    for p in progress:
        epochs = f"{p.epochs_done}/{p.epochs if p.epochs is not None else '?'}"
        top1 = _cell(p.top1_err, lambda v: f"{v:.2f}")
        pace = _cell(p.seconds_per_epoch, lambda v: f"{v:.0f}")
        pace = f"~{pace}" if p.estimated and p.seconds_per_epoch is not None else pace
        left = _cell(p.left_s, format_duration)
        where = f"  ({p.holder})" if p.holder else ""
        lines.append(f"{p.state:<10} {epochs:>7} {top1:>10} {pace:>8} {left:>9}  {p.run}{where}")
    lines.append(summary(progress))
    return "\n".join(lines)


def count_states(progress: Sequence[RunProgress]) -> dict[str, int]:
    return {state: sum(p.state == state for p in progress) for state in STATES}


def time_to_finish(progress: Sequence[RunProgress]) -> float | None:
    """Wall seconds until the runs with a known time left are done, if as many runs train at once as do now: each
    run in training holds a worker until its time left is up, and the others (stopped, started, queued) go to the
    worker free first in the order the scripts reach them: queue.txt's, then the runs it does not list, in the order
    given. None when no run is training (how many will is not known)."""
    workers = [p.left_s or 0.0 for p in progress if p.state == "training"]
    if not workers:
        return None
    heapq.heapify(workers)
    waiting = [p for p in progress if p.state in ("stopped", "started", "queued") and p.left_s is not None]
    for p in sorted(waiting, key=lambda p: (p.queue_position is None, p.queue_position or 0)):
        heapq.heappush(workers, heapq.heappop(workers) + p.left_s)
    return max(workers)


def summary(progress: Sequence[RunProgress]) -> str:
    counts = count_states(progress)
    unfinished = [p for p in progress if p.state not in ("completed", "failed")]
    unknown = sum(p.left_s is None for p in unfinished)
    estimated = sum(p.estimated and p.left_s is not None for p in unfinished)
    left = sum(p.left_s for p in unfinished if p.left_s is not None)
    text = f"{len(progress)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items())
    if unfinished:
        text += f"; {format_duration(left)} of training left, summed over the unfinished runs"
        if estimated:
            text += f" ({estimated} at the pace of their other seeds, ~)"
        if unknown:
            text += (
                f" with a known pace ({unknown} without one: no epoch logged by it or its other seeds,"
                " or no readable config)"
            )
        finish = time_to_finish(progress)
        if finish is not None:
            at_once = counts["training"]
            text += (
                f"; with {at_once} run{'s' if at_once > 1 else ''} at a time as now, done in {format_duration(finish)}"
            )
    if counts["failed"]:
        text += "; failed runs are retried by a re-run of the script (their FAILED file says why)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rectnet.results.progress",
        description="Each run's state, epochs, last test error and time left, under sweep or run directories.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories (searched recursively)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(missing)}")
    progress = collect(args.dirs)
    if not progress:
        print(f"no run directories under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 1
    print(render(progress))
    finish = time_to_finish(progress)
    print(json.dumps({"counts": count_states(progress), "finish_s": finish, "runs": [asdict(p) for p in progress]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
