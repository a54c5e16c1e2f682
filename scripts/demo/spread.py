"""How far one run's result moves with the seed, the thread count and the precision: what a difference of one
point means (issue 20, item 5).

    python scripts/demo/spread.py --out runs/spread --variant lr0.01= --variant lr0.005=optim.lr=0.005
        [--base experiment=quickstart] [--seeds 0 1 2] [--threads 2 1] [--precisions bf16 fp32]
        [--report docs/results/spread.md]

Runs `python train.py <base> <variant's overrides> seed=S trainer.threads=T trainer.precision=P` for every
combination, into OUT/<variant>/s<S>_<P>_t<T> (a finished or failed run is skipped, so the script resumes), then
writes a Markdown page: per variant the runs that failed (a non-finite loss, ...: counted and named, never left
out silently), the final test error's mean, std, min and max over the finished runs, the std over seeds
(within a thread count and precision) and the mean |difference| between thread counts (same seed and
precision), and every run's error or failure. A thread count changes only the order of floating-point sums; a run whose
result moves with it is one whose trajectory amplifies rounding (an lr at the edge of stability, a saddle).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from rectnet.results.page import this_machine

REPO = Path(__file__).resolve().parents[2]


def variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name or "/" in name:
        raise argparse.ArgumentTypeError(f"--variant NAME=override override ...: got {text!r}")
    return name, overrides.split()


def run_dir(out: Path, name: str, seed: int, precision: str, threads: int) -> Path:
    return out / name / f"s{seed}_{precision}_t{threads}"


def train(where: Path, base: list[str], overrides: list[str], seed: int, precision: str, threads: int) -> None:
    if (where / "results.json").is_file() or (where / "FAILED").is_file():  # the same run would fail the same way
        return
    where.parent.mkdir(parents=True, exist_ok=True)
    args = [*base, *overrides, f"seed={seed}", f"trainer.precision={precision}", f"trainer.threads={threads}"]
    print("run:", " ".join(args), flush=True)
    with (where.parent / f"{where.name}.log").open("w") as log:
        subprocess.run(
            [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={where}", "trainer.progress=lines"],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )


def outcome(where: Path) -> float | str | None:
    """The final test top-1 error, or why the run failed (FAILED's first line, shortened), or None (not run)."""
    path = where / "results.json"
    if path.is_file():
        return json.loads(path.read_text())["final"]["top1_err"]
    failed = where / "FAILED"
    if not failed.is_file():
        return None
    reason = failed.read_text().split("\n", 1)[0]
    nonfinite = re.search(r"loss is (\S+) at (epoch \d+, step \d+)", reason)
    return f"loss {nonfinite[1]} at {nonfinite[2]}" if nonfinite else reason.split(":", 1)[0]


def summarize(errors: dict[tuple[int, str, int], float]) -> dict:
    """Spread of the final errors keyed by (seed, precision, threads)."""
    values = list(errors.values())
    cells: dict[tuple[str, int], list[float]] = {}
    pairs: dict[tuple[int, str], list[float]] = {}
    for (seed, precision, threads), error in errors.items():
        cells.setdefault((precision, threads), []).append(error)
        pairs.setdefault((seed, precision), []).append(error)
    over_seeds = [statistics.stdev(v) for v in cells.values() if len(v) > 1]
    over_threads = [max(v) - min(v) for v in pairs.values() if len(v) > 1]
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
        "min": min(values),
        "max": max(values),
        "std_over_seeds": statistics.fmean(over_seeds) if over_seeds else float("nan"),
        "thread_difference": statistics.fmean(over_threads) if over_threads else float("nan"),
    }


def _number(value: float) -> str:
    """One decimal; — where there is nothing to compute (one seed, one thread count)."""
    return "—" if math.isnan(value) else f"{value:.1f}"


def _cell(outcome: float | str | None) -> str:
    return "—" if outcome is None else f"failed: {outcome}" if isinstance(outcome, str) else f"{outcome:.2f}"


def page(args: argparse.Namespace, results: dict[str, dict[tuple[int, str, int], float | str]]) -> str:
    flags = " ".join(f"--variant {shlex.quote(name + '=' + ' '.join(o))}" for name, o in args.variant)
    command = (
        f"python scripts/demo/spread.py --out {args.out} {flags} --base {' '.join(args.base)} "
        f"--seeds {' '.join(map(str, args.seeds))} --threads {' '.join(map(str, args.threads))} "
        f"--precisions {' '.join(args.precisions)}"
    )
    lines = [
        "| variant | runs | failed | final test top-1 err % of the others: mean ± std | min - max | std over seeds | "
        "mean abs. difference between thread counts |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, found in results.items():
        errors = {c: e for c, e in found.items() if not isinstance(e, str)}
        failed = len(found) - len(errors)
        if errors:
            s = summarize(errors)
            lines.append(
                f"| {name} | {s['n'] + failed} | {failed} | {s['mean']:.1f} ± {s['std']:.1f} | "
                f"{s['min']:.1f} - {s['max']:.1f} | {_number(s['std_over_seeds'])} | "
                f"{_number(s['thread_difference'])} |"
            )
        elif failed:
            lines.append(f"| {name} | {failed} | {failed} | — | — | — | — |")
    lines += ["", "Every run (final test top-1 error %, or why it failed):", ""]
    combos = list(itertools.product(args.precisions, args.threads))
    lines.append("| variant | seed | " + " | ".join(f"{p}, {t} thread(s)" for p, t in combos) + " |")
    lines.append("|---|---|" + "---|" * len(combos))
    for name, errors in results.items():
        for seed in args.seeds:
            cells = [errors.get((seed, p, t)) for p, t in combos]
            lines.append(f"| {name} | {seed} | " + " | ".join(_cell(e) for e in cells) + " |")
    header = [
        f"Command: `{command}`",
        "",
        f"Machine: {this_machine()}; torch {torch.__version__}; one run at a time.",
        "",
    ]
    return "\n".join(header + lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/spread"))
    parser.add_argument("--variant", type=variant, action="append", required=True, help="NAME=override override ...")
    parser.add_argument("--base", nargs="+", default=["experiment=quickstart"], help="overrides of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=("fp32", "bf16"))
    parser.add_argument("--report", type=Path, default=None, help="write the tables here (default: OUT/report.md)")
    parser.add_argument("--report-only", action="store_true", help="tables from the runs already there")
    args = parser.parse_args()
    combos = list(itertools.product(args.seeds, args.precisions, args.threads))
    results = {}
    for name, overrides in args.variant:
        for seed, precision, threads in [] if args.report_only else combos:
            train(run_dir(args.out, name, seed, precision, threads), args.base, overrides, seed, precision, threads)
        found = {c: outcome(run_dir(args.out, name, *c)) for c in combos}
        results[name] = {c: e for c, e in found.items() if e is not None}
    text = page(args, results)
    report = args.report or args.out / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
