"""The papers' result tables from run directories: measured mean ± spread (n) next to the paper's value.

    python -m rectnet.tables <sweep or run dir>... [--out DIR]        (default --out: ./tables)
                             [--width-scale S] [--page FILE [--curves DIR]]

--width-scale S: a miniature (miniature.py): runs at S times a paper row's width fill that row, e.g. 0.25: the
quarter-width sweep of scripts/reproduce/crelu_table1_mini.sh fills Table 1 (+ (half) at 0.125, + (double) at
0.5); each table's title says "at 1/4 of the paper's width, E epochs". --page FILE: also a results page for
docs/results/ (page.py: the commands, machine, CPU-hours, the tables with runs); --curves DIR: the output of
`python -m rectnet.analysis.curves`, copied beside the page and linked.

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

from rectnet.results import comparison, miniature, page, render, runs, statistics, variants


def _width_scale(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rectnet.tables",
        description="The papers' result tables (CReLU Tables 1, 2, 4; PReLU Tables 2, 4-6) from run directories.",
        epilog="\n\n".join(
            m.__doc__ for m in (sys.modules[__name__], runs, variants, statistics, comparison, render, miniature, page)
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", help="sweep or run directories (searched recursively)")
    parser.add_argument("--out", default="tables", help="folder for tables.md and the CSVs (default: ./tables)")
    parser.add_argument(
        "--width-scale",
        type=_width_scale,
        metavar="S",
        help="a miniature: runs at S x a paper row's width fill that row (e.g. 0.25; default: the paper's widths)",
    )
    parser.add_argument("--page", type=Path, metavar="FILE", help="also write a results page (e.g. docs/results/x.md)")
    parser.add_argument("--curves", type=Path, metavar="DIR", help="with --page: rectnet.analysis.curves' output")
    args = parser.parse_args(argv)
    if args.curves is not None and args.page is None:
        parser.error("--curves goes with --page")
    try:
        found = runs.read_runs(args.dirs)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    paths = render.write_all(found, Path(args.out), args.width_scale)
    print(f"{len(found)} run directories ({render.runs_text(runs.count_statuses(found))})")
    print(f"tables: {paths[0]}")
    print(f"CSV:    {', '.join(str(p) for p in paths[1:])}")
    if args.page is not None:
        filled, extra = render.fill_all(found, args.width_scale)
        dirs = [Path(d) for d in args.dirs]
        command = list(sys.argv[1:] if argv is None else argv)
        print(f"page:   {page.write_page(args.page, found, filled, extra, dirs, command, args.curves)}")


if __name__ == "__main__":
    main()
