"""The papers' result tables from run directories: measured mean ± spread (n) next to the paper's value.

    python -m rectnet.tables <sweep or run dir>... [--out DIR]        (default --out: ./tables)

Every folder under the given paths that holds `results.json`, `FAILED` or `.hydra/` is a run directory
(the search does not descend into a run directory). A run is

* completed: `results.json` with status "completed" and no `FAILED` file;
* failed: a `FAILED` file (train.py writes it when a run stops on an error);
* missing: neither (interrupted, still running, or never finished).

Runs are grouped by (model, variant, init, dataset); the variant is activation (+ its slope for PReLU /
leaky ReLU), `act_at`, `halve_at`, `width` and `base_act`, read from the resolved config (results.json's
"config", else `.hydra/config.yaml` for runs that never finished). Equivalent placements are merged:
`act_at` listing every layer that takes the studied activation equals `act_at=null`, and halving a classifier
layer (whose filters `spec.build` never scales) is dropped, so `experiment=allcnn_b_crelu_all` (halve_at
1..12) and halve_at 1..11 are one variant. The init is "name/mode" (kaiming/fan_in, ...). Seeds are the
repeats of a group; runs of one group whose recipe differs (epochs, lr, batch, schedule, ...) are still
merged but flagged in the row's notes.

Tables written (paper values from /work/shared/docs/papers.md, which cites each table's page):

* Shang et al. 2016 (CReLU) Table 1 (ConvPool-CNN-C, CIFAR-10/100: Single train/test, Average, Vote,
  params), Table 2 (VGG on CIFAR: Single, Average, Vote), Table 4 (All-CNN-B on ImageNet: top-1/top-5 centre
  crop and 10 patches; params from Table 5).
* He et al. 2015 (PReLU) Table 2 (14-layer model, 10-view; plus the §2.2 "ReLU, Xavier init" row, A9),
  Table 4 (model A, ReLU vs PReLU, dense test per scale), Table 5 (models A/B/C, 10-view) and Table 6
  (models A/B/C, dense multi-scale).
* "Other runs": every group that no paper cell used (e.g. synthetic-data runs), with its final test errors.

How each measured number is made:

* Single (CReLU Tables 1-2): the final test top-1 error (results.json "final"), mean ± sample std over
  seeds, of the retraining runs of the paper's protocol (Goodfellow et al. 2013, `scripts/single.sh`: stage 1
  trains on all folds but one and records the training loss at its best held-out error; stage 2 retrains
  from scratch on the whole training split until the held-out fold's loss reaches that value). Where a
  group has no such run, the runs trained without folds for their configured schedule stand in (an
  approximation of the stopping point). results.json's "best_top1_err" of a run without folds is selected
  on the test split, so it is never used. "Single train" is the last epoch's running training error from
  metrics.jsonl (measured during the epoch, with augmentation and dropout on), not a separate pass over the
  training set.
* Average: mean over the 10-fold runs (`dataset.num_folds>0`, any fold, any seed) of their final test
  top-1 error, ± standard error (sample std / sqrt(n)), as the paper reports it.
* Vote: for each complete fold set (one seed, folds 0..k-1 all completed with test_logits.pt) the test
  error of the mean of the k nets' softmax probabilities (argmax vs the labels, which must agree across
  the nets). One set gives one number; several seeds give mean ± std over sets. An incomplete set gives no
  Vote (a vote of fewer nets is another quantity); its absent folds count as missing.
  Both use the final model of each fold run (test_logits.pt is written at the end), not best.pt.
* ImageNet columns: `eval_center.json` (centre crop), `eval_ten_view.json` (10 views/patches) and
  `eval_dense.json` (dense multi-scale) written by the evaluation script, mean ± std over seeds. He et al.'s
  Table 4 splits dense results by test scale: `eval_dense_s<s>.json` (or an `eval_dense.json` with
  "scales": [s]) fills column s; an `eval_dense.json` with several scales or without the key fills
  "multi-scale" (and Table 6).
* params (M): results.json "params" / 1e6 (weights, biases and PReLU slopes), mean over the cell's runs.

A cell with no completed run shows "—", never 0; failed and missing runs are counted in the cell, e.g.
"— (2 failed, 1 missing)" or "9.31 ± 0.12 (n=3; 1 failed)". They are counted per slot, a seed (and fold
under k-fold) that no completed run fills: a failed run that was re-run successfully is not counted, and a
fold that has no run directory at all counts as missing. A completed run without the file a column needs
(eval_*.json, test_logits.pt, metrics.jsonl) counts as missing there. The "runs" column counts the row's
run directories as they are (completed / failed / missing). Files written to --out: tables.md (every
table, a legend and the notes), one CSV per table in the same layout (per column: value, ±, n, failed,
missing, paper, paper ±) and runs.csv (every run directory found, its status and group).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rectnet.models import MODELS
from rectnet.models.spec import CLASSES, Conv, Linear

IMAGENET = "imagenet"  # dataset.name of ImageNet runs
SLOPE_DEFAULTS = {"prelu": 0.25, "prelu_shared": 0.25, "leaky_relu": 0.01}  # activations whose slope matters
DASH = "—"


# ---------------------------------------------------------------------------------------------------------
# Run directories


@dataclass(frozen=True)
class Variant:
    """What the papers' table rows vary: activation and where it goes, filter widths."""

    model: str
    activation: str
    slope: float | None = None
    width: float = 1.0
    act_at: tuple[int, ...] | None = None  # None: every layer that takes the studied activation
    halve_at: tuple[int, ...] = ()
    base_act: str = "relu"

    def label(self) -> str:
        act = self.activation if self.slope is None else f"{self.activation}({self.slope:g})"
        parts = [self.model, act]
        if self.act_at is not None:
            parts.append(f"act_at={list(self.act_at)}")
        if self.halve_at:
            parts.append(f"halve_at={list(self.halve_at)}")
        if self.width != 1.0:
            parts.append(f"width={self.width:g}")
        if self.act_at is not None and self.base_act != "relu":
            parts.append(f"base={self.base_act}")
        return " ".join(parts)


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
        """1 or 2 for the two runs of the "Single" protocol (scripts/single.sh), 0 for any other run."""
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


def _read_json(path: Path) -> dict | None:
    """A JSON object from `path`; None when absent, unreadable or not an object (a half-written file)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_hydra_config(run_dir: Path) -> dict | None:
    """`.hydra/config.yaml` unresolved (its ${...} need Hydra's runtime); the keys read here are plain."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a half-written or foreign yaml: the run stays unattributed, the table goes on
        return None


def read_run(path: Path) -> Run:
    """Status, config and results of the run directory `path`."""
    results = _read_json(path / "results.json")
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


# ---------------------------------------------------------------------------------------------------------
# Variants: configs that build the same network are one variant


@cache
def _layer_roles(model: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(weight layers that take the studied activation, classifier layers), 1-based; None if unknown."""
    if model not in MODELS:
        return None
    weight = [s for s in MODELS.get(model)() if isinstance(s, (Conv, Linear))]
    main = tuple(i for i, s in enumerate(weight, 1) if s.act == "main")
    classifiers = tuple(i for i, s in enumerate(weight, 1) if s.out == CLASSES)
    return main, classifiers


def make_variant(
    model: str,
    activation: str,
    slope: float | None = None,
    width: float = 1.0,
    act_at: Sequence[int] | None = None,
    halve_at: Sequence[int] = (),
    base_act: str = "relu",
) -> Variant:
    """The canonical Variant: placements that build the same network compare equal (module docstring)."""
    slope = (slope if slope is not None else SLOPE_DEFAULTS[activation]) if activation in SLOPE_DEFAULTS else None
    roles = _layer_roles(model)
    placed = None if act_at is None else tuple(sorted(set(act_at)))
    halved = tuple(sorted(set(halve_at)))
    if roles is not None:
        main, classifiers = roles
        halved = tuple(i for i in halved if i not in classifiers)
        if placed is not None:
            placed = tuple(i for i in placed if i in main)
            if not placed:  # the activation is nowhere: the network is the base activation's
                activation, slope, placed = base_act, None, None
            elif placed == main:
                placed = None
    if activation == base_act:
        placed = None
    return Variant(model, activation, slope, float(width), placed, halved, base_act)


def _model_label(model: dict) -> str:
    """A rectnet net by its name; a timm net (model.source=timm) as timm:<name>[stem, timm arguments]."""
    if model.get("source", "rectnet") == "rectnet":
        return model["name"]
    extras = ["cifar_stem"] if model.get("cifar_stem") else []
    extras += [f"{k}={v}" for k, v in sorted((model.get("kwargs") or {}).items())]
    return f"timm:{model['name']}" + (f"[{', '.join(extras)}]" if extras else "")


def variant_from_config(config: dict) -> Variant:
    model, act = config["model"], config["activation"]
    return make_variant(
        _model_label(model),
        act["name"],
        act.get("slope"),
        model.get("width", 1.0),
        model.get("act_at"),
        model.get("halve_at") or (),
        model.get("base_act", "relu"),
    )


# ---------------------------------------------------------------------------------------------------------
# Cells: one measured number from the runs of one group


@dataclass
class Cell:
    """A measured value: mean ± spread over n, with the runs that should have contributed but did not."""

    mean: float | None = None
    spread: float | None = None  # sample std over seeds, or standard error (Average)
    n: int = 0
    failed: int = 0
    missing: int = 0
    notes: list[str] = field(default_factory=list)

    def text(self, digits: int = 2) -> str:
        lost = [f"{k} {what}" for k, what in ((self.failed, "failed"), (self.missing, "missing")) if k]
        if self.mean is None:
            return f"{DASH} ({', '.join(lost)})" if lost else DASH
        value = f"{self.mean:.{digits}f}"
        if self.spread is not None:
            value += f" ± {self.spread:.{digits}f}"
        return f"{value} (n={self.n}" + (f"; {', '.join(lost)})" if lost else ")")


def _summarise(values: Sequence[float], failed: int, missing: int, standard_error: bool = False) -> Cell:
    if not values:
        return Cell(failed=failed, missing=missing)
    spread = statistics.stdev(values) if len(values) > 1 else None
    if spread is not None and standard_error:
        spread /= math.sqrt(len(values))
    return Cell(statistics.fmean(values), spread, len(values), failed, missing)


def _slot(run: Run) -> tuple[int | None, int | None]:
    """What a run stands for in a cell: its seed, and its fold under k-fold cross-validation."""
    return run.seed, run.fold if run.num_folds else None


def _unfilled(slot_runs: Sequence[Run]) -> str:
    """Why a slot without a usable run is empty: "failed" if one of its runs failed, else "missing"."""
    return "failed" if any(r.status == "failed" for r in slot_runs) else "missing"


def _per_run(runs: Sequence[Run], read: Callable[[Run], float | None], standard_error: bool = False) -> Cell:
    """Mean ± spread of `read(run)` over completed runs.

    Failed and missing runs are counted per (seed, fold) slot that no completed run fills, so a failed run
    that was re-run successfully is not reported; a completed run where `read` gives None counts as missing.
    """
    slots: dict[tuple[int | None, int | None], list[Run]] = {}
    for run in runs:
        slots.setdefault(_slot(run), []).append(run)
    values, lost = [], {"failed": 0, "missing": 0}
    for slot_runs in slots.values():
        completed = [r for r in slot_runs if r.status == "completed"]
        if not completed:
            lost[_unfilled(slot_runs)] += 1
        for run in completed:
            value = read(run)
            if value is None:
                lost["missing"] += 1
            else:
                values.append(value)
    return _summarise(values, lost["failed"], lost["missing"], standard_error)


def _final_test_err(run: Run) -> float | None:
    return run.results.get("final", {}).get("top1_err")


def _final_test_top5(run: Run) -> float | None:
    return run.results.get("final", {}).get("top5_err")


def _last_train_err(run: Run) -> float | None:
    records = read_metrics(run.path)
    return records[-1].get("train/top1_err") if records else None


def _single_runs(runs: Sequence[Run]) -> list[Run]:
    """The retrained runs of the "Single" protocol when there are any, else the runs without folds."""
    return [r for r in runs if r.single_stage == 2] or [r for r in runs if not r.num_folds]


def single_test(runs: Sequence[Run]) -> Cell:
    """CReLU Tables 1-2 "Single" (test): final test top-1 error of the Single runs (see top)."""
    return _per_run(_single_runs(runs), _final_test_err)


def single_train(runs: Sequence[Run]) -> Cell:
    """CReLU Table 1 "Single" train error: the last epoch's running training top-1 error."""
    return _per_run(_single_runs(runs), _last_train_err)


def _fold_sets(runs: Sequence[Run]) -> dict[tuple[int | None, int], list[Run]]:
    """Fold runs by (seed, num_folds): each key is one k-fold cross-validation."""
    sets: dict[tuple[int | None, int], list[Run]] = {}
    for run in runs:
        if run.num_folds and not run.single_stage:  # the Single protocol's runs are not a cross-validation
            sets.setdefault((run.seed, run.num_folds), []).append(run)
    return sets


def _absent_folds(fold_runs: Sequence[Run], num_folds: int) -> int:
    return num_folds - len({r.fold for r in fold_runs})


def fold_average(runs: Sequence[Run]) -> Cell:
    """CReLU "Average": mean final test error of the fold nets ± standard error."""
    sets = _fold_sets(runs)
    cell = _per_run([r for s in sets.values() for r in s], _final_test_err, standard_error=True)
    cell.missing += sum(_absent_folds(s, k) for (_, k), s in sets.items())
    return cell


def vote_error(logit_files: Sequence[Path]) -> float:
    """Test top-1 error (%) of the mean softmax of several nets (CReLU "Vote": the 10 fold nets' model average)."""
    probs, labels = None, None
    for path in logit_files:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        p = torch.softmax(saved["logits"].double(), dim=1)
        if labels is None:
            probs, labels = p, saved["labels"]
        elif not torch.equal(labels, saved["labels"]):
            raise ValueError(f"{path}: test labels differ from {logit_files[0]}; the nets saw different test sets")
        else:
            probs = probs + p
    wrong = (probs.argmax(dim=1) != labels).double().mean().item()
    return 100.0 * wrong


def _has_logits(run: Run) -> bool:
    return run.status == "completed" and (run.path / "test_logits.pt").is_file()


def _vote_of_set(fold_runs: Sequence[Run], num_folds: int) -> tuple[float | None, dict[str, int]]:
    """The Vote error of one fold set; None and the failed/missing fold counts when a fold has no usable run."""
    by_fold: dict[int, list[Run]] = {}
    for run in sorted(fold_runs, key=lambda r: r.path):  # a fold run twice (a rerun elsewhere): the first path
        by_fold.setdefault(run.fold, []).append(run)
    usable = {f: next((r for r in runs if _has_logits(r)), None) for f, runs in by_fold.items()}
    lost = {"failed": 0, "missing": num_folds - len(by_fold)}
    for fold, run in usable.items():
        if run is None:  # a completed run without test_logits.pt is missing that file
            lost["missing" if any(r.status == "completed" for r in by_fold[fold]) else _unfilled(by_fold[fold])] += 1
    if lost["failed"] or lost["missing"]:
        return None, lost
    return vote_error([usable[f].path / "test_logits.pt" for f in range(num_folds)]), lost


def fold_vote(runs: Sequence[Run]) -> Cell:
    """CReLU "Vote": per complete fold set the error of the averaged softmax; mean ± std over sets."""
    values, notes, failed, missing = [], [], 0, 0
    for (seed, k), fold_runs in _fold_sets(runs).items():
        vote, lost = _vote_of_set(fold_runs, k)
        if vote is None:
            notes.append(f"Vote of seed {seed} needs all {k} folds with test_logits.pt")
            failed, missing = failed + lost["failed"], missing + lost["missing"]
        else:
            values.append(vote)
    cell = _summarise(values, failed, missing)
    cell.notes = notes
    return cell


def eval_protocol(protocol: str, key: str, scales: str | None = None) -> Callable[[Sequence[Run]], Cell]:
    """A column from eval_<protocol>.json (ImageNet). `scales`: "multi" or one scale, for dense results."""

    def read(run: Run) -> float | None:
        per_scale = run.path / f"eval_{protocol}_s{scales}.json"  # eval.py's dense test at one scale
        saved = _read_json(per_scale if per_scale.is_file() else run.path / f"eval_{protocol}.json")
        if saved is None or key not in saved:
            return None
        if scales is not None and _scale_column(saved.get("scales")) != scales:
            return None
        return saved[key]

    def cell(runs: Sequence[Run]) -> Cell:
        return _per_run(runs, read)

    return cell


def _scale_column(scales: list[int] | None) -> str:
    """He et al. Table 4 column of a dense evaluation: "multi" unless exactly one scale is listed."""
    return str(scales[0]) if scales and len(scales) == 1 else "multi"


def params_m(runs: Sequence[Run]) -> Cell:
    """Parameters in millions (results.json "params"); no spread: the runs of a group share the network."""
    cell = _per_run(runs, lambda r: r.results["params"] / 1e6 if "params" in r.results else None)
    cell.spread = None
    return cell


# ---------------------------------------------------------------------------------------------------------
# The papers' tables


@dataclass(frozen=True)
class Column:
    title: str
    dataset: str
    measure: Callable[[Sequence[Run]], Cell]


@dataclass(frozen=True)
class PaperRow:
    label: str
    variant: Variant
    paper: dict[str, tuple[float, float | None]]  # column title -> (value, ± or None)
    init: str | None = None  # "kaiming" / "xavier" when the paper's row fixes the init; None: any


@dataclass(frozen=True)
class PaperTable:
    key: str  # file stem
    title: str
    columns: tuple[Column, ...]
    rows: tuple[PaperRow, ...]


def _paper(titles: Sequence[str], values: Sequence[float | str | None]) -> dict[str, tuple[float, float | None]]:
    """Pair column titles with paper values; "10.20±0.09" gives (10.20, 0.09); None (not reported) is skipped."""
    out: dict[str, tuple[float, float | None]] = {}
    for title, value in zip(titles, values, strict=True):
        if value is None:
            continue
        if isinstance(value, str):
            mean, pm = value.split("±")
            out[title] = (float(mean), float(pm))
        else:
            out[title] = (float(value), None)
    return out


def _cifar_columns(with_train: bool) -> tuple[Column, ...]:
    columns = []
    for dataset, short in (("cifar10", "C10"), ("cifar100", "C100")):
        if with_train:
            columns.append(Column(f"{short} Single train", dataset, single_train))
        columns += [
            Column(f"{short} Single", dataset, single_test),
            Column(f"{short} Average", dataset, fold_average),
            Column(f"{short} Vote", dataset, fold_vote),
        ]
    return tuple(columns)


def crelu_table1() -> PaperTable:
    """Shang et al. 2016 Table 1 (p.4): ConvPool-CNN-C family on CIFAR-10/100, test error (%), params."""
    columns = (*_cifar_columns(with_train=True), Column("params (M)", "cifar10", params_m))
    titles = [c.title for c in columns]

    def row(label: str, act: str, width: float, *values: float | str) -> PaperRow:
        return PaperRow(label, make_variant("convpool_cnn_c", act, width=width), _paper(titles, values))

    return PaperTable(
        "crelu_table1",
        "Shang et al. 2016, Table 1: ConvPool-CNN-C on CIFAR, error (%)",
        columns,
        (
            row("Baseline", "relu", 1.0, 1.09, 9.17, "10.20±0.09", 7.55, 13.68, 36.30, "38.52±0.12", 31.26, 1.4),
            row("+ (double)", "relu", 2.0, 0.47, 8.65, "9.87±0.09", 7.28, 6.03, 34.77, "36.73±0.15", 28.34, 5.6),
            row("AVR", "avr", 1.0, 4.10, 8.32, "10.26±0.10", 7.76, 19.35, 35.00, "37.24±0.20", 29.77, 1.4),
            row("CReLU", "crelu", 1.0, 4.23, 8.43, "9.39±0.11", 7.09, 14.25, 31.48, "33.76±0.12", 27.60, 2.8),
            row("+ (half)", "crelu", 0.5, 4.73, 8.37, "9.44±0.09", 7.09, 21.01, 33.68, "36.20±0.18", 29.93, 0.7),
        ),
    )


def crelu_table2() -> PaperTable:
    """Shang et al. 2016 Table 2 (p.5): VGG on CIFAR, CReLU at conv1 / 1,3 / 1,3,5 with those layers halved."""
    columns = _cifar_columns(with_train=False)
    titles = [c.title for c in columns]

    def row(label: str, layers: Sequence[int], *values: float | str) -> PaperRow:
        act = "crelu" if layers else "relu"
        variant = make_variant("vgg_cifar", act, act_at=layers or None, halve_at=layers)
        return PaperRow(label, variant, _paper(titles, values))

    return PaperTable(
        "crelu_table2",
        "Shang et al. 2016, Table 2: VGG on CIFAR, test error (%)",
        columns,
        (
            row("VGG", (), 6.35, "6.90±0.03", 5.43, 28.99, "30.27±0.09", 26.85),
            row("(conv1)", (1,), 6.18, "6.45±0.05", 5.22, 27.29, "28.43±0.11", 24.67),
            row("(conv1,3)", (1, 3), 5.94, "6.45±0.02", 5.09, 26.52, "27.79±0.08", 23.93),
            row("(conv1,3,5)", (1, 3, 5), 6.06, "6.45±0.07", 5.16, 26.16, "27.67±0.07", 23.66),
        ),
    )


def _imagenet_columns(with_params: bool = False) -> tuple[Column, ...]:
    columns = [
        Column("top-1", IMAGENET, eval_protocol("center", "top1_err")),
        Column("top-5", IMAGENET, eval_protocol("center", "top5_err")),
        Column("top-1 (10 patches)", IMAGENET, eval_protocol("ten_view", "top1_err")),
        Column("top-5 (10 patches)", IMAGENET, eval_protocol("ten_view", "top5_err")),
    ]
    if with_params:
        columns.append(Column("params (M)", IMAGENET, params_m))
    return tuple(columns)


def crelu_table4() -> PaperTable:
    """Shang et al. 2016 Table 4 (p.6): All-CNN-B variants, ImageNet val error (%); params from Table 5."""
    columns = _imagenet_columns(with_params=True)
    titles = [c.title for c in columns]
    up_to = {4: (1, 2, 3, 4), 7: tuple(range(1, 8)), 9: tuple(range(1, 10))}

    def row(label: str, act: str, act_at, halve_at, *values: float | None) -> PaperRow:
        return PaperRow(label, make_variant("allcnn_b", act, act_at=act_at, halve_at=halve_at), _paper(titles, values))

    return PaperTable(
        "crelu_table4",
        "Shang et al. 2016, Table 4: All-CNN-B on ImageNet, validation error (%) (params: Table 5)",
        columns,
        (
            row("Baseline", "relu", None, (), 41.81, 19.74, 38.03, 17.17, 9.4),
            row("AVR (conv1-4)", "avr", up_to[4], (), 41.12, 19.25, 37.32, 16.49, None),
            row("AVR (conv1-7)", "avr", up_to[7], (), 42.36, 20.05, 38.21, 17.42, None),
            row("AVR (conv1-9)", "avr", up_to[9], (), 43.33, 21.05, 39.70, 18.39, None),
            row("CReLU (conv1,4,7)", "crelu", (1, 4, 7), (1, 4, 7), 40.45, 18.58, 35.70, 15.32, 8.6),
            row("CReLU (conv1-4)", "crelu", up_to[4], (), 39.82, 18.28, 36.20, 15.72, 10.1),
            row("CReLU (conv1-7)", "crelu", up_to[7], (), 39.97, 18.33, 36.53, 16.01, None),
            row("CReLU (conv1-9)", "crelu", up_to[9], (), 40.15, 18.58, 36.50, 16.14, None),
            row("CReLU (all)", "crelu", None, tuple(range(1, 13)), 40.93, 19.39, 37.28, 16.72, 4.7),
        ),
    )


def _top1_top5(protocol: str, scales: str | None = None, prefix: str = "") -> tuple[Column, Column]:
    return (
        Column(f"{prefix}top-1", IMAGENET, eval_protocol(protocol, "top1_err", scales)),
        Column(f"{prefix}top-5", IMAGENET, eval_protocol(protocol, "top5_err", scales)),
    )


def prelu_table2() -> PaperTable:
    """He et al. 2015 Table 2 (p.3): the 14-layer model, ImageNet val, 10-view; Xavier row from §2.2 (A9)."""
    columns = _top1_top5("ten_view")
    titles = [c.title for c in columns]

    def row(label: str, act: str, init: str | None, *values: float) -> PaperRow:
        return PaperRow(label, make_variant("prelu_small14", act), _paper(titles, values), init)

    return PaperTable(
        "prelu_table2",
        "He et al. 2015, Table 2: 14-layer model on ImageNet, 10-view error (%)",
        columns,
        (
            row("ReLU", "relu", "kaiming", 33.82, 13.34),
            row("ReLU, Xavier init (§2.2)", "relu", "xavier", 33.90, 13.44),
            row("PReLU, channel-shared", "prelu_shared", None, 32.71, 12.87),
            row("PReLU, channel-wise", "prelu", None, 32.64, 12.75),
        ),
    )


def prelu_table4() -> PaperTable:
    """He et al. 2015 Table 4 (p.8): model A, ReLU vs PReLU, dense test at one scale or multi-scale."""
    columns = tuple(
        c
        for scale in ("256", "384", "480", "multi")
        for c in _top1_top5("dense", scale, prefix=f"s={scale} " if scale != "multi" else "multi-scale ")
    )
    titles = [c.title for c in columns]
    relu = (26.25, 8.25, 24.77, 7.26, 25.46, 7.63, 24.02, 6.51)
    prelu = (25.81, 8.08, 24.20, 7.03, 24.83, 7.39, 22.97, 6.28)
    return PaperTable(
        "prelu_table4",
        "He et al. 2015, Table 4: model A on ImageNet, dense testing, error (%)",
        columns,
        (
            PaperRow("ReLU", make_variant("prelu_a", "relu"), _paper(titles, relu)),
            PaperRow("PReLU", make_variant("prelu_a", "prelu"), _paper(titles, prelu)),
        ),
    )


def _abc_rows(titles: Sequence[str], values: dict[str, tuple[float, float]]) -> tuple[PaperRow, ...]:
    variants = {
        "A, ReLU": make_variant("prelu_a", "relu"),
        "A, PReLU": make_variant("prelu_a", "prelu"),
        "B, PReLU": make_variant("prelu_b", "prelu"),
        "C, PReLU": make_variant("prelu_c", "prelu"),
    }
    return tuple(PaperRow(label, variants[label], _paper(titles, v)) for label, v in values.items())


def prelu_table5() -> PaperTable:
    """He et al. 2015 Table 5 (p.9): single models A/B/C, ImageNet val, 10-view error (%)."""
    columns = _top1_top5("ten_view")
    rows = {"A, ReLU": (26.48, 8.59), "A, PReLU": (25.59, 8.23), "B, PReLU": (25.53, 8.13), "C, PReLU": (24.27, 7.38)}
    return PaperTable(
        "prelu_table5",
        "He et al. 2015, Table 5: models A/B/C on ImageNet, 10-view error (%)",
        columns,
        _abc_rows([c.title for c in columns], rows),
    )


def prelu_table6() -> PaperTable:
    """He et al. 2015 Table 6 (p.9): single models A/B/C, dense multi-scale, multi-view error (%)."""
    columns = _top1_top5("dense", "multi")
    rows = {"A, ReLU": (24.02, 6.51), "A, PReLU": (22.97, 6.28), "B, PReLU": (22.85, 6.27), "C, PReLU": (21.59, 5.71)}
    return PaperTable(
        "prelu_table6",
        "He et al. 2015, Table 6: models A/B/C on ImageNet, dense multi-scale error (%)",
        columns,
        _abc_rows([c.title for c in columns], rows),
    )


def paper_tables() -> list[PaperTable]:
    return [
        crelu_table1(),
        crelu_table2(),
        crelu_table4(),
        prelu_table2(),
        prelu_table4(),
        prelu_table5(),
        prelu_table6(),
    ]


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
    paper: dict[str, tuple[float, float | None]]
    counts: tuple[int, int, int]  # completed, failed, missing runs over the row's columns
    notes: list[str]


def _init_matches(row: PaperRow, init: str) -> bool:
    return row.init is None or init.split("/")[0] == row.init


def _recipe(run: Run) -> tuple:
    """What must agree between the seeds of one group for their mean to mean something."""
    c = run.config
    return (
        ("epochs", c.get("trainer", {}).get("epochs")),
        ("batch", c.get("trainer", {}).get("batch_size")),
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


def _row_counts(runs: Sequence[Run]) -> tuple[int, int, int]:
    return tuple(sum(r.status == s for r in runs) for s in ("completed", "failed", "missing"))


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
            runs = [r for k in keys for r in groups[k]]
            notes = [n for k in keys if (n := _mixed_recipe_note(groups[k]))]
            notes += [f"{title}: {n}" for title, cell in cells.items() for n in cell.notes]
            lines.append(TableRow(row.label, row.variant, init, cells, row.paper, _row_counts(runs), notes))
    return lines


def other_runs(groups: dict[GroupKey, list[Run]], used: set[GroupKey]) -> list[TableRow]:
    """Groups that no paper cell read: final test errors, and Average/Vote when they are fold runs."""
    measures = {
        "top-1": lambda runs: _per_run([r for r in runs if not r.num_folds], _final_test_err),
        "top-5": lambda runs: _per_run([r for r in runs if not r.num_folds], _final_test_top5),
        "Average top-1": fold_average,
        "Vote top-1": fold_vote,
    }
    lines = []
    for key in sorted(set(groups) - used, key=lambda k: (k[2], k[0].label(), k[1])):
        variant, init, dataset = key
        runs = groups[key]
        cells = {title: measure(runs) for title, measure in measures.items()}
        notes = [n for n in [_mixed_recipe_note(runs)] if n]
        notes += [f"{title}: {n}" for title, cell in cells.items() for n in cell.notes]
        lines.append(TableRow(dataset, variant, init, cells, {}, _row_counts(runs), notes))
    return lines


# ---------------------------------------------------------------------------------------------------------
# Writing


def _paper_text(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return DASH
    mean, pm = value
    return f"{mean:.2f}" if pm is None else f"{mean:.2f} ± {pm:.2f}"


def _runs_text(counts: tuple[int, int, int]) -> str:
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
        cells = [line.label, f"`{line.variant.label()}`", line.init or DASH, _runs_text(line.counts)]
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
eval_center.json / eval_ten_view.json / eval_dense.json. Paper values: /work/shared/docs/papers.md."""


def write_all(runs: Sequence[Run], out: Path) -> list[Path]:
    """Fill every table from `runs`, write tables.md, one CSV per table and runs.csv; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    groups, used = group_runs(runs), set()
    sections, written = [f"# Result tables\n\n{len(runs)} run directories: {_runs_text(_row_counts(runs))}.\n"], []
    for table in paper_tables():
        lines = fill_table(table, groups, used)
        titles = [c.title for c in table.columns]
        sections.append(f"## {table.title}\n\n{markdown_table(titles, lines)}\n")
        written.append(out / f"{table.key}.csv")
        write_csv(written[-1], titles, lines)
    extra = other_runs(groups, used)
    extra_titles = ["top-1", "top-5", "Average top-1", "Vote top-1"]
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rectnet.tables",
        description="The papers' result tables (CReLU Tables 1, 2, 4; PReLU Tables 2, 4-6) from run directories.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", help="sweep or run directories (searched recursively)")
    parser.add_argument("--out", default="tables", help="folder for tables.md and the CSVs (default: ./tables)")
    args = parser.parse_args(argv)
    try:
        runs = read_runs(args.dirs)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    paths = write_all(runs, Path(args.out))
    print(f"{len(runs)} run directories ({_runs_text(_row_counts(runs))})")
    print(f"tables: {paths[0]}")
    print(f"CSV:    {', '.join(str(p) for p in paths[1:])}")


if __name__ == "__main__":
    main()
