"""Run records that outlive a work tree: a sweep's completed runs, without their checkpoints, copied to a folder
that is committed (e.g. docs/results/crelu_table1_mini/runs), and back into a sweep directory.

    python -m rectnet.results.archive SRC DST

Sweep directories are git-ignored (sweeps/): a fresh clone or another machine starts without them, and without
the CPU-hours their runs cost (issue 20 lost a 23-CPU-hour grid that way). For every completed run directory
under SRC (results.json says "completed": runs.py), this copies the files that the tables, the results page,
the learning curves and the reproduce scripts' skip test read, to the same path relative to SRC under DST:
results.json, metrics.jsonl, eval_*.json and .hydra/{config,overrides,hydra}.yaml (a few tens of KB per run).
It merges SRC's commands.txt into DST's (the lines DST lacks, in their order), which the page quotes. Left out:
checkpoints/ (a completed run needs none to be skipped or tabulated), tb/ (TensorBoard), train.log, and
test_logits.pt, which only the "Vote" column reads: a 10-fold sweep's Vote needs its sweep directory.

The same command restores: SRC the archive, DST a sweep directory, whose re-run then skips the restored runs
(scripts/reproduce/common.sh: ARCHIVE does both around a queued sweep). A run directory that DST already holds
is never touched: the same completed run counts as there already; an unfinished one (its checkpoint resumes
it) or a completed one with other final numbers is kept and named. Each run arrives whole or not at all: it is
copied into a hidden folder beside its place and renamed into it, so an interrupted copy leaves nothing that
reads as a run.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rectnet.results.page import COMMANDS_FILE
from rectnet.results.runs import find_run_dirs, read_json, read_run

RECORD_FILES = ("results.json", "metrics.jsonl")
RECORD_GLOBS = ("eval_*.json",)
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")


@dataclass
class Outcome:
    """What `sync` did, by run directory relative to the roots."""

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # the same completed run is there already
    kept: list[str] = field(default_factory=list)  # "name: why": DST holds another run at that place
    commands_added: int = 0


def record_files(run_dir: Path) -> list[Path]:
    """The run's record files that exist, relative to it."""
    names = [Path(n) for n in RECORD_FILES] + [Path(".hydra") / n for n in HYDRA_FILES]
    names += [p.relative_to(run_dir) for pattern in RECORD_GLOBS for p in sorted(run_dir.glob(pattern))]
    return [n for n in names if (run_dir / n).is_file()]


def _outcome_of(source: Path, target: Path) -> str | None:
    """None when `target` (an existing run directory) holds the same completed run as `source`, else why not."""
    theirs = read_run(target)
    if theirs.status != "completed":
        return f"{theirs.status} there (not replaced: re-running the sweep resumes or retries it)"
    mine, kept = read_json(source / "results.json") or {}, theirs.results or {}
    if (mine.get("epochs"), mine.get("final")) != (kept.get("epochs"), kept.get("final")):
        return "completed there with other final numbers (kept; compare the two results.json files)"
    return None


def _copy_run(source: Path, target: Path) -> None:
    """`source`'s record files into `target` (absent), whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not tempfile.mkdtemp: mkdtemp makes the folder 0700, and the run would stay private to its writer in
    # an archive shared on disk; mkdir gives the umask's mode, like every other folder the sweep writes
    staging = target.with_name(f".{target.name[:40]}.{os.getpid()}.{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        for name in record_files(source):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, staging / name)
        staging.rename(target)  # fails if another process put a run there meanwhile: theirs stays
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_commands(src: Path, dst: Path) -> int:
    """Appends the lines of SRC's commands.txt that DST's lacks, in order (written whole); the count added."""
    theirs = src / COMMANDS_FILE
    if not theirs.is_file():
        return 0
    ours = dst / COMMANDS_FILE
    present = ours.read_text().splitlines() if ours.is_file() else []
    new = [line for line in theirs.read_text().splitlines() if line.strip() and line not in present]
    if new:
        staging = ours.with_name(f".{COMMANDS_FILE}.{os.getpid()}")
        staging.write_text("".join(f"{line}\n" for line in present + new))
        staging.replace(ours)
    return len(new)


def sync(src: Path, dst: Path) -> Outcome:
    """Copies the completed runs under `src` that `dst` lacks, with their record files only (module doc)."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    outcome = Outcome()
    dst.mkdir(parents=True, exist_ok=True)
    for run_dir in find_run_dirs([src]):
        if read_run(run_dir).status != "completed":
            continue
        name = run_dir.relative_to(src)
        target = dst / name
        if target.exists():
            why = _outcome_of(run_dir, target)
            if why is None:
                outcome.present.append(str(name))
            else:
                outcome.kept.append(f"{name}: {why}")
            continue
        try:
            _copy_run(run_dir, target)
        except OSError:
            if not target.exists():
                raise
            outcome.present.append(str(name))  # another sync of the same runs was faster
            continue
        outcome.copied.append(str(name))
    outcome.commands_added = _merge_commands(src, dst)
    return outcome


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rectnet.results.archive",
        description="Copy the record files of the completed runs under SRC that DST lacks (no checkpoints).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="a sweep directory, or an archive to restore from")
    parser.add_argument("dst", type=Path, help="the archive (e.g. docs/results/<page>/runs), or a sweep directory")
    args = parser.parse_args(argv)
    src, dst = args.src.resolve(), args.dst.resolve()
    if src == dst or src.is_relative_to(dst) or dst.is_relative_to(src):
        parser.error("SRC and DST must not be the same directory or lie one inside the other")
    try:
        outcome = sync(args.src, args.dst)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    for line in outcome.kept:
        print(f"kept: {line}", file=sys.stderr)
    print(
        f"{args.src} -> {args.dst}: {len(outcome.copied)} run(s) copied, {len(outcome.present)} there already, "
        f"{len(outcome.kept)} kept as they were; {outcome.commands_added} line(s) added to {COMMANDS_FILE}"
    )


if __name__ == "__main__":
    main()
