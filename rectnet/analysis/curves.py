"""Convergence curves (He et al. 2015 Figs. 2-3): error per epoch of several runs, e.g. Kaiming vs Xavier init.

    python -m rectnet.analysis.curves <run or sweep dir>... [--metric test/top1_err] [--below 80] [--out DIR]

Reads metrics.jsonl of every run directory found under the arguments (as `python -m rectnet.tables` finds
them), including failed or unfinished runs, whose curve simply stops. The paper plots top-1 error on 3,000
random validation images (centre crop) per epoch; here the metric is any key of metrics.jsonl, by default
"test/top1_err" (the run's whole test split; "val/top1_err" under k-fold runs, "train/top1_err", ...).

Each run is labelled "<model> <activation> <init>/<mode> seed <s>" (plus "fold <f>" for fold runs; where labels
would collide, the run's folder below the runs' common parent is appended). Written to --out (default ./curves):

* curves.csv: one row per epoch, one column per run (empty where a run has no such epoch);
* curves.md: the same table in Markdown, and the summary below;
* curves.png, only if matplotlib is importable (not a dependency): one colour per configuration, its seeds
  (and folds) drawn alike.

Printed: the summary, one line per run: status, epochs logged, first/final/best value (best's epoch), the
first epoch at or below --below (how early the error starts falling, the paper's point in Fig. 2) and the
chance-level error 100·(1 - 1/classes) (Fig. 3's Xavier run "completely stalls" there). The last line is
one JSON object with the summary.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rectnet.analysis import command
from rectnet.analysis.plotting import write_figure
from rectnet.results.runs import Run, read_metrics, read_runs


@dataclass
class Curve:
    label: str
    run: Run
    epochs: list[int]
    values: list[float]
    metric: str = "test/top1_err"

    def summary(self, below: float | None) -> dict:
        best = min(range(len(self.values)), key=self.values.__getitem__) if self.values else None
        classes = self.run.config["dataset"]["num_classes"] if self.run.config else None
        return {
            "label": self.label,
            "path": str(self.run.path),
            "status": self.run.status,
            "epochs": len(self.epochs),
            "first": self.values[0] if self.values else None,
            "final": self.values[-1] if self.values else None,
            "best": None if best is None else self.values[best],
            "best_epoch": None if best is None else self.epochs[best],
            "first_epoch_below": None if below is None else first_epoch_below(self, below),
            # chance-level top-1 error; other metrics (losses, top-5) have no such line here
            "chance": 100.0 * (1 - 1 / classes) if classes and self.metric.endswith("top1_err") else None,
        }


def first_epoch_below(curve: Curve, threshold: float) -> int | None:
    """The first epoch whose value is at or below `threshold`; None if it never gets there."""
    return next((e for e, v in zip(curve.epochs, curve.values, strict=True) if v <= threshold), None)


def run_label(run: Run) -> str:
    if not run.config:
        return run.path.name
    c = run.config
    width = c["model"].get("width", 1.0)
    model = c["model"]["name"] + (f" width {width:g}" if width != 1.0 else "")
    label = f"{model} {c['activation']['name']} {run.init} seed {run.seed}"
    return label + (f" fold {run.fold}" if run.num_folds else "")


def collect(runs: Sequence[Run], metric: str) -> list[Curve]:
    """One curve per run that logged `metric`; colliding labels get the folder name."""
    curves = []
    for run in runs:
        records = [r for r in read_metrics(run.path) if metric in r and "epoch" in r]
        if records:
            epochs, values = [r["epoch"] for r in records], [r[metric] for r in records]
            curves.append(Curve(run_label(run), run, epochs, values, metric))
    labels = [c.label for c in curves]
    if len(set(labels)) < len(labels):  # name colliding runs by their folders below the common parent
        root = Path(os.path.commonpath([c.run.path for c in curves]))
        for curve in curves:
            if labels.count(curve.label) > 1:
                curve.label += f" ({curve.run.path.relative_to(root) if curve.run.path != root else root.name})"
    return curves


def epoch_table(curves: Sequence[Curve]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): epoch then one column per curve, empty where a curve has no value."""
    epochs = sorted({e for c in curves for e in c.epochs})
    by_epoch = [dict(zip(c.epochs, c.values, strict=True)) for c in curves]
    rows = [[str(e), *(f"{v[e]:.4g}" if e in v else "" for v in by_epoch)] for e in epochs]
    return ["epoch", *(c.label for c in curves)], rows


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _summary_rows(summaries: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    def text(value) -> str:
        return "—" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    header = ["run", "status", "epochs", "first", "final", "best (epoch)", "first epoch below", "chance"]
    rows = [
        [
            s["label"],
            s["status"],
            str(s["epochs"]),
            text(s["first"]),
            text(s["final"]),
            f"{text(s['best'])} ({s['best_epoch']})",
            text(s["first_epoch_below"]),
            text(s["chance"]),
        ]
        for s in summaries
    ]
    return header, rows


def write_outputs(curves: Sequence[Curve], summaries: Sequence[dict], metric: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    header, rows = epoch_table(curves)
    paths = [out / "curves.csv", out / "curves.md"]
    with paths[0].open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    paths[1].write_text(
        f"# {metric} per epoch\n\n{_markdown(header, rows)}\n\n## Summary\n\n{_markdown(*_summary_rows(summaries))}\n"
    )
    if write_figure(out / "curves.png", partial(_draw, curves, metric), figsize=(11, 4)):
        paths.append(out / "curves.png")
    return paths


def seed_groups(curves: Sequence[Curve]) -> dict[str, list[Curve]]:
    """The curves by their label without its seed and fold (the runs of one configuration), in the order first met."""
    groups: dict[str, list[Curve]] = {}
    for curve in curves:
        groups.setdefault(re.sub(r" (seed|fold) \S+", "", curve.label), []).append(curve)
    return groups


def _draw(curves: Sequence[Curve], metric: str, fig, ax) -> None:
    # one colour and one legend entry per configuration: a grid of rows x seeds stays readable (19 runs of
    # Table 1's miniature in 5 colours), and the seeds of a row show as a band
    for color, (name, members) in enumerate(seed_groups(curves).items()):
        label = name if len(members) == 1 else f"{name} ({len(members)} runs)"
        for i, curve in enumerate(members):
            ax.plot(curve.epochs, curve.values, color=f"C{color % 10}", label=label if i == 0 else None, lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def main(argv: Sequence[str] | None = None) -> None:
    parser = command.parser("curves", "Error per epoch of several runs from metrics.jsonl (He et al. 2015 Figs. 2-3).")
    parser.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively)")
    parser.add_argument("--metric", default="test/top1_err", help="a metrics.jsonl key (default test/top1_err)")
    parser.add_argument("--below", type=float, help="also report the first epoch at or below this value")
    parser.add_argument("--out", default="curves", help="output folder (default: ./curves)")
    command.run(parser, argv, _report)


def _report(args: argparse.Namespace) -> dict:
    """Collect the curves, print the summary, write the files; the record of the final JSON line."""
    curves = collect(read_runs(args.dirs), args.metric)
    if not curves:
        raise ValueError(f"no run under {', '.join(args.dirs)} logged {args.metric!r} in metrics.jsonl")
    summaries = [c.summary(args.below) for c in curves]
    print(_markdown(*_summary_rows(summaries)))
    command.print_written(write_outputs(curves, summaries, args.metric, Path(args.out)))
    return {"metric": args.metric, "runs": summaries}


if __name__ == "__main__":
    main()
