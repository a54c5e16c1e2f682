"""Table and curves of scripts/demo/timm_resnet18_cifar.sh: one row per activation, mean ± std over seeds.

    python scripts/demo/timm_resnet18_report.py <runs dir> --out <report dir>

Reads each run directory's results.json and metrics.jsonl (as `python -m rectnet.tables` does). Writes
table.md (final test top-1/top-5 error per seed, mean ± sample std, parameters, wall time), curves.png
(test top-1 error and training loss per epoch: mean over seeds, the band spanning min..max) and summary.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rectnet.analysis.plotting import pyplot, save_figure
from rectnet.results.runs import read_metrics, read_runs

ORDER = ("relu", "prelu", "crelu", "avr")
LABELS = {"relu": "ReLU", "prelu": "PReLU", "crelu": "CReLU (half)", "avr": "AVR"}


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f} (n=1)" if values else "—"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def collect(root: Path) -> dict[str, list[dict]]:
    """activation -> completed runs, each {seed, top1, top5, params, wall, curve (per epoch)}."""
    by_act: dict[str, list[dict]] = {}
    for run in read_runs([root]):
        if run.status != "completed":
            continue
        metrics = read_metrics(run.path)
        by_act.setdefault(run.config["activation"]["name"], []).append(
            {
                "seed": run.config["seed"],
                "top1": run.results["final"]["top1_err"],
                "top5": run.results["final"]["top5_err"],
                "params": run.results["params"],
                "wall_s": run.results["wall_time_s"],
                "test_top1": [m["test/top1_err"] for m in metrics],
                "train_loss": [m["train/loss"] for m in metrics],
                "versions": run.results["versions"],
                "hardware": run.results["hardware"],
                "git": run.results["git"],
            }
        )
    for runs in by_act.values():
        runs.sort(key=lambda r: r["seed"])
    return by_act


def table(by_act: dict[str, list[dict]]) -> str:
    seeds = sorted({r["seed"] for runs in by_act.values() for r in runs})
    head = ["activation", "params", *(f"seed {s}" for s in seeds), "top-1 err % mean ± std", "top-5 err %", "min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for act in [a for a in ORDER if a in by_act]:
        runs = by_act[act]
        per_seed = {r["seed"]: f"{r['top1']:.2f}" for r in runs}
        lines.append(
            "| "
            + " | ".join(
                [
                    LABELS[act],
                    f"{runs[0]['params']:,}",
                    *(per_seed.get(s, "—") for s in seeds),
                    f"**{_mean_std([r['top1'] for r in runs])}**",
                    _mean_std([r["top5"] for r in runs]),
                    f"{statistics.mean(r['wall_s'] for r in runs) / 60:.1f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def plot(by_act: dict[str, list[dict]], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for act in [a for a in ORDER if a in by_act]:
        for ax, key in zip(axes, ("test_top1", "train_loss"), strict=True):
            curves = [r[key] for r in by_act[act]]
            epochs = range(1, min(map(len, curves)) + 1)
            columns = [[c[e - 1] for c in curves] for e in epochs]
            ax.plot(epochs, [statistics.mean(c) for c in columns], "o-", label=f"{LABELS[act]} (n={len(curves)})")
            ax.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns], alpha=0.2)
    axes[0].set(xlabel="epoch", ylabel="test top-1 error (%)", title="test error (mean; band: min..max over seeds)")
    axes[1].set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss")
    axes[0].legend()
    save_figure(plt, fig, path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    by_act = collect(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(by_act)
    (args.out / "table.md").write_text(text + "\n")
    plotted = plot(by_act, args.out / "curves.png")
    first = next(iter(by_act.values()))[0]
    summary = {
        "runs": {
            act: [{k: v for k, v in r.items() if k not in ("versions", "hardware", "git")} for r in runs]
            for act, runs in by_act.items()
        },
        "versions": first["versions"],
        "hardware": first["hardware"],
        "git": first["git"],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)
    print(f"wrote {args.out / 'table.md'}" + (f", {args.out / 'curves.png'}" if plotted else ""))


if __name__ == "__main__":
    main()
