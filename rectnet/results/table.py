"""A paper's table as data (named columns, rows of printed values keyed by column, the row the others are
compared with, the paper's claims about its rows, train/test gaps) and its filling from runs.

Runs are grouped by (variant, init, dataset); the init is "name/mode" (kaiming/fan_in, ...). Seeds are the
repeats of a group; runs of one group whose recipe differs (epochs, lr, batch, schedule, ...) are still merged
but flagged in the row's notes. Groups that no paper cell reads are listed as "Other runs".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rectnet.results.comparison import RELATIONS, Claim
from rectnet.results.runs import Run, count_statuses
from rectnet.results.statistics import (
    SHORT_MARK,
    Cell,
    final_test_err,
    final_test_top5,
    fold_average,
    fold_vote,
    per_run,
)
from rectnet.results.variants import Variant


class Reported(NamedTuple):
    """A value as the paper prints it: "10.20±0.09" is Reported(10.20, 0.09)."""

    value: float
    pm: float | None = None


def pm(value: float, error: float) -> Reported:
    """A value printed with "±" (the CReLU paper's Average: ± standard error)."""
    return Reported(value, error)


@dataclass(frozen=True)
class Column:
    key: str  # the keyword a paper row gives this column's printed value under
    title: str  # the header in tables.md and the CSVs
    dataset: str  # dataset.name of the runs that fill it
    measure: Callable[[Sequence[Run]], Cell]
    compare: bool = True  # an error that rows are compared on (comparison.py); False: train error, params


@dataclass(frozen=True)
class Gap:
    """A train/test gap beside a table (not one of its printed columns): per run, test - train error."""

    title: str
    train: str  # title of the train-error column
    test: str  # title of the test-error column
    dataset: str
    measure: Callable[[Sequence[Run]], Cell]


@dataclass(frozen=True)
class PaperRow:
    label: str
    variant: Variant
    paper: dict[str, Reported]  # column title -> the printed value; a column the paper leaves blank is absent
    init: str | None = None  # "kaiming" / "xavier" when the paper's row fixes the init; None: any


@dataclass(frozen=True)
class PaperTable:
    key: str  # file stem
    title: str
    columns: tuple[Column, ...]
    rows: tuple[PaperRow, ...]
    baseline: str | None = None  # label of the row the others are compared with
    claims: tuple[Claim, ...] = ()  # the paper's claims about its rows (comparison.py)
    gaps: tuple[Gap, ...] = ()
    notes: tuple[str, ...] = ()  # printed between its title and the table, e.g. why a row the paper lacks is there


@dataclass(frozen=True)
class Row:
    """A paper row as written in rectnet/results/papers/: printed values keyed by Column.key."""

    label: str
    variant: Variant
    values: dict[str, float | Reported]
    init: str | None = None


def row(label: str, variant: Variant, init: str | None = None, **values: float | Reported) -> Row:
    return Row(label, variant, values, init)


def paper_table(
    key: str,
    title: str,
    columns: Sequence[Column],
    rows: Iterable[Row],
    baseline: str | None = None,
    claims: Sequence[Claim] = (),
    gaps: Sequence[Gap] = (),
    notes: Sequence[str] = (),
) -> PaperTable:
    """The table with each row's values keyed by column title; a key that names no column, a baseline or claim
    that names no row, and a gap that names no column are errors."""
    titles = {c.key: c.title for c in columns}
    paper_rows = []
    for r in rows:
        unknown = set(r.values) - set(titles)
        if unknown:
            raise ValueError(f"{key}, row {r.label!r}: no column {sorted(unknown)}; columns: {list(titles)}")
        values = {titles[k]: v if isinstance(v, Reported) else Reported(float(v)) for k, v in r.values.items()}
        paper_rows.append(PaperRow(r.label, r.variant, values, r.init))
    labels = [r.label for r in paper_rows]
    named = [baseline] if baseline is not None else []
    named += [label for claim in claims for label in (claim.a, claim.b)]
    unknown_rows = sorted(set(named) - set(labels))
    if unknown_rows:
        raise ValueError(f"{key}: no row {unknown_rows}; rows: {labels}")
    for claim in claims:
        if claim.relation not in RELATIONS or claim.quantity not in ("test", "gap"):
            raise ValueError(f"{key}: claim {claim}: relation one of {RELATIONS}, quantity test or gap")
    for gap in gaps:
        if not {gap.train, gap.test} <= set(titles.values()):
            raise ValueError(f"{key}, gap {gap.title!r}: no column {gap.train!r} or {gap.test!r}")
    return PaperTable(key, title, tuple(columns), tuple(paper_rows), baseline, tuple(claims), tuple(gaps), tuple(notes))


# ---------------------------------------------------------------------------------------------------------
# Filling the tables


GroupKey = tuple[Variant, str, str]  # (variant, init, dataset)


def group_runs(runs: Iterable[Run]) -> dict[GroupKey, list[Run]]:
    """Runs with a readable config by (variant, init, dataset)."""
    groups: dict[GroupKey, list[Run]] = {}
    for run in runs:
        if run.config is not None:
            groups.setdefault((run.variant, run.init, run.dataset), []).append(run)
    return groups


@dataclass
class TableRow:
    label: str
    variant: Variant
    init: str | None  # None: no run of this row
    cells: dict[str, Cell]
    paper: dict[str, Reported]
    counts: tuple[int, int, int]  # completed, failed, missing runs over the row's columns
    notes: list[str]
    gaps: dict[str, Cell] = field(default_factory=dict)  # the table's train/test gaps (Gap), by title
    runs: list[Run] = field(default_factory=list)  # the run directories behind the line


def _init_matches(row: PaperRow, init: str) -> bool:
    return row.init is None or init.split("/")[0] == row.init


def _recipe(run: Run) -> tuple:
    """What must agree between the seeds of one group for their mean to mean something."""
    c = run.config
    return (
        ("epochs", c.get("trainer", {}).get("epochs")),
        ("batch", (run.results or {}).get("hparams", {}).get("global_batch") or c.get("trainer", {}).get("batch_size")),
        ("lr", c.get("optim", {}).get("lr")),
        ("weight_decay", c.get("optim", {}).get("weight_decay")),
        ("schedule", json.dumps(c.get("schedule"), sort_keys=True)),
        ("dropout", c.get("model", {}).get("dropout")),
        ("num_train", c.get("dataset", {}).get("num_train")),
        ("crop_padding", c.get("dataset", {}).get("crop_padding")),
    )


def _mixed_recipe_note(runs: Sequence[Run]) -> str | None:
    """A note when the completed runs of a group (those that give numbers) differ in their recipe."""
    recipes = {_recipe(r) for r in runs if r.status == "completed"}
    if len(recipes) < 2:
        return None
    differ = [k for i, (k, _) in enumerate(next(iter(recipes))) if len({r[i][1] for r in recipes}) > 1]
    return f"mixed recipes ({', '.join(differ)} differ between runs)"


def _shortened_note(runs: Sequence[Run]) -> str | None:
    """A note naming how the row's completed runs that ran less than their recipe were shortened, and the lr
    schedule they ran where it was set on the command line (a schedule compressed to the shorter run)."""
    short = [r for r in runs if r.status == "completed" and r.shortened()]
    if not short:
        return None
    how = ", ".join(sorted({reason for r in short for reason in r.shortened()}))
    schedules = sorted({override for r in short for override in r.schedule_overrides()})
    if schedules:
        how += f"; lr schedule as run: {', '.join(schedules)}"
    completed = sum(r.status == "completed" for r in runs)
    less = "ran less than their recipe's schedule or data"
    return f"{len(short)} of {completed} completed runs {less} ({how}) {SHORT_MARK}"


def fill_table(table: PaperTable, groups: dict[GroupKey, list[Run]], used: set[GroupKey]) -> list[TableRow]:
    """One line per (paper row, init seen in the runs); a paper row without runs gets one line of dashes."""
    datasets = {c.dataset for c in table.columns}
    lines = []
    for row in table.rows:
        inits = sorted({init for (v, init, ds) in groups if v == row.variant and ds in datasets})
        inits = [i for i in inits if _init_matches(row, i)]
        for init in inits or [None]:
            keys = [(row.variant, init, ds) for ds in sorted(datasets) if (row.variant, init, ds) in groups]
            used.update(keys)
            cells = {c.title: c.measure(groups.get((row.variant, init, c.dataset), [])) for c in table.columns}
            gaps = {g.title: g.measure(groups.get((row.variant, init, g.dataset), [])) for g in table.gaps}
            runs = [r for k in keys for r in groups[k]]
            notes = [n for k in keys if (n := _mixed_recipe_note(groups[k]))]
            notes += [n for n in [_shortened_note(runs)] if n]
            notes += [f"{title}: {n}" for title, cell in cells.items() for n in cell.notes]
            counts = count_statuses(runs)
            lines.append(TableRow(row.label, row.variant, init, cells, row.paper, counts, notes, gaps, runs))
    return lines


# "Other runs": final test errors of runs without folds, Average and Vote of fold runs
OTHER_RUNS_MEASURES: dict[str, Callable[[Sequence[Run]], Cell]] = {
    "top-1": lambda runs: per_run([r for r in runs if not r.num_folds], final_test_err),
    "top-5": lambda runs: per_run([r for r in runs if not r.num_folds], final_test_top5),
    "Average top-1": fold_average,
    "Vote top-1": fold_vote,
}


def other_runs(groups: dict[GroupKey, list[Run]], used: set[GroupKey]) -> list[TableRow]:
    """Groups that no paper cell read: final test errors, and Average/Vote when they are fold runs."""
    lines = []
    for key in sorted(set(groups) - used, key=lambda k: (k[2], k[0].label(), k[1])):
        variant, init, dataset = key
        runs = groups[key]
        cells = {title: measure(runs) for title, measure in OTHER_RUNS_MEASURES.items()}
        notes = [n for n in [_mixed_recipe_note(runs), _shortened_note(runs)] if n]
        notes += [f"{title}: {n}" for title, cell in cells.items() for n in cell.notes]
        lines.append(TableRow(dataset, variant, init, cells, {}, count_statuses(runs), notes, runs=runs))
    return lines
