"""The papers' result tables from run directories: measured mean ± spread (n) next to the paper's value.

    python -m rectnet.tables <sweep or run dir>... [--out DIR]        (default --out: ./tables)

Every run directory at or under the given paths is read (rectnet/results/runs.py), grouped by network
variant, init and dataset (variants.py, table.py), measured per column (statistics.py) and written beside the
papers' printed values (papers/) as tables.md, one CSV per table, claims.csv and runs.csv (render.py). Under
each table with runs: every row's difference to the table's baseline row with its 95% Welch interval, Table 1's
train/test gaps, and the verdict on each of the paper's claims about the table's rows (comparison.py).

Tables written:

* Shang et al. 2016 (CReLU) Table 1 (ConvPool-CNN-C, CIFAR-10/100: Single train/test, Average, Vote,
  params), Table 2 (VGG on CIFAR: Single, Average, Vote), Table 4 (All-CNN-B on ImageNet: top-1/top-5 centre
  crop and 10 patches; params from Table 5).
* He et al. 2015 (PReLU) Table 2 (14-layer model, 10-view; plus §2.2's "ReLU, Xavier init" comparison),
  Table 4 (model A, ReLU vs PReLU, dense test per scale), Table 5 (models A/B/C, 10-view) and Table 6
  (models A/B/C, dense multi-scale).
* "Other runs": every group that no paper cell used (e.g. synthetic-data runs), with its final test errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rectnet.results import comparison, render, runs, statistics, variants


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rectnet.tables",
        description="The papers' result tables (CReLU Tables 1, 2, 4; PReLU Tables 2, 4-6) from run directories.",
        epilog="\n\n".join(m.__doc__ for m in (sys.modules[__name__], runs, variants, statistics, comparison, render)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", help="sweep or run directories (searched recursively)")
    parser.add_argument("--out", default="tables", help="folder for tables.md and the CSVs (default: ./tables)")
    args = parser.parse_args(argv)
    try:
        found = runs.read_runs(args.dirs)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    paths = render.write_all(found, Path(args.out))
    print(f"{len(found)} run directories ({render.runs_text(runs.count_statuses(found))})")
    print(f"tables: {paths[0]}")
    print(f"CSV:    {', '.join(str(p) for p in paths[1:])}")


if __name__ == "__main__":
    main()
