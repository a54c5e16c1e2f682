"""Shang, Sohn, Almeida, Lee 2016, "Understanding and Improving Convolutional Neural Networks via Concatenated
Rectified Linear Units" (ICML, PMLR 48): Tables 1, 2 and 4 as printed.

Each row: the paper's label, the network it names, then the printed values keyed by column (pm(v, e) is a
value printed "v±e", the Average protocol's standard error, §3.1). A column the paper leaves blank is left out.
Each table also names its baseline row and the paper's claims about its rows (rectnet/results/comparison.py
checks each claim in the columns where the printed values make it, and gives the verdict of the runs). Table 1
gains one row the paper lacks, PReLU (He et al. 2015's claim carried to ConvPool-CNN-C: TABLE1_PRELU_NOTE).
"""

from __future__ import annotations

from rectnet.results.comparison import Claim
from rectnet.results.statistics import (
    eval_protocol,
    fold_average,
    fold_vote,
    params_m,
    single_gap,
    single_test,
    single_train,
)
from rectnet.results.table import Column, Gap, PaperTable, paper_table, pm, row
from rectnet.results.variants import Variant, make_variant

IMAGENET = "imagenet"  # dataset.name of ImageNet runs


def _cifar_columns(with_train: bool) -> tuple[Column, ...]:
    """Single (train), Single, Average, Vote for CIFAR-10 then CIFAR-100 (§3.1's protocols)."""
    columns = []
    for dataset, short in (("cifar10", "C10"), ("cifar100", "C100")):
        key = short.lower()
        if with_train:
            columns.append(Column(f"{key}_train", f"{short} Single train", dataset, single_train, compare=False))
        columns += [
            Column(key, f"{short} Single", dataset, single_test),
            Column(f"{key}_avg", f"{short} Average", dataset, fold_average),
            Column(f"{key}_vote", f"{short} Vote", dataset, fold_vote),
        ]
    return tuple(columns)


def _cifar_gaps() -> tuple[Gap, ...]:
    """Table 1's overfitting, per dataset: Single test error - Single train error, per run."""
    return tuple(
        Gap(f"{short} gap (test - train)", f"{short} Single train", f"{short} Single", dataset, single_gap)
        for dataset, short in (("cifar10", "C10"), ("cifar100", "C100"))
    )


def _convpool(activation: str, width: float = 1.0) -> Variant:
    return make_variant("convpool_cnn_c", activation, width=width)


PRELU_ROW = "PReLU (He et al.)"
TABLE1_PRELU_NOTE = (
    f"{PRELU_ROW} is not a row of Shang et al.'s Table 1: it is He et al. 2015's PReLU (channel-wise, initial slope "
    "0.25, §2.1) in ConvPool-CNN-C with the same recipe (experiment=convpool_prelu), so that He et al.'s claim "
    "PReLU < ReLU (their Table 2: 32.64 vs 33.82 top-1 on a 14-layer ImageNet net) is tested on this net beside "
    "Shang et al.'s rows. It has no printed values; its claim is checked in every compared column."
)


def crelu_table1() -> PaperTable:
    """Table 1 (p.4): ConvPool-CNN-C family on CIFAR-10/100, test error (%), params (M); plus the PReLU row."""
    columns = (*_cifar_columns(with_train=True), Column("params", "params (M)", "cifar10", params_m, compare=False))
    # fmt: off
    rows = (
        row("Baseline",   _convpool("relu"),      c10_train=1.09, c10=9.17, c10_avg=pm(10.20, 0.09), c10_vote=7.55, c100_train=13.68, c100=36.30, c100_avg=pm(38.52, 0.12), c100_vote=31.26, params=1.4),
        row("+ (double)", _convpool("relu", 2.0),  c10_train=0.47, c10=8.65, c10_avg=pm(9.87, 0.09),  c10_vote=7.28, c100_train=6.03,  c100=34.77, c100_avg=pm(36.73, 0.15), c100_vote=28.34, params=5.6),
        row("AVR",        _convpool("avr"),       c10_train=4.10, c10=8.32, c10_avg=pm(10.26, 0.10), c10_vote=7.76, c100_train=19.35, c100=35.00, c100_avg=pm(37.24, 0.20), c100_vote=29.77, params=1.4),
        row("CReLU",      _convpool("crelu"),     c10_train=4.23, c10=8.43, c10_avg=pm(9.39, 0.11),  c10_vote=7.09, c100_train=14.25, c100=31.48, c100_avg=pm(33.76, 0.12), c100_vote=27.60, params=2.8),
        row("+ (half)",   _convpool("crelu", 0.5), c10_train=4.73, c10=8.37, c10_avg=pm(9.44, 0.09),  c10_vote=7.09, c100_train=21.01, c100=33.68, c100_avg=pm(36.20, 0.18), c100_vote=29.93, params=0.7),
        # not in Shang et al.'s table (no printed values): He et al. 2015's PReLU on this net (TABLE1_PRELU_NOTE)
        row(PRELU_ROW,    _convpool("prelu")),
    )
    # fmt: on
    claims = (
        Claim("CReLU", "<", "Baseline", "Table 1, §3.1"),
        # a quarter of CReLU's parameters (half the filters, each doubled by CReLU): printed within 0.06 of CReLU
        # on CIFAR-10 (2.2-2.4 behind on CIFAR-100, where the paper makes no such claim)
        Claim("+ (half)", "≈", "CReLU", "Table 1, §3.1"),
        # printed lower than the baseline on CIFAR-100 and C10 Single; slightly higher on C10 Average and Vote
        Claim("AVR", "<", "Baseline", "Table 1, §3.1"),
        # He et al. 2015 §2.1 / Table 2: channel-wise PReLU 32.64 vs ReLU 33.82 top-1 (their 14-layer net, ImageNet,
        # 10-view); a claim about the activation, not about one net, so carried here to every compared column
        Claim(PRELU_ROW, "<", "Baseline", "He et al. 2015, §2.1 and Table 2 (14-layer net, ImageNet)", carried=True),
        # less overfitting: Single train 4.23 vs 1.09 with Single test 8.43 vs 9.17 (C10), 14.25/31.48 vs 13.68/36.30
        Claim("CReLU", "<", "Baseline", "Table 1, §3.1 (Single train vs Single)", quantity="gap"),
    )
    title = "Shang et al. 2016, Table 1: ConvPool-CNN-C on CIFAR, error (%)"
    return paper_table("crelu_table1", title, columns, rows, "Baseline", claims, _cifar_gaps(), (TABLE1_PRELU_NOTE,))


def _vgg(crelu_at: tuple[int, ...]) -> Variant:
    """Table 2's rows: CReLU after the listed convs, whose filters are halved; ReLU elsewhere."""
    if not crelu_at:
        return make_variant("vgg_cifar", "relu")
    return make_variant("vgg_cifar", "crelu", act_at=crelu_at, halve_at=crelu_at)


def crelu_table2() -> PaperTable:
    """Table 2 (p.5): VGG on CIFAR, CReLU at conv1 / 1,3 / 1,3,5 with those layers halved, test error (%)."""
    # fmt: off
    rows = (
        row("VGG",         _vgg(()),        c10=6.35, c10_avg=pm(6.90, 0.03), c10_vote=5.43, c100=28.99, c100_avg=pm(30.27, 0.09), c100_vote=26.85),
        row("(conv1)",     _vgg((1,)),      c10=6.18, c10_avg=pm(6.45, 0.05), c10_vote=5.22, c100=27.29, c100_avg=pm(28.43, 0.11), c100_vote=24.67),
        row("(conv1,3)",   _vgg((1, 3)),    c10=5.94, c10_avg=pm(6.45, 0.02), c10_vote=5.09, c100=26.52, c100_avg=pm(27.79, 0.08), c100_vote=23.93),
        row("(conv1,3,5)", _vgg((1, 3, 5)), c10=6.06, c10_avg=pm(6.45, 0.07), c10_vote=5.16, c100=26.16, c100_avg=pm(27.67, 0.07), c100_vote=23.66),
    )
    # fmt: on
    claims = tuple(Claim(label, "<", "VGG", "Table 2, §3.1") for label in ("(conv1)", "(conv1,3)", "(conv1,3,5)"))
    title = "Shang et al. 2016, Table 2: VGG on CIFAR, test error (%)"
    return paper_table("crelu_table2", title, _cifar_columns(with_train=False), rows, "VGG", claims)


def _allcnn(activation: str, act_at: tuple[int, ...] | None = None, halve_at: tuple[int, ...] = ()) -> Variant:
    return make_variant("allcnn_b", activation, act_at=act_at, halve_at=halve_at)


def _up_to(n: int) -> tuple[int, ...]:
    return tuple(range(1, n + 1))


def crelu_table4() -> PaperTable:
    """Table 4 (p.6): All-CNN-B variants, ImageNet val error (%), centre crop and 10 patches (†); params from
    Table 5 (p.6), which lists them for four of the rows."""
    columns = (
        Column("top1", "top-1", IMAGENET, eval_protocol("center", "top1_err")),
        Column("top5", "top-5", IMAGENET, eval_protocol("center", "top5_err")),
        Column("top1_10", "top-1 (10 patches)", IMAGENET, eval_protocol("ten_view", "top1_err")),
        Column("top5_10", "top-5 (10 patches)", IMAGENET, eval_protocol("ten_view", "top5_err")),
        Column("params", "params (M)", IMAGENET, params_m, compare=False),
    )
    # fmt: off
    rows = (
        row("Baseline",          _allcnn("relu"),                       top1=41.81, top5=19.74, top1_10=38.03, top5_10=17.17, params=9.4),
        row("AVR (conv1-4)",     _allcnn("avr", _up_to(4)),             top1=41.12, top5=19.25, top1_10=37.32, top5_10=16.49),
        row("AVR (conv1-7)",     _allcnn("avr", _up_to(7)),             top1=42.36, top5=20.05, top1_10=38.21, top5_10=17.42),
        row("AVR (conv1-9)",     _allcnn("avr", _up_to(9)),             top1=43.33, top5=21.05, top1_10=39.70, top5_10=18.39),
        row("CReLU (conv1,4,7)", _allcnn("crelu", (1, 4, 7), (1, 4, 7)), top1=40.45, top5=18.58, top1_10=35.70, top5_10=15.32, params=8.6),
        row("CReLU (conv1-4)",   _allcnn("crelu", _up_to(4)),           top1=39.82, top5=18.28, top1_10=36.20, top5_10=15.72, params=10.1),
        row("CReLU (conv1-7)",   _allcnn("crelu", _up_to(7)),           top1=39.97, top5=18.33, top1_10=36.53, top5_10=16.01),
        row("CReLU (conv1-9)",   _allcnn("crelu", _up_to(9)),           top1=40.15, top5=18.58, top1_10=36.50, top5_10=16.14),
        row("CReLU (all)",       _allcnn("crelu", None, _up_to(12)),    top1=40.93, top5=19.39, top1_10=37.28, top5_10=16.72, params=4.7),
    )
    # fmt: on
    crelu = ("CReLU (conv1,4,7)", "CReLU (conv1-4)", "CReLU (conv1-7)", "CReLU (conv1-9)", "CReLU (all)")
    # AVR in conv1-4 only: deeper, the table prints AVR above the baseline
    claims = tuple(Claim(label, "<", "Baseline", "Table 4, §3.2") for label in (*crelu, "AVR (conv1-4)"))
    title = "Shang et al. 2016, Table 4: All-CNN-B on ImageNet, validation error (%) (params: Table 5)"
    return paper_table("crelu_table4", title, columns, rows, "Baseline", claims)
