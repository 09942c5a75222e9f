#!/usr/bin/env python
"""Redraws the benchmark's plots from its CSV (benchmark.py draws them after each full run).

    python benchmarks/plot.py                       # the latest run of the default --out-dir
    python benchmarks/plot.py --csv benchmarks/results/benchmark.csv --out-dir benchmarks/results

The latest run in the CSV by default; the figures are those of bench/plots.py. The PNGs go
beside the CSV unless --out-dir names another folder: the second command above redraws the
committed plots, the one way this script writes into the checkout.
"""

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench.options import default_out_dir  # noqa: E402
from bench.plots import plot_rows  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, default=default_out_dir() / "benchmark.csv", help=f"the benchmark CSV to read (default {default_out_dir() / 'benchmark.csv'}, where benchmark.py writes by default; the committed one is benchmarks/results/benchmark.csv)")
    p.add_argument("--run-id", metavar="ID", help="the run to draw, its run_id column (default: the latest in the CSV)")
    p.add_argument("--out-dir", type=Path, metavar="DIR", help="folder the PNGs are written to (default: the CSV's folder)")
    args = p.parse_args(argv)
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"plot: {args.csv} has no rows")
    run_id = args.run_id or max(r["run_id"] for r in rows)
    rows = [r for r in rows if r["run_id"] == run_id]
    if not rows:
        raise SystemExit(f"plot: no rows of run {run_id} in {args.csv}")
    paths = plot_rows(rows, args.out_dir or args.csv.parent)
    for path in paths:
        print(path)
    if not paths:
        print(f"plot: run {run_id} has no (mode, N, C, dtype) with two or more values of A: nothing to draw")


if __name__ == "__main__":
    main()
