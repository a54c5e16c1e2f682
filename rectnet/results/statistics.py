"""Cells: one measured number (mean ± spread over n) from the runs of one group, and how each is made.

* Single (Shang et al. 2016, Tables 1-2): the final test top-1 error (results.json "final"), mean ± sample std
  over seeds, of the retraining runs of the paper's protocol (Goodfellow et al. 2013, `scripts/reproduce/single.sh`:
  stage 1 trains on all folds but one and records the training loss at its best held-out error; stage 2
  retrains from scratch on the whole training split until the held-out fold's loss reaches that value). Where
  a group has no such run, the runs trained without folds for their configured schedule stand in (an
  approximation of the stopping point). results.json's "best_top1_err" of a run without folds is selected on
  the test split, so it is never used. "Single train" is the last epoch's running training error from
  metrics.jsonl (measured during the epoch, with augmentation and dropout on), not a separate pass over the
  training set. "gap" (Table 1's overfitting, read from its two Single columns): per run, its final test error
  minus its last epoch's running training error, mean ± std over seeds.
* Average: mean over the 10-fold runs (`dataset.num_folds>0`, any fold, any seed) of their final test top-1
  error, ± standard error (sample std / sqrt(n)), as the paper reports it.
* Vote: for each complete fold set (one seed, folds 0..k-1 all completed with test_logits.pt) the test error of
  the mean of the k nets' softmax probabilities (argmax vs the labels, which must agree across the nets). One
  set gives one number; several seeds give mean ± std over sets. An incomplete set gives no Vote (a vote of
  fewer nets is another quantity); its absent folds count as missing. Both use the final model of each fold
  run (test_logits.pt is written at the end), not best.pt.
* ImageNet columns: `eval_center.json` (centre crop), `eval_ten_view.json` (10 views/patches) and
  `eval_dense.json` (dense multi-scale) written by the evaluation script, mean ± std over seeds. He et al.'s
  Table 4 splits dense results by test scale: `eval_dense_s<s>.json` (or an `eval_dense.json` with
  "scales": [s]) fills column s; an `eval_dense.json` with several scales or without the key fills
  "multi-scale" (and Table 6).
* params (M): results.json "params" / 1e6 (weights, biases and PReLU slopes), mean over the cell's runs.

Failed and missing runs are counted per slot, a seed (and fold under k-fold) that no completed run fills: a
failed run that was re-run successfully is not counted, and a fold that has no run directory at all counts as
missing. A completed run without the file a column needs (eval_*.json, test_logits.pt, metrics.jsonl) counts
as missing there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rectnet.results.runs import Run, read_json, read_metrics

DASH = "—"  # a cell without a value: never 0
SHORT_MARK = "‡"  # a cell with values from runs shorter than their recipe: not comparable with the paper


@dataclass
class Cell:
    """A measured value: mean ± spread over n, with the runs that should have contributed but did not."""

    mean: float | None = None
    spread: float | None = None  # sample std over seeds, or standard error (Average)
    n: int = 0
    failed: int = 0
    missing: int = 0
    notes: list[str] = field(default_factory=list)
    shortened: int = 0  # of the n values, those that come from runs shorter than their recipe (Run.shortened)
    values: list[float] = field(default_factory=list)  # the n values (comparison.py's intervals read them)

    def text(self, digits: int = 2) -> str:
        lost = [f"{k} {what}" for k, what in ((self.failed, "failed"), (self.missing, "missing")) if k]
        if self.mean is None:
            return f"{DASH} ({', '.join(lost)})" if lost else DASH
        value = f"{self.mean:.{digits}f}"
        if self.spread is not None:
            value += f" ± {self.spread:.{digits}f}"
        mark = f" {SHORT_MARK}" if self.shortened else ""
        return f"{value} (n={self.n}" + (f"; {', '.join(lost)})" if lost else ")") + mark

    def mark_shortened(self, runs: Sequence[Run]) -> None:
        """Count the runs behind the values that ran less than their recipe (the row's notes say how)."""
        self.shortened = sum(bool(r.shortened()) for r in runs)


def summarise(values: Sequence[float], failed: int, missing: int, standard_error: bool = False) -> Cell:
    if not values:
        return Cell(failed=failed, missing=missing)
    spread = statistics.stdev(values) if len(values) > 1 else None
    if spread is not None and standard_error:
        spread /= math.sqrt(len(values))
    return Cell(statistics.fmean(values), spread, len(values), failed, missing, values=list(values))


def _slot(run: Run) -> tuple[int | None, int | None]:
    """What a run stands for in a cell: its seed, and its fold under k-fold cross-validation."""
    return run.seed, run.fold if run.num_folds else None


def _unfilled(slot_runs: Sequence[Run]) -> str:
    """Why a slot without a usable run is empty: "failed" if one of its runs failed, else "missing"."""
    return "failed" if any(r.status == "failed" for r in slot_runs) else "missing"


def per_run(runs: Sequence[Run], read: Callable[[Run], float | None], standard_error: bool = False) -> Cell:
    """Mean ± spread of `read(run)` over completed runs.

    Failed and missing runs are counted per (seed, fold) slot that no completed run fills, so a failed run
    that was re-run successfully is not reported; a completed run where `read` gives None counts as missing.
    """
    slots: dict[tuple[int | None, int | None], list[Run]] = {}
    for run in runs:
        slots.setdefault(_slot(run), []).append(run)
    values, used, lost = [], [], {"failed": 0, "missing": 0}
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
                used.append(run)
    cell = summarise(values, lost["failed"], lost["missing"], standard_error)
    cell.mark_shortened(used)
    return cell


def final_test_err(run: Run) -> float | None:
    return run.results.get("final", {}).get("top1_err")


def final_test_top5(run: Run) -> float | None:
    return run.results.get("final", {}).get("top5_err")


def _last_train_err(run: Run) -> float | None:
    records = read_metrics(run.path)
    return records[-1].get("train/top1_err") if records else None


def _train_test_gap(run: Run) -> float | None:
    train, test = _last_train_err(run), final_test_err(run)
    return None if train is None or test is None else test - train


def _single_runs(runs: Sequence[Run]) -> list[Run]:
    """The retrained runs of the "Single" protocol when there are any, else the runs without folds."""
    return [r for r in runs if r.single_stage == 2] or [r for r in runs if not r.num_folds]


def single_test(runs: Sequence[Run]) -> Cell:
    """CReLU Tables 1-2 "Single" (test): final test top-1 error of the Single runs (see top)."""
    return per_run(_single_runs(runs), final_test_err)


def single_train(runs: Sequence[Run]) -> Cell:
    """CReLU Table 1 "Single" train error: the last epoch's running training top-1 error."""
    return per_run(_single_runs(runs), _last_train_err)


def single_gap(runs: Sequence[Run]) -> Cell:
    """Train/test gap of the Single runs: per run, final test error - last epoch's running training error."""
    return per_run(_single_runs(runs), _train_test_gap)


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
    cell = per_run([r for s in sets.values() for r in s], final_test_err, standard_error=True)
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


def _vote_of_set(fold_runs: Sequence[Run], num_folds: int) -> tuple[float | None, dict[str, int], list[Run]]:
    """The Vote error of one fold set, the failed/missing fold counts and the runs voting; None when a fold has
    no usable run."""
    by_fold: dict[int, list[Run]] = {}
    for run in sorted(fold_runs, key=lambda r: r.path):  # a fold run twice (a rerun elsewhere): the first path
        by_fold.setdefault(run.fold, []).append(run)
    usable = {f: next((r for r in runs if _has_logits(r)), None) for f, runs in by_fold.items()}
    lost = {"failed": 0, "missing": num_folds - len(by_fold)}
    for fold, run in usable.items():
        if run is None:  # a completed run without test_logits.pt is missing that file
            lost["missing" if any(r.status == "completed" for r in by_fold[fold]) else _unfilled(by_fold[fold])] += 1
    if lost["failed"] or lost["missing"]:
        return None, lost, []
    voters = [usable[f] for f in range(num_folds)]
    return vote_error([run.path / "test_logits.pt" for run in voters]), lost, voters


def fold_vote(runs: Sequence[Run]) -> Cell:
    """CReLU "Vote": per complete fold set the error of the averaged softmax; mean ± std over sets."""
    values, notes, failed, missing, voters = [], [], 0, 0, []
    for (seed, k), fold_runs in _fold_sets(runs).items():
        vote, lost, set_voters = _vote_of_set(fold_runs, k)
        if vote is None:
            notes.append(f"Vote of seed {seed} needs all {k} folds with test_logits.pt")
            failed, missing = failed + lost["failed"], missing + lost["missing"]
        else:
            values.append(vote)
            voters.append(set_voters)
    cell = summarise(values, failed, missing)
    cell.notes = notes
    cell.shortened = sum(any(run.shortened() for run in set_voters) for set_voters in voters)  # sets, like n
    return cell


def eval_protocol(protocol: str, key: str, scales: str | None = None) -> Callable[[Sequence[Run]], Cell]:
    """A column from eval_<protocol>.json (ImageNet). `scales`: "multi" or one scale, for dense results."""

    def read(run: Run) -> float | None:
        per_scale = run.path / f"eval_{protocol}_s{scales}.json"  # eval.py's dense test at one scale
        saved = read_json(per_scale if per_scale.is_file() else run.path / f"eval_{protocol}.json")
        if saved is None or key not in saved:
            return None
        if scales is not None and _scale_column(saved.get("scales")) != scales:
            return None
        return saved[key]

    def cell(runs: Sequence[Run]) -> Cell:
        return per_run(runs, read)

    return cell


def _scale_column(scales: list[int] | None) -> str:
    """He et al. Table 4 column of a dense evaluation: "multi" unless exactly one scale is listed."""
    return str(scales[0]) if scales and len(scales) == 1 else "multi"


def params_m(runs: Sequence[Run]) -> Cell:
    """Parameters in millions (results.json "params"); no spread: the runs of a group share the network."""
    cell = per_run(runs, lambda r: r.results["params"] / 1e6 if "params" in r.results else None)
    cell.spread = None
    cell.shortened = 0  # a network's size does not depend on how long it trained
    return cell
