"""He, Zhang, Ren, Sun 2015, "Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet
Classification" (arXiv:1502.01852v1): Tables 2, 4, 5 and 6 as printed, ImageNet 2012 val error (%).

Each row: the paper's label, the network it names, then the printed values keyed by column. Each table also
names its baseline row and the paper's claims about its rows (PReLU below ReLU; rectnet/results/comparison.py).
"""

from __future__ import annotations

from rectnet.results.comparison import Claim
from rectnet.results.statistics import eval_protocol
from rectnet.results.table import Column, PaperTable, paper_table, row
from rectnet.results.variants import Variant, make_variant

IMAGENET = "imagenet"  # dataset.name of ImageNet runs


def _top1_top5(protocol: str, scales: str | None = None, key: str = "", title: str = "") -> tuple[Column, Column]:
    return (
        Column(f"{key}top1", f"{title}top-1", IMAGENET, eval_protocol(protocol, "top1_err", scales)),
        Column(f"{key}top5", f"{title}top-5", IMAGENET, eval_protocol(protocol, "top5_err", scales)),
    )


def prelu_table2() -> PaperTable:
    """Table 2 (p.3): the 14-layer model of Table 1, 10-view; the Xavier row is §2.2's comparison (p.5)."""
    small14 = "prelu_small14"
    # fmt: off
    rows = (
        row("ReLU",                     make_variant(small14, "relu"),         "kaiming", top1=33.82, top5=13.34),
        row("ReLU, Xavier init (§2.2)", make_variant(small14, "relu"),         "xavier",  top1=33.90, top5=13.44),
        row("PReLU, channel-shared",    make_variant(small14, "prelu_shared"),            top1=32.71, top5=12.87),
        row("PReLU, channel-wise",      make_variant(small14, "prelu"),                   top1=32.64, top5=12.75),
    )
    # fmt: on
    claims = tuple(Claim(p, "<", "ReLU", "Table 2, §2.1") for p in ("PReLU, channel-shared", "PReLU, channel-wise"))
    title = "He et al. 2015, Table 2: 14-layer model on ImageNet, 10-view error (%)"
    return paper_table("prelu_table2", title, _top1_top5("ten_view"), rows, "ReLU", claims)


def prelu_table4() -> PaperTable:
    """Table 4 (p.8): model A, ReLU vs PReLU, dense test at one scale s or multi-scale."""
    columns = (
        *_top1_top5("dense", "256", "s256_", "s=256 "),
        *_top1_top5("dense", "384", "s384_", "s=384 "),
        *_top1_top5("dense", "480", "s480_", "s=480 "),
        *_top1_top5("dense", "multi", "multi_", "multi-scale "),
    )
    # fmt: off
    rows = (
        row("ReLU",  make_variant("prelu_a", "relu"),  s256_top1=26.25, s256_top5=8.25, s384_top1=24.77, s384_top5=7.26, s480_top1=25.46, s480_top5=7.63, multi_top1=24.02, multi_top5=6.51),
        row("PReLU", make_variant("prelu_a", "prelu"), s256_top1=25.81, s256_top5=8.08, s384_top1=24.20, s384_top5=7.03, s480_top1=24.83, s480_top5=7.39, multi_top1=22.97, multi_top5=6.28),
    )
    # fmt: on
    claims = (Claim("PReLU", "<", "ReLU", "Table 4, §4"),)
    title = "He et al. 2015, Table 4: model A on ImageNet, dense testing, error (%)"
    return paper_table("prelu_table4", title, columns, rows, "ReLU", claims)


def _model(letter: str, activation: str) -> Variant:
    """Model A, B or C of Table 3 with `activation`."""
    return make_variant(f"prelu_{letter.lower()}", activation)


def _a_claims(source: str) -> tuple[Claim, ...]:
    """Model A with PReLU below model A with ReLU (the same network otherwise)."""
    return (Claim("A, PReLU", "<", "A, ReLU", source),)


def prelu_table5() -> PaperTable:
    """Table 5 (p.9): single models A/B/C, 10-view."""
    # fmt: off
    rows = (
        row("A, ReLU",  _model("A", "relu"),  top1=26.48, top5=8.59),
        row("A, PReLU", _model("A", "prelu"), top1=25.59, top5=8.23),
        row("B, PReLU", _model("B", "prelu"), top1=25.53, top5=8.13),
        row("C, PReLU", _model("C", "prelu"), top1=24.27, top5=7.38),
    )
    # fmt: on
    title = "He et al. 2015, Table 5: models A/B/C on ImageNet, 10-view error (%)"
    return paper_table("prelu_table5", title, _top1_top5("ten_view"), rows, "A, ReLU", _a_claims("Table 5, §4"))


def prelu_table6() -> PaperTable:
    """Table 6 (p.9): single models A/B/C, dense multi-scale, multi-view."""
    # fmt: off
    rows = (
        row("A, ReLU",  _model("A", "relu"),  top1=24.02, top5=6.51),
        row("A, PReLU", _model("A", "prelu"), top1=22.97, top5=6.28),
        row("B, PReLU", _model("B", "prelu"), top1=22.85, top5=6.27),
        row("C, PReLU", _model("C", "prelu"), top1=21.59, top5=5.71),
    )
    # fmt: on
    title = "He et al. 2015, Table 6: models A/B/C on ImageNet, dense multi-scale error (%)"
    return paper_table("prelu_table6", title, _top1_top5("dense", "multi"), rows, "A, ReLU", _a_claims("Table 6, §4"))
