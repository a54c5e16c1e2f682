"""rectnet.results.comparison: the Student t quantile, Welch's interval of a difference of means, the verdicts
on the papers' claims, and the tables of a fabricated sweep directory gaining them (`python -m rectnet.tables`)."""

from __future__ import annotations

import csv
import math

import pytest
from test_tables import _rows, make_run

from rectnet.results.cli import main
from rectnet.results.comparison import Claim, compare_table, t_quantile, verdict, welch
from rectnet.results.papers import crelu_table1
from rectnet.results.table import paper_table, row
from rectnet.results.variants import make_variant


@pytest.mark.parametrize(
    ("p", "df", "printed"),
    [
        # two-sided 95%: t_{0.975, df} as printed in t tables (3 decimals)
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 3, 3.182),
        (0.975, 4, 2.776),
        (0.975, 5, 2.571),
        (0.975, 10, 2.228),
        (0.975, 30, 2.042),
        (0.95, 4, 2.132),
        (0.995, 10, 3.169),
        (0.9995, 2, 31.599),
    ],
)
def test_t_quantile_matches_printed_tables(p, df, printed):
    assert round(t_quantile(p, df), 3) == printed
    assert t_quantile(1 - p, df) == pytest.approx(-t_quantile(p, df), rel=1e-12)  # symmetric


def test_t_quantile_matches_the_closed_forms():
    for p in (0.6, 0.8, 0.9, 0.95, 0.975, 0.99, 0.999):
        # df = 1 (Cauchy): tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p))
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
        # df = 4: a = 4p(1-p), q = cos(arccos(sqrt(a)) / 3) / sqrt(a), t = 2 sqrt(q - 1)
        a = 4 * p * (1 - p)
        q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
        assert t_quantile(p, 4) == pytest.approx(2 * math.sqrt(q - 1), rel=1e-9)
    # more digits of t_{0.975, df} (standard values), and the normal quantile as df grows
    assert t_quantile(0.975, 4) == pytest.approx(2.7764451051977987, rel=1e-10)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281388519649385, rel=1e-10)
    assert t_quantile(0.975, 30) == pytest.approx(2.0422724563012373, rel=1e-10)
    assert t_quantile(0.975, 1e5) == pytest.approx(1.959963984540054, abs=1e-4)
    assert t_quantile(0.5, 3) == 0.0
    # a Welch df is rarely whole: the quantile moves monotonically between the whole ones
    assert t_quantile(0.975, 3) > t_quantile(0.975, 3.5) > t_quantile(0.975, 4)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_welch_interval_matches_a_hand_computation():
    # Equal variances: a = [1, 2, 3], b = [2, 3, 4]: means 2 and 3, sample variances 1 and 1.
    # diff = -1; se^2 = 1/3 + 1/3 = 2/3, se = 0.816497; df = (2/3)^2 / ((1/3)^2/2 + (1/3)^2/2) = (4/9)/(1/9) = 4;
    # t_{0.975, 4} = 2.776445; half-width = 2.776445 * 0.816497 = 2.266958 -> [-3.266958, 1.266958]
    d = welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert (d.diff, d.n_a, d.n_b, d.df) == (-1.0, 3, 3, pytest.approx(4.0))
    assert (d.low, d.high) == (pytest.approx(-3.266958, abs=1e-6), pytest.approx(1.266958, abs=1e-6))
    assert d.text() == "-1.00 [-3.27, +1.27] (n=3,3)"

    # Unequal variances: a = [1, 2, 3] (mean 2, var 1), b = [4, 6, 8] (mean 6, var 4).
    # diff = -4; se^2 = 1/3 + 4/3 = 5/3, se = 1.290994; df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = (25/9)/(17/18)
    # = 50/17 = 2.941176; t_{0.975, 50/17} = 3.218759 (from the regularized incomplete beta at 30 digits, mpmath);
    # half-width = 3.218759 * 1.290994 = 4.155400 -> [-8.155400, 0.155400]: the pooled-variance t (df 4,
    # half-width 2.776445 * 1.290994 = 3.584) would be narrower.
    d = welch([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    assert (d.diff, d.df) == (-4.0, pytest.approx(50 / 17))
    assert (d.low, d.high) == (pytest.approx(-8.155400, abs=1e-6), pytest.approx(0.155400, abs=1e-6))

    # n = 1 in a group: the difference of means, no interval
    d = welch([8.0], [8.5, 9.5])
    assert (d.diff, d.low, d.high, d.df) == (-1.0, None, None, None)
    assert d.text() == "-1.00 (n=1,2)"


def test_verdicts_of_constructed_samples():
    low, high = [5.0, 5.1, 4.9], [9.0, 9.1, 8.9]  # 4 points apart, spread 0.1
    assert verdict("<", welch(low, high)) == "reproduced"
    assert verdict("<", welch(high, low)) == "opposite"
    overlapping = ([8.0, 9.0, 10.0], [8.5, 9.5, 10.5, 9.0])
    assert verdict("<", welch(*overlapping)) == "not established at n=3,4"
    assert verdict("<", welch([5.0], high)) == "not established (n=1)"
    assert verdict("<", welch([5.0, 5.0], [9.0, 9.0])) == "not established (no spread between seeds)"
    assert verdict("<", None) == "not measured"

    # "A ≈ B": the whole interval within ±delta / wholly outside it / neither
    close = ([8.40, 8.45, 8.50], [8.42, 8.44, 8.47])  # diff +0.007, interval about ±0.1
    assert verdict("≈", welch(*close), delta=0.5) == "reproduced"
    assert verdict("≈", welch(*close), delta=0.05) == "not established at n=3,3"
    assert verdict("≈", welch(low, high), delta=0.5) == "opposite"
    assert verdict("≈", welch(*overlapping), delta=0.5) == "not established at n=3,4"
    with pytest.raises(ValueError, match="relation"):
        verdict(">", welch(low, high))


def _sweep(root, crelu_errors, half_errors=None):
    """3 seeds of the baseline (test 9.0, 9.2, 9.4; last epoch's train 1.0, 1.1, 1.2: gaps 8.0, 8.1, 8.2), 3 of
    CReLU (test `crelu_errors`, train 4.0, 4.1, 4.2), optionally 3 of CReLU-half, and 1 AVR run."""
    for seed, (base, crelu) in enumerate(zip([9.0, 9.2, 9.4], crelu_errors, strict=True)):
        make_run(root / f"base{seed}", seed=seed, top1=base, train_top1=1.0 + 0.1 * seed)
        make_run(root / f"crelu{seed}", activation="crelu", seed=seed, top1=crelu, train_top1=4.0 + 0.1 * seed)
    for seed, half in enumerate(half_errors or []):
        make_run(root / f"half{seed}", activation="crelu", width=0.5, seed=seed, top1=half, train_top1=4.5)
    make_run(root / "avr0", activation="avr", top1=8.5, train_top1=4.0)


def test_a_sweep_directory_gains_differences_gaps_and_claims(tmp_path):
    # CReLU 8.0, 8.2, 8.1 (mean 8.1, var 0.01) vs the baseline 9.0, 9.2, 9.4 (mean 9.2, var 0.04):
    # diff = -1.10; se^2 = 0.01/3 + 0.04/3 = 0.016667, se = 0.129099; df = (0.05/3)^2 / ((0.01/3)^2/2 +
    # (0.04/3)^2/2) = 50/17 = 2.941; t = 3.218759; half-width 0.415540 -> [-1.5155, -0.6845]: below 0, reproduced.
    # Gaps: CReLU 4.0, 4.1, 3.9 vs baseline 8.0, 8.1, 8.2: diff -4.10, vars 0.01 and 0.01, se = 0.081650, df = 4,
    # half-width 2.776445 * 0.081650 = 0.226697 -> [-4.3267, -3.8733]: reproduced.
    # CReLU-half 8.1, 8.0, 8.3 vs CReLU: diff +0.0333, interval [-0.279, +0.345] within ±0.5: close, reproduced.
    _sweep(tmp_path / "runs", [8.0, 8.2, 8.1], half_errors=[8.1, 8.0, 8.3])
    out = tmp_path / "tables"
    main([str(tmp_path / "runs"), "--out", str(out)])
    markdown = (out / "tables.md").read_text()

    # the table itself as before
    baseline = "| Baseline | `convpool_cnn_c relu` | kaiming/fan_in | 3 ok | 1.10 ± 0.10 (n=3) | 1.09 |"
    assert baseline + " 9.20 ± 0.20 (n=3) | 9.17 |" in markdown
    # the difference column, per row, to the baseline
    assert "| CReLU | `convpool_cnn_c crelu` | kaiming/fan_in | -1.10 [-1.52, -0.68] (n=3,3) | — |" in markdown
    assert "| AVR | `convpool_cnn_c avr` | kaiming/fan_in | -0.70 (n=1,3) | — |" in markdown
    # the gap per row
    assert "| CReLU | `convpool_cnn_c crelu` | kaiming/fan_in | 4.00 ± 0.10 (n=3) | 4.20 | — | 17.23 |" in markdown
    # the claims
    claims = [
        "| CReLU < Baseline (error) | Table 1, §3.1 | C10 Single | kaiming/fan_in | -1.10 [-1.52, -0.68] (n=3,3) "
        "| reproduced | 8.43 vs 9.17 |",
        "| + (half) ≈ CReLU (error within ±0.5) | Table 1, §3.1 | C10 Single | kaiming/fan_in "
        "| +0.03 [-0.28, +0.35] (n=3,3) | reproduced | 8.37 vs 8.43 |",
        "| AVR < Baseline (error) | Table 1, §3.1 | C10 Single | kaiming/fan_in | -0.70 (n=1,3) "
        "| not established (n=1) | 8.32 vs 9.17 |",
        "| CReLU < Baseline (train/test gap) | Table 1, §3.1 (Single train vs Single) | C10 gap (test - train) "
        "| kaiming/fan_in | -4.10 [-4.33, -3.87] (n=3,3) | reproduced | 4.20 vs 8.08 |",
    ]
    for claim in claims:
        assert claim in markdown
    assert markdown.count("Claims (95% Welch interval") == 1  # the tables without runs gain nothing

    with (out / "crelu_table1.csv").open() as f:
        by_label = {r["model"]: r for r in csv.DictReader(f)}
    crelu = by_label["CReLU"]
    assert float(crelu["C10 Single Δ"]) == pytest.approx(-1.1)
    assert float(crelu["C10 Single Δ low"]) == pytest.approx(-1.515540, abs=1e-5)
    assert float(crelu["C10 Single Δ high"]) == pytest.approx(-0.684460, abs=1e-5)
    assert float(crelu["C10 gap (test - train)"]) == pytest.approx(4.0)
    assert float(crelu["C10 gap (test - train) paper"]) == pytest.approx(8.43 - 4.23)
    assert by_label["Baseline"]["C10 Single Δ"] == ""  # the baseline is not compared with itself
    assert by_label["CReLU"]["C10 Single paper"] == "8.43"  # the existing columns as before

    with (out / "claims.csv").open() as f:
        checked = list(csv.DictReader(f))
    assert [(c["table"], c["column"], c["verdict"]) for c in checked] == [
        ("crelu_table1", "C10 Single", "reproduced"),
        ("crelu_table1", "C10 Single", "reproduced"),
        ("crelu_table1", "C10 Single", "not established (n=1)"),
        # He et al.'s PReLU < ReLU, carried to this table, is checked wherever the baseline has runs
        ("crelu_table1", "C10 Single", "not measured (no runs of PReLU (He et al.))"),
        ("crelu_table1", "C10 gap (test - train)", "reproduced"),
    ]
    assert float(checked[0]["df"]) == pytest.approx(50 / 17, rel=1e-5)


@pytest.mark.parametrize(
    ("crelu_errors", "expected"),
    [
        ([9.9, 10.1, 10.0], "opposite"),  # mean 10.0 vs 9.2, spread 0.1-0.2: above the baseline
        ([8.8, 9.6, 9.9], "not established at n=3,3"),  # mean 9.43, overlapping the baseline's 9.0-9.4
    ],
)
def test_the_claim_verdict_follows_the_runs(tmp_path, crelu_errors, expected):
    _sweep(tmp_path / "runs", crelu_errors)
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "tables")])
    line = "| CReLU < Baseline (error) | Table 1, §3.1 | C10 Single | kaiming/fan_in |"
    (claim,) = [x for x in (tmp_path / "tables" / "tables.md").read_text().splitlines() if x.startswith(line)]
    assert claim.endswith(f"| {expected} | 8.43 vs 9.17 |")


def test_a_claim_is_checked_only_where_the_paper_prints_it(tmp_path):
    """Table 1 prints CReLU-half 2.2 points behind CReLU on CIFAR-100 (0.06 from it on CIFAR-10): no "≈" claim
    on CIFAR-100; AVR above the baseline in C10 Average (10.26 vs 10.20): no "AVR < Baseline" there."""
    variants = (("relu", 1.0), ("crelu", 1.0), ("crelu", 0.5), ("avr", 1.0))
    for seed in range(2):
        for dataset in ("cifar10", "cifar100"):
            for activation, width in variants:
                name = f"{activation}{width}_{dataset}_{seed}"
                make_run(tmp_path / name, activation=activation, width=width, dataset=dataset, seed=seed, top1=30.0)
        for activation in ("relu", "avr"):  # a 2-fold set each: C10 Average has values in both rows
            folds = {"num_folds": 2, "fold": seed}
            make_run(tmp_path / f"{activation}_fold{seed}", activation=activation, top1=10.0 + seed, **folds)
    table = crelu_table1()
    lines = list(_rows(table, tmp_path).values())
    checked = {(r.claim.a, r.claim.relation, r.column) for r in compare_table(table, lines).claims}
    assert ("+ (half)", "≈", "C10 Single") in checked and ("+ (half)", "≈", "C100 Single") not in checked
    assert ("AVR", "<", "C10 Single") in checked and ("AVR", "<", "C100 Single") in checked
    assert ("AVR", "<", "C10 Average") not in checked
    assert ("CReLU", "<", "C100 gap (test - train)") in checked


def test_a_claim_naming_no_row_is_refused():
    columns = crelu_table1().columns
    rows = [row("Baseline", make_variant("convpool_cnn_c", "relu"), c10=9.17)]
    with pytest.raises(ValueError, match="no row \\['CReLU'\\]"):
        paper_table("t", "T", columns, rows, "Baseline", [Claim("CReLU", "<", "Baseline", "Table 1")])


def test_a_carried_claim_is_made_in_every_column_a_tables_own_claim_only_where_printed():
    own = Claim("AVR", "<", "Baseline", "Table 1, §3.1")
    carried = Claim("PReLU (He et al.)", "<", "Baseline", "He et al. 2015, Table 2", carried=True)
    assert own.made_by(8.32, 9.17) and not own.made_by(10.26, 10.20) and not own.made_by(None, 9.17)
    assert carried.made_by(None, 9.17) and carried.made_by(None, None)


def test_he_et_als_prelu_claim_is_checked_in_every_column_of_table_1_with_runs(tmp_path):
    """PReLU has no printed value in Shang et al.'s Table 1, so He et al.'s PReLU < ReLU is checked wherever both
    rows have runs, C10 Average included, where Table 1's own AVR < Baseline is not (printed 10.26 vs 10.20)."""
    for seed in range(2):
        for dataset in ("cifar10", "cifar100"):
            for activation in ("relu", "prelu", "avr"):
                name = f"{activation}_{dataset}_{seed}"
                make_run(tmp_path / name, activation=activation, dataset=dataset, seed=seed, top1=30.0 + seed)
        for activation in ("relu", "prelu", "avr"):  # a 2-fold set each: C10 Average has values in every row
            folds = {"num_folds": 2, "fold": seed}
            make_run(tmp_path / f"{activation}_fold{seed}", activation=activation, top1=10.0 + seed, **folds)
    table = crelu_table1()
    checked = {(r.claim.a, r.column) for r in compare_table(table, list(_rows(table, tmp_path).values())).claims}
    prelu = {column for a, column in checked if a == "PReLU (He et al.)"}
    assert prelu == {"C10 Single", "C10 Average", "C100 Single"}  # Vote: no test_logits.pt, no values
    assert ("AVR", "C10 Average") not in checked and ("AVR", "C10 Single") in checked
