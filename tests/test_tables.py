"""rectnet.results (`python -m rectnet.tables`) on run directories fabricated here: grouping, mean ± std (n),
the CReLU paper's Average and Vote computed by hand from fabricated logits, and failed / missing runs shown as
missing, never as zeros."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rectnet.results.cli import main
from rectnet.results.miniature import scale_table, scale_text, scaled_width
from rectnet.results.papers import crelu_table1, crelu_table4, prelu_table2, prelu_table4
from rectnet.results.runs import find_run_dirs, read_runs
from rectnet.results.statistics import vote_error
from rectnet.results.table import fill_table, group_runs, other_runs, paper_table, row
from rectnet.results.variants import make_variant, variant_from_config

TEST_SIZE, CLASSES = 60, 10


def _config(model: str, activation: str, dataset: str, seed: int, **extra) -> dict:
    return {
        "dataset": {
            "name": dataset,
            "num_classes": extra.get("num_classes", CLASSES),
            "num_folds": extra.get("num_folds", 0),
            "fold": extra.get("fold", 0),
            "holdout_in_train": extra.get("holdout_in_train", False),
            "num_test": extra.get("num_test"),
        },
        "model": {
            "name": model,
            "width": extra.get("width", 1.0),
            "act_at": extra.get("act_at"),
            "halve_at": extra.get("halve_at", []),
            "base_act": "relu",
        },
        "activation": {"name": activation, "slope": None},
        "init": {"name": extra.get("init", "kaiming"), "mode": "fan_in"},
        "trainer": {
            "epochs": extra.get("epochs", 3),
            "record_train_loss_at_best": extra.get("record_train_loss_at_best", False),
            "max_steps_per_epoch": extra.get("max_steps_per_epoch"),
        },
        "optim": {"lr": 0.1},
        "schedule": extra.get("schedule", {"name": "multistep", "gamma": 0.1, "milestones": [200, 250, 300]}),
        "seed": seed,
    }


def make_run(
    folder: Path,
    model: str = "convpool_cnn_c",
    activation: str = "relu",
    dataset: str = "cifar10",
    seed: int = 0,
    status: str = "completed",
    top1: float = 10.0,
    logits: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    evals: dict[str, dict] | None = None,
    overrides: list[str] | None = None,
    train_top1: float | None = None,
    results: dict | None = None,
    epochs_log: list[dict] | None = None,
    **extra,
) -> Path:
    """A run directory as train.py leaves it: .hydra/config.yaml (and overrides.yaml, the command line's
    overrides) always, then results.json and the rest (completed), FAILED (failed) or nothing more (missing:
    interrupted). The last epoch's training error is `train_top1`, by default half the test error. `results`:
    more keys of results.json (wall_time_s, hardware, ...); `epochs_log`: metrics.jsonl's records instead of the
    one written here."""
    config = _config(model, activation, dataset, seed, **extra)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    if overrides is not None:
        OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    if status == "failed":
        (folder / "FAILED").write_text("NonFiniteLossError: training loss is nan\n\nTraceback ...")
    if status != "completed":
        return folder
    final = {"top1_err": top1, "top5_err": top1 / 4, "loss": 1.0, "count": TEST_SIZE}
    saved = {"status": "completed", "final": final, "params": 1_370_000, "config": config, **(results or {})}
    (folder / "results.json").write_text(json.dumps(saved))
    train = top1 / 2 if train_top1 is None else train_top1
    records = epochs_log or [{"epoch": 3, "train/top1_err": train, "test/top1_err": top1}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    if logits is not None:
        torch.save({"logits": logits, "labels": labels}, folder / "test_logits.pt")
    for protocol, values in (evals or {}).items():
        (folder / f"eval_{protocol}.json").write_text(json.dumps({**values, "protocol": protocol}))
    return folder


def _rows(table, root: Path) -> dict:
    lines = fill_table(table, group_runs(read_runs([root])), set())
    return {(line.label, line.init): line for line in lines}


def _fold_logits(folds: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(CLASSES, (TEST_SIZE,), generator=generator)
    # Each net: the right class gets a noisy boost, so single nets err often and the vote less.
    logits = []
    for _ in range(folds):
        x = torch.randn(TEST_SIZE, CLASSES, generator=generator) * 2
        x[torch.arange(TEST_SIZE), labels] += 1.5
        logits.append(x)
    return logits, labels


def _error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) != labels).float().mean().item()


def test_single_is_mean_std_over_seeds_with_failed_and_missing_counted(tmp_path):
    for seed, top1 in enumerate([9.0, 10.0, 11.0]):
        make_run(tmp_path / f"s{seed}", seed=seed, top1=top1)
    make_run(tmp_path / "s3", seed=3, status="failed")
    make_run(tmp_path / "s4", seed=4, status="missing")
    line = _rows(crelu_table1(), tmp_path)[("Baseline", "kaiming/fan_in")]
    cell = line.cells["C10 Single"]
    assert (cell.mean, cell.spread, cell.n, cell.failed, cell.missing) == (10.0, 1.0, 3, 1, 1)
    assert cell.text() == "10.00 ± 1.00 (n=3; 1 failed, 1 missing)"
    assert line.cells["C10 Single train"].mean == pytest.approx(5.0)  # last metrics.jsonl line
    assert line.paper["C10 Single"] == (9.17, None) and line.paper["C10 Average"] == (10.20, 0.09)
    assert line.counts == (3, 1, 1)


def test_single_takes_the_retrained_runs_and_keeps_both_stages_out_of_fold_sets(tmp_path):
    make_run(tmp_path / "no_folds", top1=20.0)  # stands in for Single only where no retrained run exists
    make_run(tmp_path / "stage1", top1=30.0, num_folds=5, record_train_loss_at_best=True)
    for seed, top1 in enumerate([8.0, 12.0]):
        make_run(tmp_path / f"stage2_{seed}", seed=seed, top1=top1, num_folds=5, holdout_in_train=True)
    line = _rows(crelu_table1(), tmp_path)[("Baseline", "kaiming/fan_in")]
    single = line.cells["C10 Single"]
    assert (single.mean, single.spread, single.n) == (10.0, pytest.approx(statistics.stdev([8.0, 12.0])), 2)
    average = line.cells["C10 Average"]
    assert (average.mean, average.n, average.missing) == (None, 0, 0)


def test_rows_without_runs_and_failed_only_cells_are_dashes_never_zeros(tmp_path):
    make_run(tmp_path / "a", activation="avr", seed=0, status="failed")
    make_run(tmp_path / "b", activation="avr", seed=1, status="missing")
    rows = _rows(crelu_table1(), tmp_path)
    avr = rows[("AVR", "kaiming/fan_in")]
    assert avr.cells["C10 Single"].mean is None
    assert avr.cells["C10 Single"].text() == "— (1 failed, 1 missing)"
    assert rows[("CReLU", None)].cells["C10 Vote"].text() == "—"  # no run at all: one line of dashes

    out = tmp_path / "out"
    main([str(tmp_path), "--out", str(out)])
    with (out / "crelu_table1.csv").open() as f:
        by_label = {row["model"]: row for row in csv.DictReader(f)}
    assert by_label["AVR"]["C10 Single"] == "" and by_label["AVR"]["C10 Single failed"] == "1"
    assert by_label["CReLU"]["C10 Vote"] == "" and by_label["CReLU"]["C10 Vote paper"] == "7.09"


def test_average_and_vote_of_ten_folds_match_a_hand_computation(tmp_path):
    logits, labels = _fold_logits(10)
    errors = [_error(x, labels) for x in logits]
    for fold, x in enumerate(logits):
        make_run(
            tmp_path / f"f{fold}",
            activation="crelu",
            dataset="cifar100",
            top1=errors[fold],
            logits=x,
            labels=labels,
            num_folds=10,
            fold=fold,
            num_classes=CLASSES,
        )
    line = _rows(crelu_table1(), tmp_path)[("CReLU", "kaiming/fan_in")]

    average = line.cells["C100 Average"]
    assert average.mean == pytest.approx(statistics.fmean(errors))
    assert average.spread == pytest.approx(statistics.stdev(errors) / math.sqrt(10))  # standard error
    assert average.n == 10

    mean_softmax = torch.stack([torch.softmax(x.double(), 1) for x in logits]).mean(0)
    by_hand = 100.0 * (mean_softmax.argmax(1) != labels).double().mean().item()
    vote = line.cells["C100 Vote"]
    assert (vote.mean, vote.n) == (pytest.approx(by_hand), 1)
    assert by_hand < min(errors)  # the ensemble beats every member here, as in the paper
    assert line.cells["C100 Single"].mean is None  # fold runs are not Single runs


def test_an_incomplete_fold_set_has_no_vote_and_counts_its_absent_folds(tmp_path):
    logits, labels = _fold_logits(10)
    statuses = {3: "failed", 7: None}  # fold 3 failed, fold 7 was never launched
    for fold, x in enumerate(logits):
        status = statuses.get(fold, "completed")
        if status is None:
            continue
        folds = {"num_folds": 10, "fold": fold}
        make_run(tmp_path / f"f{fold}", activation="crelu", status=status, logits=x, labels=labels, **folds)
    line = _rows(crelu_table1(), tmp_path)[("CReLU", "kaiming/fan_in")]
    vote, average = line.cells["C10 Vote"], line.cells["C10 Average"]
    assert vote.mean is None and (vote.failed, vote.missing) == (1, 1)
    assert any("needs all 10 folds" in note for note in line.notes)
    assert average.n == 8 and (average.failed, average.missing) == (1, 1)


def test_a_failed_run_that_was_rerun_is_not_counted_as_failed(tmp_path):
    make_run(tmp_path / "first", seed=0, status="failed")
    make_run(tmp_path / "rerun", seed=0, top1=9.5)
    cell = _rows(crelu_table1(), tmp_path)[("Baseline", "kaiming/fan_in")].cells["C10 Single"]
    assert (cell.mean, cell.n, cell.failed, cell.missing) == (9.5, 1, 0, 0)


def test_vote_rejects_nets_evaluated_on_different_test_sets(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"logits": torch.zeros(4, 3), "labels": torch.tensor([0, 1, 2, 0])}, a)
    torch.save({"logits": torch.zeros(4, 3), "labels": torch.tensor([0, 1, 2, 1])}, b)
    with pytest.raises(ValueError, match="labels differ"):
        vote_error([a, b])


def test_equivalent_placements_are_one_variant():
    # CReLU (all): halving the classifier changes nothing, so halve_at 1..12 == 1..11 (allcnn_b has 12 convs)
    assert make_variant("allcnn_b", "crelu", halve_at=range(1, 13)) == make_variant(
        "allcnn_b", "crelu", halve_at=range(1, 12)
    )
    # act_at listing every layer that takes the activation is act_at=null; ConvPool's classifier takes none
    assert make_variant("convpool_cnn_c", "crelu", act_at=range(1, 10)) == make_variant("convpool_cnn_c", "crelu")
    assert make_variant("vgg_cifar", "relu", act_at=[1]) == make_variant("vgg_cifar", "relu")
    assert make_variant("vgg_cifar", "crelu", act_at=[1]) != make_variant("vgg_cifar", "crelu")
    assert make_variant("prelu_small14", "prelu").slope == 0.25  # prelu's default initial slope


def test_imagenet_columns_come_from_eval_files(tmp_path):
    layers = [1, 2, 3, 4]
    evals = {"center": {"top1_err": 40.0, "top5_err": 18.0}, "ten_view": {"top1_err": 36.0, "top5_err": 15.0}}
    make_run(tmp_path / "a", "allcnn_b", "crelu", "imagenet", seed=0, act_at=layers, evals=evals)
    make_run(tmp_path / "b", "allcnn_b", "crelu", "imagenet", seed=1, act_at=layers)  # not evaluated yet
    line = _rows(crelu_table4(), tmp_path)[("CReLU (conv1-4)", "kaiming/fan_in")]
    assert line.cells["top-1"].mean == 40.0 and line.cells["top-5 (10 patches)"].mean == 15.0
    assert line.cells["top-1"].text() == "40.00 (n=1; 1 missing)"
    assert line.paper["top-1"] == (39.82, None) and line.paper["params (M)"] == (10.1, None)


def test_dense_results_of_one_run_fill_every_scale_column(tmp_path):
    # what eval.py leaves after a multi-scale test and three single-scale ones (eval_dense_s<s>.json)
    evals = {f"dense_s{s}": {"top1_err": e, "top5_err": e / 3, "scales": [s]} for s, e in ((256, 27.0), (384, 25.5))}
    evals["dense"] = {"top1_err": 24.0, "top5_err": 7.0, "scales": [256, 384, 480]}
    make_run(tmp_path / "a", "prelu_a", "prelu", "imagenet", evals=evals)
    cells = _rows(prelu_table4(), tmp_path)[("PReLU", "kaiming/fan_in")].cells
    assert cells["s=256 top-1"].mean == 27.0 and cells["s=384 top-5"].mean == 8.5
    assert cells["multi-scale top-1"].mean == 24.0
    assert cells["s=480 top-1"].mean is None  # not evaluated at 480 alone: missing, not the multi-scale value


def test_a_row_that_fixes_the_init_takes_only_that_init(tmp_path):
    evals = {"ten_view": {"top1_err": 34.0, "top5_err": 13.5}}
    make_run(tmp_path / "x", "prelu_small14", "relu", "imagenet", init="xavier", evals=evals)
    rows = _rows(prelu_table2(), tmp_path)
    assert rows[("ReLU, Xavier init (§2.2)", "xavier/fan_in")].cells["top-1"].mean == 34.0
    assert ("ReLU", None) in rows  # the Kaiming row has no run


def test_runs_outside_every_paper_cell_are_listed_as_other_runs(tmp_path):
    make_run(tmp_path / "syn", dataset="synthetic", top1=80.0, width=0.25)
    groups, used = group_runs(read_runs([tmp_path])), set()
    fill_table(crelu_table1(), groups, used)
    (line,) = other_runs(groups, used)
    assert line.label == "synthetic" and line.cells["top-1"].mean == 80.0


def test_run_directories_are_found_without_descending_into_them(tmp_path):
    run = make_run(tmp_path / "sweep" / "0")
    (run / "checkpoints" / "nested").mkdir(parents=True)
    (run / "checkpoints" / "nested" / "results.json").write_text("{}")
    (tmp_path / "sweep" / ".submitit" / "x").mkdir(parents=True)
    (tmp_path / "sweep" / ".submitit" / "x" / "FAILED").write_text("")
    assert find_run_dirs([tmp_path]) == [run]


def test_cli_writes_markdown_and_csv_and_says_where(tmp_path, capsys):
    make_run(tmp_path / "runs" / "0", top1=9.0)
    out = tmp_path / "tables"
    main([str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert str(out / "tables.md") in printed and str(out / "crelu_table1.csv") in printed
    markdown = (out / "tables.md").read_text()
    assert (
        "| Baseline | `convpool_cnn_c relu` | kaiming/fan_in | 1 ok | 4.50 (n=1) | 1.09 | 9.00 (n=1) | 9.17 |"
        in markdown
    )
    for name in ("crelu_table2", "crelu_table4", "prelu_table2", "prelu_table4", "prelu_table5", "prelu_table6"):
        assert (out / f"{name}.csv").is_file()
    assert "completed" in (out / "runs.csv").read_text()


def test_a_failed_run_without_any_config_is_inventoried_but_in_no_table(tmp_path):
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / "FAILED").write_text("")  # died before Hydra wrote .hydra/
    out = tmp_path / "out"
    main([str(tmp_path), "--out", str(out)])
    assert "1 run directories have no readable config" in (out / "tables.md").read_text()
    assert "crashed,failed" in (out / "runs.csv").read_text()


def test_a_paper_value_under_a_column_the_table_lacks_is_refused():
    columns = crelu_table1().columns
    with pytest.raises(ValueError, match="no column \\['c10_test'\\]"):
        paper_table("t", "T", columns, [row("Baseline", make_variant("convpool_cnn_c", "relu"), c10_test=9.17)])


def test_a_run_short_of_its_recipe_is_marked_and_says_why(tmp_path):
    """A 10-step, 1,000-image run must not stand beside the paper's value unmarked; a full run is not marked,
    nor is a subset a recipe pins itself (Fig. 2's 3,000 test images) or an override back to the whole split."""
    smoke = ["experiment=convpool_baseline", "trainer.max_steps_per_epoch=10", "dataset.num_train=1000"]
    make_run(tmp_path / "smoke", top1=89.4, max_steps_per_epoch=10, overrides=smoke)
    make_run(tmp_path / "full", activation="crelu", top1=8.4, overrides=["experiment=convpool_crelu", "seed=0"])
    whole = ["experiment=convpool_avr", "dataset.num_test=null"]
    make_run(tmp_path / "avr", activation="avr", top1=8.3, overrides=whole, num_test=3000)
    rows = _rows(crelu_table1(), tmp_path)

    baseline = rows[("Baseline", "kaiming/fan_in")]
    assert baseline.cells["C10 Single"].text() == "89.40 (n=1) ‡"
    assert baseline.cells["params (M)"].text() == "1.37 (n=1)"  # the network's size is what it is
    (note,) = baseline.notes
    assert "1 of 1 completed runs" in note
    assert "trainer.max_steps_per_epoch=10" in note and "dataset.num_train=1000" in note
    for label in ("CReLU", "AVR"):
        line = rows[(label, "kaiming/fan_in")]
        assert "‡" not in line.cells["C10 Single"].text() and not line.notes

    out = tmp_path / "out"
    main([str(tmp_path), "--out", str(out)])
    markdown = (out / "tables.md").read_text()
    assert "| 89.40 (n=1) ‡ | 9.17 |" in markdown
    assert "‡ = some of the cell's values come from runs that did not run their recipe's full schedule" in markdown


# --------------------------------------------------------------------------------------- miniatures (--width-scale)

MINI_OVERRIDES = ["dataset=cifar10", "trainer.epochs=10", "schedule.milestones=[6,7,9]", "trainer.precision=fp32"]
MINI_SCHEDULE = {"name": "multistep", "gamma": 0.1, "milestones": [6, 7, 9]}
# experiment -> (activation, width at 1/4 of the paper's, {seed: (final test error, last epoch's train error)})
MINI_RUNS = {
    "convpool_baseline": ("relu", 0.25, {0: (31.0, 20.0), 1: (31.2, 20.1), 2: (31.4, 20.2)}),
    "convpool_crelu": ("crelu", 0.25, {0: (30.0, 22.0), 1: (30.2, 22.1), 2: (30.1, 22.2)}),
    "convpool_crelu_half": ("crelu", 0.125, {0: (30.1, 23.0), 1: (30.0, 23.0), 2: (30.3, 23.0)}),
    "convpool_avr": ("avr", 0.25, {0: (31.5, 25.0)}),
    "convpool_prelu": ("prelu", 0.25, {0: (30.5, 19.0), 1: (30.7, 19.0), 2: (30.9, 19.0)}),
    "convpool_double": ("relu", 0.5, {0: (29.0, 15.0)}),
}


def make_miniature_sweep(root: Path, results: dict | None = None) -> list[Path]:
    """Table 1's rows at 1/4 width, 10 epochs with the milestones compressed (crelu_table1_mini.sh's runs)."""
    folders = []
    for experiment, (activation, width, seeds) in MINI_RUNS.items():
        for seed, (top1, train) in seeds.items():
            overrides = [f"experiment={experiment}", f"model.width={width:g}", f"seed={seed}", *MINI_OVERRIDES]
            folder = root / f"{experiment}_{seed}"
            make_run(
                folder,
                activation=activation,
                width=width,
                seed=seed,
                top1=top1,
                train_top1=train,
                overrides=overrides,
                epochs=10,
                schedule=MINI_SCHEDULE,
                results=results,
            )
            folders.append(folder)
    return folders


def test_a_miniature_fills_every_row_of_table_1_at_its_scaled_width(tmp_path):
    """--width-scale 0.25: runs at width 0.25 fill the width-1 rows, 0.125 "+ (half)", 0.5 "+ (double)"."""
    make_miniature_sweep(tmp_path)
    rows = _rows(scale_table(crelu_table1(), 0.25), tmp_path)
    expected = {  # label: (n, mean) of the final test errors in MINI_RUNS
        "Baseline": (3, 31.2),
        "+ (double)": (1, 29.0),
        "AVR": (1, 31.5),
        "CReLU": (3, 30.1),
        "+ (half)": (3, (30.1 + 30.0 + 30.3) / 3),
        "PReLU (He et al.)": (3, 30.7),
    }
    for label, (n, mean) in expected.items():
        cell = rows[(label, "kaiming/fan_in")].cells["C10 Single"]
        assert (cell.n, cell.mean) == (n, pytest.approx(mean)), label
    assert rows[("Baseline", "kaiming/fan_in")].cells["C10 Single"].spread == pytest.approx(0.2)
    assert rows[("+ (half)", "kaiming/fan_in")].variant.width == 0.125
    assert rows[("Baseline", "kaiming/fan_in")].paper["C10 Single"] == (9.17, None)  # the paper's, unscaled
    # without the scale the same runs fill no paper row
    assert all(line.init is None for line in _rows(crelu_table1(), tmp_path).values())


def test_the_miniatures_tables_say_so_and_keep_the_papers_values_beside(tmp_path):
    make_miniature_sweep(tmp_path / "runs")
    out = tmp_path / "tables"
    main([str(tmp_path / "runs"), "--width-scale", "0.25", "--out", str(out)])
    markdown = (out / "tables.md").read_text()
    title = "## Shang et al. 2016, Table 1: ConvPool-CNN-C on CIFAR, error (%), miniature at 1/4 of the paper's width"
    assert f"{title}, 10 epochs\n" in markdown
    assert (
        "Miniature (`--width-scale 0.25`): every row at 1/4 of the paper's width: model.width 0.125 the paper's "
        "width-0.5 rows, model.width 0.25 the paper's width-1 rows, model.width 0.5 the paper's width-2 rows. "
        "The runs trained 10 epochs, lr x0.1 at epochs 6, 7, 9." in markdown
    )
    assert markdown.count("Miniature (`--width-scale") == 1  # the note where runs fill the table only
    row = "| Baseline | `convpool_cnn_c relu width=0.25` | kaiming/fan_in | 3 ok | 20.10 ± 0.10 (n=3) ‡ | 1.09 |"
    assert f"{row} 31.20 ± 0.20 (n=3) ‡ | 9.17 |" in markdown
    # the compressed schedule, in the row's note
    assert (
        "3 of 3 completed runs ran less than their recipe's schedule or data (trainer.epochs=10; lr schedule as "
        "run: schedule.milestones=[6,7,9]) ‡" in markdown
    )
    # the other tables have no runs at 1/4 width either: their titles say the scale, without epochs
    assert (
        "## He et al. 2015, Table 2: 14-layer model on ImageNet, 10-view error (%), miniature at 1/4 of the "
        "paper's width\n" in markdown
    )
    assert "## Other runs (no paper cell), final test error (%)\n\nNone." in markdown

    plain = tmp_path / "plain"
    main([str(tmp_path / "runs"), "--out", str(plain)])
    markdown = (plain / "tables.md").read_text()
    assert "--width-scale" not in markdown and ", miniature at" not in markdown
    assert "## Shang et al. 2016, Table 1: ConvPool-CNN-C on CIFAR, error (%)\n" in markdown
    assert "| Baseline | `convpool_cnn_c relu` | — | 0 ok |" in markdown
    with (plain / "other_runs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(MINI_RUNS)  # one group per experiment


def test_the_miniatures_differences_and_claims_match_a_hand_computation(tmp_path):
    # CReLU 30.0, 30.2, 30.1 vs the baseline 31.0, 31.2, 31.4: the shifted samples of test_statistics' hand
    # computation: -1.10 [-1.52, -0.68], reproduced. PReLU 30.5, 30.7, 30.9 vs the baseline: diff -0.50, both
    # variances 0.04: se = sqrt(0.08/3) = 0.163299, df = 4, half-width 2.776445 * 0.163299 = 0.453391 ->
    # [-0.9534, -0.0466]: below 0, reproduced. Gaps (test - train): CReLU 8.0, 8.1, 7.9 vs the baseline 11.0,
    # 11.1, 11.2: diff -3.10, variances 0.01: se = 0.081650, df = 4, half-width 0.226697 -> [-3.3267, -2.8733].
    make_miniature_sweep(tmp_path / "runs")
    out = tmp_path / "tables"
    main([str(tmp_path / "runs"), "--width-scale", "0.25", "--out", str(out)])
    markdown = (out / "tables.md").read_text()
    assert "| CReLU | `convpool_cnn_c crelu width=0.25` | kaiming/fan_in | -1.10 [-1.52, -0.68] (n=3,3) |" in markdown
    assert "| + (double) | `convpool_cnn_c relu width=0.5` | kaiming/fan_in | -2.20 (n=1,3) |" in markdown
    for claim in (
        "| CReLU < Baseline (error) | Table 1, §3.1 | C10 Single | kaiming/fan_in | -1.10 [-1.52, -0.68] (n=3,3) "
        "| reproduced | 8.43 vs 9.17 |",
        "| + (half) ≈ CReLU (error within ±0.5) | Table 1, §3.1 | C10 Single | kaiming/fan_in "
        "| +0.03 [-0.28, +0.35] (n=3,3) | reproduced | 8.37 vs 8.43 |",
        "| AVR < Baseline (error) | Table 1, §3.1 | C10 Single | kaiming/fan_in | +0.30 (n=1,3) "
        "| not established (n=1) | 8.32 vs 9.17 |",
        "| PReLU (He et al.) < Baseline (error) | He et al. 2015, §2.1 and Table 2 (14-layer net, ImageNet) "
        "| C10 Single | kaiming/fan_in | -0.50 [-0.95, -0.05] (n=3,3) | reproduced | — vs 9.17 |",
        "| CReLU < Baseline (train/test gap) | Table 1, §3.1 (Single train vs Single) | C10 gap (test - train) "
        "| kaiming/fan_in | -3.10 [-3.33, -2.87] (n=3,3) | reproduced | 4.20 vs 8.08 |",
    ):
        assert claim in markdown
    with (out / "claims.csv").open() as f:
        prelu = next(c for c in csv.DictReader(f) if c["a"] == "PReLU (He et al.)")
    assert float(prelu["low"]) == pytest.approx(-0.953391, abs=1e-5)
    assert float(prelu["high"]) == pytest.approx(-0.046609, abs=1e-5)
    assert (prelu["paper_a"], prelu["paper_b"]) == ("", "9.17")  # no printed PReLU value in Shang et al.


def test_width_scales_in_words_and_in_floating_point():
    assert scale_text(0.25) == "1/4 of the paper's width"
    assert scale_text(1 / 3) == "1/3 of the paper's width"
    assert scale_text(0.3) == "3/10 of the paper's width"
    assert scale_text(2.0) == "2x the paper's width"
    # 1.5 x 0.1 is 0.15000000000000002 in binary floating point; a config's "0.15" reads as 0.15
    assert 1.5 * 0.1 != 0.15 and scaled_width(1.5, 0.1) == 0.15
    with pytest.raises(ValueError, match="> 0"):
        scale_table(crelu_table1(), 0.0)


def test_the_cli_refuses_a_width_scale_that_is_not_positive(tmp_path, capsys):
    make_run(tmp_path / "r")
    for bad in ("0", "-0.25", "quarter"):
        with pytest.raises(SystemExit):
            main([str(tmp_path), "--width-scale", bad, "--out", str(tmp_path / "t")])
    assert "--width-scale" in capsys.readouterr().err


def test_runs_of_different_custom_activations_are_different_variants():
    def config(target: str) -> dict:
        return {"model": {"name": "convpool_cnn_c"}, "activation": {"name": "custom", "target": target}}

    silu, mine = variant_from_config(config("torch.nn.SiLU")), variant_from_config(config("mypkg.acts.MyAct"))
    assert silu != mine
    assert silu.label() == "convpool_cnn_c custom:torch.nn.SiLU"


def test_an_unfinished_prelu_run_reads_its_slope_from_the_interpolation_train_py_saved(tmp_path):
    """An interrupted run has only `.hydra/config.yaml`, as Hydra saved it: the activation configs' slope is
    `${activation_default:prelu,slope}` there and run_dir `${hydra:runtime.output_dir}`. The tables attribute the
    run to PReLU with He et al.'s initial slope 0.25 (§2.1), and do not fail on what only Hydra resolves."""
    folder = tmp_path / "prelu"
    make_run(folder, activation="prelu", status="missing")
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    config.activation.slope = "${activation_default:prelu,slope}"
    config.run_dir = "${hydra:runtime.output_dir}"
    OmegaConf.save(config, folder / ".hydra" / "config.yaml")
    (run,) = read_runs([tmp_path])
    assert run.variant == make_variant("convpool_cnn_c", "prelu", 0.25) and run.variant.label().endswith("prelu(0.25)")
    assert run.config["run_dir"] == "${hydra:runtime.output_dir}"
    main([str(tmp_path), "--out", str(tmp_path / "tables")])
    assert "prelu(0.25)" in (tmp_path / "tables" / "tables.md").read_text()
