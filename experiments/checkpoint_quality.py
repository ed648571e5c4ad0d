"""A method's synthetic-set quality against its generator's training length.

    python experiments/checkpoint_quality.py --quick --checkpoints CHECKPOINTS_FOLDER --seeds 0 1 2
    python experiments/checkpoint_quality.py --quick --method a2 --checkpoints SOURCE_CHECKPOINTS --seeds 0

CHECKPOINTS_FOLDER holds the `step_NNNNNNN.pt` files a `diffinject diffusion train --set
diffusion.keep_checkpoints=true` run logs (its MLflow artifacts' `checkpoints/`), or give the
files themselves; for `--method a2` those of `diffinject gan train --job stylegan2_source`, for
`--method amplibias` those of `--job fastgan_init` (both with `keep_checkpoints=true`). For each
checkpoint and seed the method's quick set is built as a table cell builds it (stages cached
under --artifact-root; `--set injection.*` to try other settings) and its quality report read:
label fidelity, conflict rate, useful share. No classifier is trained. Writes
checkpoint_quality.csv (per seed) and .png (mean ± std) to --out.
"""
from __future__ import annotations

import sys
from pathlib import Path

from diffinject.cli.arguments import ArgumentParser
from diffinject.cli.run_guards import sigterm_as_interrupt
from diffinject.cluster.session import ensure_ray
from diffinject.config.builder import experiment_config
from diffinject.config.overrides import absolute_args, apply_overrides
from diffinject.config.overrides import distinct
from diffinject.config.rules import SEED, check_options
from diffinject.core.errors import ConfigError, DiffInjectError
from diffinject.core.preflight import check_data_paths, check_output_dir
from diffinject.experiment.checkpoint_quality import (GAN_CHECKPOINT_FIELDS, LABELLINGS, SHARES, STOP_TOLERANCE,
                                                      curve_figure, measure, stops_rising, summary, write_csv)
from diffinject.experiment.run_context import check_against_data
from diffinject.reporting.table1 import DISPLAY
from diffinject.tracking.store_check import check_tracking_store


def parse_args(argv: list[str] | None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True,
                   help="checkpoint files, or folders whose step_*.pt files are taken")
    p.add_argument("--method", choices=("diffinject", *GAN_CHECKPOINT_FIELDS), default="diffinject",
                   help="whose set: DiffInject (diffusion checkpoints), A² (source StyleGAN2 checkpoints) or "
                        "AmpliBias (FastGAN starting points)")
    p.add_argument("--dataset", default="colored_mnist_5k")
    p.add_argument("--ratio", default="1")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="the quick preset (CPU budget)")
    p.add_argument("--protocol", choices=("release", "paper"), default="release")
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--artifact-root", default="artifacts", help="the stage cache (shared with table1.py)")
    p.add_argument("--experiment", default="checkpoint-quality", help="MLflow experiment of the stage runs")
    p.add_argument("--out", default="results/checkpoint_quality")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    return p.parse_args(argv)


def checkpoint_files(items: list[str]) -> list[Path]:
    files = []
    for item in items:
        path = Path(item).resolve()
        if path.is_dir():
            found = sorted(path.glob("step_*.pt"))
            if not found:
                raise ConfigError(f"--checkpoints {item}: a folder without step_*.pt files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--checkpoints {item}: no such file or folder")
    return distinct(files, "--checkpoints")


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parse_args(argv), "artifact_root", "out")
    sigterm_as_interrupt()
    try:
        check_options(args, {"seeds": SEED})
        seeds = distinct(args.seeds, "--seeds")
        cfg = experiment_config(args.dataset, args.ratio, quick=args.quick, protocol=args.protocol)
        cfg.data.data_root, cfg.data.cache_root = args.data_root, args.cache_root
        cfg.run.experiment = args.experiment
        cfg = apply_overrides(cfg, args.set)
        files = checkpoint_files(args.checkpoints)
        check_output_dir(args.out, "--out")
        check_output_dir(args.artifact_root, "--artifact-root")
        check_tracking_store()
        check_data_paths(cfg.data)
        check_against_data(cfg, (args.method,))
        ensure_ray()
        print(f"{len(files)} checkpoints x {len(seeds)} seeds on {args.dataset} @ {cfg.data.ratio}%", flush=True)
        print(f"{'step':>7} {'seed':>4}  " + "  ".join(f"{s:>14}" for s in SHARES), flush=True)
        points = measure(cfg, files, seeds, Path(args.artifact_root), method=args.method, done=lambda p: print(
            f"{p.step:>7} {p.seed:>4}  " + "  ".join(f"{p.shares[s]:>14.3f}" for s in SHARES), flush=True))
    except DiffInjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished sets are kept under --artifact-root; the same command continues", file=sys.stderr)
        return 130
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary(points)
    csv_path = write_csv(points, out / "checkpoint_quality.csv")
    generator = {"diffinject": "diffusion", "a2": "source StyleGAN2", "amplibias": "FastGAN starting points"}
    png = curve_figure(rows, out / "checkpoint_quality.png",
                       f"{DISPLAY.get(args.method, args.method)} set quality vs {generator[args.method]} training, "
                       f"{DISPLAY.get(args.dataset, args.dataset)} {cfg.data.ratio}%, {len(seeds)} seeds",
                       f"{generator[args.method]} training step")
    print("\nmean ± std over seeds:")
    for r in rows:
        print(f"{r['step']:>7}  " + "  ".join(f"{s} {r[s]:.3f} ± {r[s + '_std']:.3f}" for s in SHARES))
    if args.method in GAN_CHECKPOINT_FIELDS:  # labelled with the original's (A²) or the generator's class
        step = stops_rising(rows, "useful_rate")
        at = next(r for r in rows if r["step"] == step)
        print(f"the useful share stops rising at step {step} ({at['useful_rate']:.3f}; never more than "
              f"{STOP_TOLERANCE:.2f} higher after it)")
    for label_from, share in (LABELLINGS.items() if args.method == "diffinject" else ()):
        step = stops_rising(rows, share)
        at = next(r for r in rows if r["step"] == step)
        print(f"labelled with the {label_from}'s: the useful share stops rising at step {step} "
              f"({at[share]:.3f}; never more than {STOP_TOLERANCE:.2f} higher after it)")
    print(f"\nwrote {csv_path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
