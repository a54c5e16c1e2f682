"""Writing the filled tables: tables.md (every table, the other runs, a legend, the notes), one CSV per table in
the same layout (per column: value, ±, n, failed, missing, paper, paper ±) and runs.csv (every run directory
found, its status and group). A cell with no completed run shows "—", never 0; failed and missing runs are
counted in the cell, e.g. "— (2 failed, 1 missing)" or "9.31 ± 0.12 (n=3; 1 failed)".

Under each table with runs (comparison.py): each row's difference to the table's baseline row, "row - baseline
[95% Welch interval] (n=row,baseline)"; Table 1's train/test gaps per row; and the paper's claims about the
table's rows with their verdicts. Each table's CSV gains, after "notes", per error column "<column> Δ",
"<column> Δ low" and "<column> Δ high" (row - baseline and its interval) and per gap its value, ±, n, paper and
Δ columns; claims.csv lists every claim checked, in every table, with its numbers and verdict.

With a width scale (miniature.py) every table is filled by runs at that fraction of its rows' widths, and its
title and notes say so."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rectnet.results import miniature
from rectnet.results.comparison import (
    CLOSE_DELTA,
    LEVEL,
    ClaimResult,
    Difference,
    TableComparison,
    compare_table,
    paper_value,
)
from rectnet.results.papers import paper_tables
from rectnet.results.runs import Run, count_statuses
from rectnet.results.statistics import DASH
from rectnet.results.table import (
    OTHER_RUNS_MEASURES,
    PaperTable,
    Reported,
    TableRow,
    fill_table,
    group_runs,
    other_runs,
)


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


def _markdown_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _difference_text(difference: Difference | None) -> str:
    return DASH if difference is None else difference.text()


def _paper_number(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _inits(init: str | None, other: str | None) -> str:
    """A row's init, and the other row's where it differs (a row compared with runs of another init)."""
    if init is None:
        return DASH
    return init if other in (None, init) else f"{init} (vs {other})"


def markdown_comparison(lines: Sequence[TableRow], comparison: TableComparison) -> str:
    """The differences to the baseline row, the train/test gaps and the claims under a table ("" if no runs)."""
    if all(line.init is None for line in lines):
        return ""
    out = []
    titles = comparison.columns + list(comparison.gaps)
    pairs = zip(lines, comparison.differences, comparison.references, strict=True)
    compared = [(line, d, ref) for line, d, ref in pairs if any(v is not None for v in d.values())]
    if compared:
        out.append(
            f"Difference to {comparison.baseline} (row - {comparison.baseline}, points of error; "
            f"[{LEVEL:.0%} Welch interval] where both rows have n >= 2; (n=row,{comparison.baseline})):\n"
        )
        rows = [
            [
                line.label,
                f"`{line.variant.label()}`",
                _inits(line.init, ref),
                *(_difference_text(d.get(t)) for t in titles),
            ]
            for line, d, ref in compared
        ]
        out += [*_markdown_rows(["Model", "variant", "init", *titles], rows), ""]
    measured = [line for line in lines if line.init is not None and any(c.n for c in line.gaps.values())]
    if measured:
        out.append("Train/test gap (per run: final test error - last epoch's running training error):\n")
        header = ["Model", "variant", "init"]
        for g in comparison.gaps:
            header += [g, "paper"]
        rows = []
        for line in measured:
            row = [line.label, f"`{line.variant.label()}`", line.init]
            for g in comparison.gaps:
                row += [line.gaps[g].text(), _paper_number(paper_value(line, g, comparison.gaps))]
            rows.append(row)
        out += [*_markdown_rows(header, rows), ""]
    if comparison.claims:
        out.append(f"Claims ({LEVEL:.0%} Welch interval of A - B, points of error):\n")
        rows = [
            [
                r.claim.text(),
                r.claim.source,
                r.column,
                _inits(r.init, r.init_b),
                _difference_text(r.difference),
                r.verdict,
                f"{_paper_number(r.paper_a)} vs {_paper_number(r.paper_b)}",
            ]
            for r in comparison.claims
        ]
        header = ["claim (A vs B)", "source", "column", "init", "A - B", "verdict", "paper A vs B"]
        out += [*_markdown_rows(header, rows), ""]
    return "\n".join(out).rstrip("\n")


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _csv_difference(difference: Difference | None) -> list[str]:
    if difference is None:
        return ["", "", ""]
    return [_csv_number(difference.diff), _csv_number(difference.low), _csv_number(difference.high)]


def write_csv(
    path: Path,
    titles: Sequence[str],
    lines: Sequence[TableRow],
    comparison: TableComparison | None = None,
) -> None:
    """The table in its Markdown layout, one CSV column per quantity; empty = not measured / not reported. With a
    comparison, its columns follow "notes" (module docstring)."""
    header = ["model", "variant", "init", "runs_ok", "runs_failed", "runs_missing"]
    for t in titles:
        header += [t, f"{t} ±", f"{t} n", f"{t} failed", f"{t} missing", f"{t} paper", f"{t} paper ±"]
    header.append("notes")
    if comparison is not None:
        for t in comparison.columns:
            header += [f"{t} Δ", f"{t} Δ low", f"{t} Δ high"]
        for g in comparison.gaps:
            header += [g, f"{g} ±", f"{g} n", f"{g} paper", f"{g} Δ", f"{g} Δ low", f"{g} Δ high"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, line in enumerate(lines):
            row = [line.label, line.variant.label(), line.init or "", *line.counts]
            for t in titles:
                cell, paper = line.cells[t], line.paper.get(t, (None, None))
                row += [_csv_number(cell.mean), _csv_number(cell.spread), cell.n, cell.failed, cell.missing]
                row += [_csv_number(paper[0]), _csv_number(paper[1])]
            row.append("; ".join(line.notes))
            if comparison is not None:
                differences = comparison.differences[i]
                for t in comparison.columns:
                    row += _csv_difference(differences.get(t))
                for g in comparison.gaps:
                    cell, paper_gap = line.gaps[g], paper_value(line, g, comparison.gaps)
                    row += [_csv_number(cell.mean), _csv_number(cell.spread), cell.n, _csv_number(paper_gap)]
                    row += _csv_difference(differences.get(g))
            writer.writerow(row)


def write_claims(path: Path, checked: Sequence[tuple[PaperTable, ClaimResult]]) -> None:
    """Every claim checked, one line per (claim, column, init): its numbers and verdict."""
    header = ["table", "claim", "a", "relation", "b", "quantity", "delta", "source", "column", "init", "init_b"]
    header += ["n_a", "n_b", "a_minus_b", "low", "high", "df", "level", "verdict", "paper_a", "paper_b"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for table, r in checked:
            c, d = r.claim, r.difference
            delta = _csv_number(c.delta) if c.relation == "≈" else ""
            row = [table.key, c.text(), c.a, c.relation, c.b, c.quantity, delta, c.source, r.column]
            row += [r.init or "", r.init_b or ""]
            if d is None:
                row += ["", "", "", "", "", "", ""]
            else:
                row += [d.n_a, d.n_b, _csv_number(d.diff), _csv_number(d.low), _csv_number(d.high)]
                row += [_csv_number(d.df), _csv_number(d.level)]
            row += [r.verdict, _csv_number(r.paper_a), _csv_number(r.paper_b)]
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


LEGEND = f"""\
Measured cells: mean ± sample std over seeds (n = runs), except Average: mean ± standard error over the fold
nets, as the CReLU paper reports it, and Vote: one value per complete 10-fold set (± std over sets when there
are several). "—" = no completed run; "(k failed, m missing)" counts seeds (and folds) that no completed
run fills; the "runs" column counts the row's run directories as they are.
Single = final test error of the retraining runs of the paper's protocol (scripts/reproduce/single.sh), or where a
row has none, of runs trained without folds for their configured schedule (see `python -m rectnet.tables --help`).
Single train = last epoch's running training error (augmentation and dropout on). ImageNet columns come from
eval_center.json / eval_ten_view.json / eval_dense.json. Paper values: as printed in the papers'
tables (rectnet/results/papers/, one module per paper).
‡ = some of the cell's values come from runs that did not run their recipe's full schedule and data (steps
per epoch capped, a subset of the training or test images, or the epoch count set on the command line): a
smoke or miniature run, not comparable with the paper's value. The notes under the table name the runs'
settings.
Under a table with runs: each row's difference to the table's baseline row, "row - baseline [low, high]
(n=row,baseline)", with the {LEVEL:.0%} confidence interval by Welch's t (unequal variances, Welch-Satterthwaite
degrees of freedom) where both rows have n >= 2; Table 1's train/test gap per row (per run: final test error -
last epoch's running training error); and the paper's claims about the table's rows (rectnet/results/papers/),
each checked in the columns where the paper's printed values make it (a claim carried from another paper, He et
al. 2015's PReLU < ReLU beside Table 1, in every column). A claim "A < B" is reproduced when the
whole interval of A - B is below 0, opposite when it is wholly above 0, else not established at those n; a
claim "A ≈ B" is reproduced when the whole interval lies within ±δ (δ = {CLOSE_DELTA:g} points unless the claim says
otherwise), opposite when it lies wholly outside; n = 1 in either row gives no interval and "not established
(n=1)". The intervals are per cell, not corrected for the number of cells and claims checked. claims.csv
lists every claim checked, with its numbers."""


@dataclass
class FilledTable:
    """A paper table filled from runs: its lines, their comparison, and the title and notes it is printed with."""

    table: PaperTable  # as filled (a miniature's rows at the scaled widths)
    lines: list[TableRow]
    comparison: TableComparison
    title: str
    notes: tuple[str, ...]

    def measured(self) -> bool:
        return any(line.init is not None for line in self.lines)


def fill_all(runs: Sequence[Run], width_scale: float | None = None) -> tuple[list[FilledTable], list[TableRow]]:
    """Every paper table filled from `runs` (at `width_scale` times its rows' widths when given), and the lines
    of "Other runs": the groups that no table used."""
    groups, used = group_runs(runs), set()
    filled = []
    for paper in paper_tables():
        table = paper if width_scale is None else miniature.scale_table(paper, width_scale)
        lines = fill_table(table, groups, used)
        title, notes = paper.title, paper.notes
        if width_scale is not None:  # the title says so always; the note where runs fill the table
            table_runs = [run for line in lines for run in line.runs]
            title = f"{title}, {miniature.heading(width_scale, table_runs)}"
            notes = (miniature.note(paper, width_scale, table_runs), *notes) if table_runs else notes
        filled.append(FilledTable(table, lines, compare_table(table, lines), title, notes))
    return filled, other_runs(groups, used)


def table_section(filled: FilledTable) -> str:
    """A table's part of tables.md: its title, its own notes (what a miniature is, a row the paper lacks), the
    table with its rows' notes, and the differences, gaps and claims where it has runs."""
    titles = [c.title for c in filled.table.columns]
    parts = [
        f"## {filled.title}\n",
        *(f"{note}\n" for note in filled.notes),
        f"{markdown_table(titles, filled.lines)}\n",
    ]
    compared = markdown_comparison(filled.lines, filled.comparison)
    if compared:
        parts.append(f"{compared}\n")
    return "\n".join(parts)


def other_runs_section(extra: Sequence[TableRow]) -> str:
    body = markdown_table(list(OTHER_RUNS_MEASURES), extra, with_paper=False) if extra else "None."
    return f"## Other runs (no paper cell), final test error (%)\n\n{body}\n"


def write_all(runs: Sequence[Run], out: Path, width_scale: float | None = None) -> list[Path]:
    """Fill every table from `runs` (a miniature at `width_scale`: miniature.py), write tables.md, one CSV per
    table, other_runs.csv, claims.csv and runs.csv; returns the paths, tables.md first."""
    out.mkdir(parents=True, exist_ok=True)
    filled, extra = fill_all(runs, width_scale)
    sections, written = [f"# Result tables\n\n{len(runs)} run directories: {runs_text(count_statuses(runs))}.\n"], []
    checked: list[tuple[PaperTable, ClaimResult]] = []
    for table in filled:
        sections.append(table_section(table))
        checked += [(table.table, result) for result in table.comparison.claims]
        written.append(out / f"{table.table.key}.csv")
        write_csv(written[-1], [c.title for c in table.table.columns], table.lines, table.comparison)
    sections.append(other_runs_section(extra))
    written.append(out / "other_runs.csv")
    write_csv(written[-1], list(OTHER_RUNS_MEASURES), extra)
    unattributed = [r for r in runs if r.config is None]
    if unattributed:
        sections.append(
            f"{len(unattributed)} run directories have no readable config and are in no table (runs.csv).\n"
        )
    sections.append(f"## Legend\n\n{LEGEND}\n")
    written.append(out / "claims.csv")
    write_claims(written[-1], checked)
    written.append(out / "runs.csv")
    write_inventory(written[-1], runs)
    (out / "tables.md").write_text("\n".join(sections))
    return [out / "tables.md", *written]
