"""Compare methods across MLflow experiments: mean ± std per method, the paired difference to a
reference method seed by seed, and the run ids behind every number.

    python experiments/compare.py --experiments table1-quick
    python experiments/compare.py --experiments table1-quick nsyn-0.4 --ratios 1 --reference vanilla@table1-quick
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python experiments/compare.py --experiments table1

With several experiments, rows are `method@experiment`. A plot of the paired differences goes
to --plot.
"""
from __future__ import annotations

import argparse
import sys

from diffinject.cli.arguments import ArgumentParser
from diffinject.core.errors import DiffInjectError
from diffinject.core.preflight import check_output_file
from diffinject.reporting.compare import compare, difference_plot, format_comparison, load_cell_runs
from diffinject.reporting.runs import open_store


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", required=True)
    p.add_argument("--datasets", nargs="+")
    p.add_argument("--ratios", nargs="+")
    p.add_argument("--methods", nargs="+", help="default: every method with finished runs")
    p.add_argument("--reference", default="vanilla", help="method (or method@experiment) the differences are to")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else ./mlflow.db")
    p.add_argument("--plot", help="PNG of the paired differences")
    p.add_argument("--no-runs", action="store_true", help="leave out the run ids")
    args = p.parse_args(argv)
    try:
        if args.plot:
            check_output_file(args.plot, "--plot")
        tracker = open_store(args.tracking_uri)
        runs = load_cell_runs(tracker, args.experiments, args.datasets, args.ratios, args.methods)
        if not runs:
            print("no finished cell runs match", file=sys.stderr)
            return 1
        table = compare(runs, args.reference)
    except DiffInjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(table, args.reference, show_runs=not args.no_runs))
    if args.plot:
        print(f"\nplot: {difference_plot(args.plot, table, args.reference)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
