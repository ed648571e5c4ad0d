"""Learning curves of the classifier methods at their reference lengths: valid and test accuracy
at every evaluation, per method and seed, in-process.

    python experiments/learning_curves.py --dataset colored_mnist_5k --seeds 0 1 --out results/curves

Each method trains as its table cell trains under `--baselines` (default `reference`: the
reference repositories' regime and lengths), evaluated every --eval-every steps. Writes
learning_curves.csv and one figure per method family (Vanilla; LfF and LfF + BE; DisEnt and
DisEnt + BE) to --out, and prints where each curve flattens: the first evaluation after which
the mean valid accuracy never rises more than one point above its value there.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from diffinject.cli.arguments import ArgumentParser
from diffinject.cli.run_guards import sigterm_as_interrupt
from diffinject.config.builder import experiment_config
from diffinject.config.overrides import absolute_args, apply_overrides
from diffinject.config.overrides import distinct
from diffinject.config.rules import COUNT, SEED, check_options
from diffinject.core.errors import DiffInjectError
from diffinject.core.preflight import check_data_paths, check_output_dir
from diffinject.experiment.learning_curves import (FAMILIES, family_figure, flattening_step, learning_curve, length_of,
                                                   mean_curve, write_csv)
from diffinject.methods import get_method
from diffinject.reporting.table1 import DISPLAY

CLASSIFIER_METHODS = tuple(m for family in FAMILIES.values() for m in family)


def parse_args(argv: list[str] | None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="colored_mnist_5k")
    p.add_argument("--ratio", default="1")
    p.add_argument("--methods", nargs="+", default=list(CLASSIFIER_METHODS), help=" | ".join(CLASSIFIER_METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations (default 500)")
    p.add_argument("--baselines", choices=("reference", "uniform"), default="reference")
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--out", default="results/learning_curves")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parse_args(argv), "out")
    sigterm_as_interrupt()
    try:
        check_options(args, {"seeds": SEED, "eval_every": COUNT})
        methods = distinct(args.methods, "--methods")
        for method in methods:
            get_method(method)  # the registry's error for an unknown name
            if method not in CLASSIFIER_METHODS:
                raise DiffInjectError(f"--methods {method}: curves are for {', '.join(CLASSIFIER_METHODS)} "
                                      "(the methods that train on the original data only)")
        seeds = distinct(args.seeds, "--seeds")
        cfg = experiment_config(args.dataset, args.ratio, baselines=args.baselines)
        cfg.data.data_root, cfg.data.cache_root = args.data_root, args.cache_root
        cfg.classifier.eval_every = args.eval_every
        cfg = apply_overrides(cfg, args.set)
        check_output_dir(args.out, "--out")
        check_data_paths(cfg.data)
        points, started = [], time.perf_counter()
        for method in methods:
            for seed in seeds:
                points += learning_curve(cfg, method, seed)
                last = points[-1]
                print(f"[{time.perf_counter() - started:6.0f}s] {method} seed {seed}: {length_of(cfg, method)} steps, "
                      f"last valid {100 * last.metrics['valid_acc']:.2f} / test {100 * last.metrics['test_acc']:.2f}",
                      flush=True)
    except DiffInjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(points, out / "learning_curves.csv")
    print(f"\n{'method':<12} {'length':>7} {'flattens at':>12} {'valid there':>12} {'valid at end':>13}")
    for method in methods:
        steps, mean, _ = mean_curve(points, method, "valid_acc")
        flat = flattening_step(steps, mean)
        print(f"{method:<12} {length_of(cfg, method):>7} {flat:>12} {100 * mean[list(steps).index(flat)]:>12.2f} "
              f"{100 * mean[-1]:>13.2f}")
    name = DISPLAY.get(args.dataset, args.dataset)
    for family, members in FAMILIES.items():
        if any(m in methods for m in members):
            path = family_figure(points, family, out / f"learning_curves_{family}.png",
                                 f"{' / '.join(DISPLAY[m] for m in members if m in methods)} on {name} "
                                 f"{cfg.data.ratio}% ({args.baselines}, {len(seeds)} seeds)")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
