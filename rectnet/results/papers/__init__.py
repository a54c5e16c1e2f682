"""The papers' result tables as data, one module per paper."""

from __future__ import annotations

from rectnet.results.papers.he2015 import prelu_table2, prelu_table4, prelu_table5, prelu_table6
from rectnet.results.papers.shang2016 import crelu_table1, crelu_table2, crelu_table4
from rectnet.results.table import PaperTable


def paper_tables() -> list[PaperTable]:
    """Every table `python -m rectnet.tables` fills, in the order it writes them."""
    return [
        crelu_table1(),
        crelu_table2(),
        crelu_table4(),
        prelu_table2(),
        prelu_table4(),
        prelu_table5(),
        prelu_table6(),
    ]
