"""Reproduce the paper's Table 1: every registered method on every dataset and ratio, over seeds.

    python experiments/table1.py --quick          # Colored Digits at 1% and 5%, CPU, minutes
    python experiments/table1.py --data-root DIR  # the released benchmarks (needs the data)

Each (dataset, ratio, seed) also trains the stage-1 GCE bias classifier and reports
precision@K of its top-K set. Results go to MLflow (MLFLOW_TRACKING_URI, default
./mlflow.db) and the finished table is printed and written under --out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from diffinject.config import apply_overrides, preset
from diffinject.errors import DiffInjectError
from diffinject.methods import get_method, table_methods
from diffinject.pipeline import ensure_ray, run_cell, run_stage1, with_seed
from diffinject.results import collect, format_table
from diffinject.tracking import Tracker

PAPER_DATASETS = ("cmnist", "cifar10c", "bffhq", "dogs_and_cats")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="embedded Colored Digits on CPU")
    p.add_argument("--datasets", nargs="+")
    p.add_argument("--ratios", nargs="+", default=["1", "5"])
    p.add_argument("--methods", nargs="+", help="default: every registered method")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--experiment", help="MLflow experiment (default table1 or table1-quick)")
    p.add_argument("--out", default="results", help="folder for the finished table")
    p.add_argument("--num-workers", type=int, default=0, help="Ray Train workers per training (0: in-process)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets = args.datasets or (["colored_digits"] if args.quick else list(PAPER_DATASETS))
    methods = args.methods or table_methods()
    experiment = args.experiment or ("table1-quick" if args.quick else "table1")
    try:
        for method in methods:
            get_method(method)
        configs = []
        for dataset in datasets:
            for ratio in args.ratios:
                cfg = preset(dataset, ratio, quick=args.quick)
                cfg.data.data_root, cfg.data.cache_root = args.data_root, args.cache_root
                cfg.run.experiment, cfg.run.num_workers = experiment, args.num_workers
                configs.append(apply_overrides(cfg, args.set))
        ensure_ray()
        tracker = Tracker()
        run_ids: set[str] = set()
        total = len(configs) * len(args.seeds) * (len(methods) + 1)
        done, started = 0, time.perf_counter()
        for base in configs:
            key = (base.data.dataset, base.data.ratio)
            for seed in args.seeds:
                cfg = with_seed(base, seed)
                stage1 = run_stage1(cfg, tracker)
                run_ids.add(stage1.run_id)
                done += 1
                print(f"[{done}/{total} {time.perf_counter() - started:6.0f}s] {key[0]} {key[1]}% seed {seed} "
                      f"stage 1: precision@{cfg.bias.k} {stage1.metrics['precision_at_k']:.2f}", flush=True)
                for method in methods:
                    cell = run_cell(cfg, method, tracker)
                    run_ids.add(cell.run_id)
                    done += 1
                    print(f"[{done}/{total} {time.perf_counter() - started:6.0f}s] {key[0]} {key[1]}% seed {seed} "
                          f"{method}: unbiased {100 * cell.metrics['test_acc']:.2f}", flush=True)
    except DiffInjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = format_table(collect(experiment, tracker, run_ids))  # this invocation's runs only
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{experiment}.txt"
    path.write_text(text + "\n")
    print(f"\ntable: {path}   MLflow: {tracker.uri} (experiment {experiment!r}; `mlflow ui --backend-store-uri "
          f"{tracker.uri}`)   total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
