"""Writing the filled tables: tables.md (every table, the other runs, a legend, the notes), one CSV per table in
the same layout (per column: value, ±, n, failed, missing, paper, paper ±) and runs.csv (every run directory
found, its status and group). A cell with no completed run shows "—", never 0; failed and missing runs are
counted in the cell, e.g. "— (2 failed, 1 missing)" or "9.31 ± 0.12 (n=3; 1 failed)"."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from rectnet.results.papers import paper_tables
from rectnet.results.runs import Run, count_statuses
from rectnet.results.statistics import DASH
from rectnet.results.table import OTHER_RUNS_MEASURES, Reported, TableRow, fill_table, group_runs, other_runs


def _paper_text(value: Reported | None) -> str:
    if value is None:
        return DASH
    mean, pm = value
    return f"{mean:.2f}" if pm is None else f"{mean:.2f} ± {pm:.2f}"


def runs_text(counts: tuple[int, int, int]) -> str:
    done, failed, missing = counts
    return ", ".join(
        [f"{done} ok", *([f"{failed} failed"] if failed else []), *([f"{missing} missing"] if missing else [])]
    )


def markdown_table(titles: Sequence[str], lines: Sequence[TableRow], with_paper: bool = True) -> str:
    header = ["Model" if with_paper else "dataset", "variant", "init", "runs"]
    for title in titles:
        header += [title, "paper"] if with_paper else [title]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        cells = [line.label, f"`{line.variant.label()}`", line.init or DASH, runs_text(line.counts)]
        for title in titles:
            cells.append(line.cells[title].text())
            if with_paper:
                cells.append(_paper_text(line.paper.get(title)))
        out.append("| " + " | ".join(cells) + " |")
    notes = [f"- {line.label}, `{line.variant.label()}`, {line.init}: {note}" for line in lines for note in line.notes]
    return "\n".join(out + ([""] + notes if notes else []))


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def write_csv(path: Path, titles: Sequence[str], lines: Sequence[TableRow]) -> None:
    """The table in its Markdown layout, one CSV column per quantity; empty = not measured / not reported."""
    header = ["model", "variant", "init", "runs_ok", "runs_failed", "runs_missing"]
    for t in titles:
        header += [t, f"{t} ±", f"{t} n", f"{t} failed", f"{t} missing", f"{t} paper", f"{t} paper ±"]
    header.append("notes")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for line in lines:
            row = [line.label, line.variant.label(), line.init or "", *line.counts]
            for t in titles:
                cell, paper = line.cells[t], line.paper.get(t, (None, None))
                row += [_csv_number(cell.mean), _csv_number(cell.spread), cell.n, cell.failed, cell.missing]
                row += [_csv_number(paper[0]), _csv_number(paper[1])]
            row.append("; ".join(line.notes))
            writer.writerow(row)


def write_inventory(path: Path, runs: Sequence[Run]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "status", "model_variant", "init", "dataset", "seed", "num_folds", "fold", "error"])
        for run in runs:
            variant = run.variant.label() if run.config else ""
            folds = (run.num_folds, run.fold) if run.num_folds else ("", "")
            writer.writerow(
                [run.path, run.status, variant, run.init or "", run.dataset or "", run.seed, *folds, run.failure()]
            )


LEGEND = """\
Measured cells: mean ± sample std over seeds (n = runs), except Average: mean ± standard error over the fold
nets, as the CReLU paper reports it, and Vote: one value per complete 10-fold set (± std over sets when there
are several). "—" = no completed run; "(k failed, m missing)" counts seeds (and folds) that no completed
run fills; the "runs" column counts the row's run directories as they are.
Single = final test error of the retraining runs of the paper's protocol (scripts/single.sh), or where a
row has none, of runs trained without folds for their configured schedule (see `python -m rectnet.tables --help`).
Single train = last epoch's running training error (augmentation and dropout on). ImageNet columns come from
eval_center.json / eval_ten_view.json / eval_dense.json. Paper values: as printed in the papers'
tables (rectnet/results/papers/, one module per paper).
‡ = some of the cell's values come from runs that did not run their recipe's full schedule and data (steps
per epoch capped, a subset of the training or test images, or the epoch count set on the command line): a
smoke or miniature run, not comparable with the paper's value. The notes under the table name the runs'
settings."""


def write_all(runs: Sequence[Run], out: Path) -> list[Path]:
    """Fill every table from `runs`, write tables.md, one CSV per table and runs.csv; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    groups, used = group_runs(runs), set()
    sections, written = [f"# Result tables\n\n{len(runs)} run directories: {runs_text(count_statuses(runs))}.\n"], []
    for table in paper_tables():
        lines = fill_table(table, groups, used)
        titles = [c.title for c in table.columns]
        sections.append(f"## {table.title}\n\n{markdown_table(titles, lines)}\n")
        written.append(out / f"{table.key}.csv")
        write_csv(written[-1], titles, lines)
    extra = other_runs(groups, used)
    extra_titles = list(OTHER_RUNS_MEASURES)
    body = markdown_table(extra_titles, extra, with_paper=False) if extra else "None."
    sections.append(f"## Other runs (no paper cell), final test error (%)\n\n{body}\n")
    written.append(out / "other_runs.csv")
    write_csv(written[-1], extra_titles, extra)
    unattributed = [r for r in runs if r.config is None]
    if unattributed:
        sections.append(
            f"{len(unattributed)} run directories have no readable config and are in no table (runs.csv).\n"
        )
    sections.append(f"## Legend\n\n{LEGEND}\n")
    written.append(out / "runs.csv")
    write_inventory(written[-1], runs)
    (out / "tables.md").write_text("\n".join(sections))
    return [out / "tables.md", *written]
