"""The `diffinject` command line: data build/check, train, topk, diffusion train/sample,
calibrate, inject, results."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffinject.cli.arguments import ArgumentParser
from diffinject.cli.data_commands import cmd_data_build, cmd_data_check
from diffinject.config.builder import experiment_config
from diffinject.config.overrides import absolute_args, apply_overrides
from diffinject.config.quick import QUICK_DATASET, QUICK_FASTGAN_INIT
from diffinject.config.rules import COUNT, DDIM_STEPS, NON_NEGATIVE, Range, SEED, check_options
from diffinject.core.errors import ConfigError, DiffInjectError
from diffinject.core.preflight import check_data_paths, check_input_dir, check_output_dir, check_output_file
from diffinject.tracking.store_check import check_tracking_store

SAMPLE_COUNT = Range(1, 10_000)  # `diffusion sample --num`: a grid, not a data set (inject makes those)
SAMPLE_SCALE = Range(1, 16)      # `diffusion sample --scale`: 16 x 32 px is 512 px per image


def _config(args: argparse.Namespace):
    check_options(args, {"seed": SEED})
    cfg = experiment_config(args.dataset, args.ratio, quick=args.quick, protocol=args.protocol, baselines=args.baselines)
    cfg.data.data_root, cfg.data.cache_root = args.data_root, args.cache_root
    cfg.run.seed = cfg.diffusion.seed = args.seed
    cfg.run.experiment = args.experiment
    return apply_overrides(cfg, args.set or [])


def _training_config(args: argparse.Namespace):
    """The config of a command that trains on Ray and tracks in MLflow, with its outputs checked."""
    cfg = _config(args)
    check_tracking_store()
    check_output_dir(cfg.run.storage_path, "run.storage_path")
    check_data_paths(cfg.data)
    return cfg


def _start_ray(cfg) -> None:
    """Join or start Ray; refuse run.use_gpu=true at once on a cluster without GPUs."""
    from diffinject.cluster.session import ensure_ray
    from diffinject.cluster.session import resolve_use_gpu

    ensure_ray()
    resolve_use_gpu(cfg.run.use_gpu)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=QUICK_DATASET)
    p.add_argument("--ratio", default="1", help="percent of bias-conflicting training samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="the CPU-budget preset (for the embedded datasets)")
    p.add_argument("--protocol", choices=("release", "paper"), default="release",
                   help="DiffInject presets: the authors' released code or the paper's text (docs/design.md 2.3)")
    p.add_argument("--baselines", choices=("reference", "uniform"), default="reference",
                   help="how the comparison methods and the stage-4 classifier train: as their reference "
                        "repositories do, or all alike (docs/design.md 2.4)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--experiment", default="diffinject", help="MLflow experiment name")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set classifier.lr=1e-4 (repeatable)")


def cmd_train(args: argparse.Namespace) -> None:
    from diffinject.data.parquet import MARKER
    from diffinject.methods import get_method
    from diffinject.experiment.stage_runs import run_cell

    method = get_method(args.method)
    if method.needs_synthetic and not args.synthetic:
        raise ConfigError(f"method {args.method!r} trains on original + synthetic data: give the synthetic set "
                          f"with --synthetic DIR (from `diffinject inject`), or run the whole method with "
                          f"experiments/table1.py --methods {args.method}")
    for folder in args.synthetic or []:
        check_input_dir(folder, "--synthetic", (MARKER,), "`diffinject inject`")
    cfg = _training_config(args)
    _start_ray(cfg)
    out = run_cell(cfg, args.method, extra_train=[Path(p) for p in args.synthetic or []])
    print(" ".join(f"{k}={v:.4f}" for k, v in out.metrics.items()) + f"  (MLflow run {out.run_id})")


def cmd_topk(args: argparse.Namespace) -> None:
    from diffinject.experiment.stage_runs import run_stage1

    cfg = _training_config(args)
    _start_ray(cfg)
    out = run_stage1(cfg)
    print(" ".join(f"{k}={v:.4f}" for k, v in out.metrics.items()) + f"  (MLflow run {out.run_id})")
    print(f"top-K set and grid: {out.checkpoint_dir}")


def cmd_diffusion_train(args: argparse.Namespace) -> None:
    from diffinject.experiment.stage_runs import diffusion_checkpoint, run_stage2

    cfg = _training_config(args)
    _start_ray(cfg)
    d = cfg.diffusion
    print(f"training {d.preset} for {d.num_steps} steps (batch {d.batch_size}, gamma {d.gamma}) on "
          f"{cfg.data.dataset if d.train_data == 'train' else d.train_data}; "
          f"loss curve and sample grids go to MLflow experiment {cfg.run.experiment!r}", flush=True)
    out = run_stage2(cfg)
    print(" ".join(f"{k}={v:.4f}" for k, v in out.metrics.items()) + f"  (MLflow run {out.run_id})")
    print(f"EMA checkpoint: {diffusion_checkpoint(out)}")


def cmd_gan_train(args: argparse.Namespace) -> None:
    """A generative baseline's starting generator on a dataset's training split: A²'s source
    StyleGAN2 (`stylegan2_source`) or AmpliBias's per-class FastGAN starting points (`fastgan_init`:
    one FastGAN per class on all of its training images). The GAN file is `generator.pt` in the
    printed folder; with `--set <section>.keep_checkpoints=true` every checkpoint_every-th step's
    file is an MLflow artifact under `checkpoints/`."""
    from diffinject.experiment.generator_runs import run_generator_training

    if args.job == "fastgan_init" and args.quick:  # the starting points' own length and EMA, under any --set
        args.set = [f"fastgan.{k}={v}" for k, v in QUICK_FASTGAN_INIT.items()] + (args.set or [])
    cfg = _training_config(args)
    if args.out is not None:
        check_output_dir(args.out, "--out")
    _start_ray(cfg)
    section = cfg.stylegan2 if args.job == "stylegan2_source" else cfg.fastgan
    print(f"training {args.job} ({section.preset}, {section.num_steps} steps{' per class' if args.job == 'fastgan_init' else ''}, "
          f"batch {section.batch_size}) on {cfg.data.dataset}@{cfg.data.ratio}; loss curves and sample grids go to "
          f"MLflow experiment {cfg.run.experiment!r}", flush=True)
    out = run_generator_training(cfg, args.job, output_dir=args.out)
    print(" ".join(f"{k}={v:.4f}" for k, v in out.metrics.items()) + f"  (MLflow run {out.run_id})")
    print(f"generator file: {out.checkpoint_dir / 'generator.pt'}")


def cmd_gan_export(args: argparse.Namespace) -> None:
    """Rewrite a GAN file with its weights in another dtype (float16 halves it; loading casts back
    to float32). Every network is read with the strict loader first."""
    from diffinject.core.atomic import atomic_file
    from diffinject.nets.gan.checkpoint import gan_checkpoint_bytes, load_net, read_gan_checkpoint
    from diffinject.nets.gan.presets import get_gan_preset
    from diffinject.core.integrity import file_digest

    check_output_file(args.out, "--out")
    payload = read_gan_checkpoint(args.checkpoint, args.family)
    preset = get_gan_preset(args.family, payload["preset"])
    if args.family == "stylegan2":
        from diffinject.nets.gan.stylegan2 import Discriminator, Generator
    else:
        from diffinject.nets.gan.fastgan import Discriminator, Generator
    for name in payload["nets"]:
        load_net(Discriminator(preset) if "discriminator" in name else Generator(preset), payload, name,
                 args.checkpoint)
    data = gan_checkpoint_bytes(args.family, payload["preset"], payload["nets"], payload["step"], payload["config"],
                                payload["extra"], args.dtype)
    with atomic_file(args.out, "wb") as handle:
        handle.write(data)
    print(f"wrote {args.out} ({args.family} {payload['preset']}, step {payload['step']}, {len(payload['nets'])} "
          f"networks, {args.dtype}, {len(data) / 1e6:.2f} MB, sha256 {file_digest(args.out)})")


def cmd_diffusion_sample(args: argparse.Namespace) -> None:
    import time

    import torch

    from diffinject.core.atomic import atomic_file
    from diffinject.nets.diffusion import ddim_sample, get_preset
    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
    from diffinject.core.plots import check_png_pixels, grid_shape, png_bytes, tile_images
    from diffinject.nets.diffusion.pixels import to_uint8

    check_options(args, {"num": SAMPLE_COUNT, "steps": DDIM_STEPS, "eta": NON_NEGATIVE, "seed": SEED,
                         "columns": COUNT, "scale": SAMPLE_SCALE})
    check_output_file(args.out, "--out")
    if args.format == "guided-diffusion":
        from diffinject.nets.diffusion.guided_diffusion import load_guided_diffusion_checkpoint

        if not args.preset:
            raise DiffInjectError("--format guided-diffusion needs --preset (e.g. p2_256)")
        unet, preset = load_guided_diffusion_checkpoint(args.checkpoint, args.preset), get_preset(args.preset)
    else:
        unet, meta = load_unet_checkpoint(args.checkpoint, args.preset)
        preset = get_preset(meta["preset"])
    height, width = grid_shape(args.num, preset.image_size, preset.image_size, args.columns)
    check_png_pixels(height * args.scale, width * args.scale,
                     f"the grid of {args.num} {preset.image_size}-pixel images, {min(args.columns, args.num)} "
                     f"per row, at --scale {args.scale}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"sampling {args.num} images from {preset.name} with {args.steps} DDIM steps (eta {args.eta}) "
          f"on {device}", flush=True)
    started = time.perf_counter()
    x = ddim_sample(unet.to(device), args.num, preset.image_size, steps=args.steps, eta=args.eta,
                    generator=torch.Generator().manual_seed(args.seed), device=device)
    with atomic_file(args.out, "wb") as handle:
        handle.write(png_bytes(tile_images(to_uint8(x), columns=args.columns), scale=args.scale))
    print(f"wrote {args.out} ({time.perf_counter() - started:.1f} s)")


def cmd_diffusion_export(args: argparse.Namespace) -> None:
    """Rewrite a diffinject checkpoint with its weights in another dtype (float16 halves the file;
    loading casts back to float32). The weights are read with the strict loader first."""
    from diffinject.core.atomic import atomic_file
    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint, unet_checkpoint_bytes
    from diffinject.nets.diffusion.models import get_preset
    from diffinject.core.integrity import file_digest

    check_output_file(args.out, "--out")
    unet, meta = load_unet_checkpoint(args.checkpoint)
    data = unet_checkpoint_bytes(unet.state_dict(), get_preset(meta["preset"]), meta.get("step", 0),
                                 meta.get("config", {}), args.dtype)
    with atomic_file(args.out, "wb") as handle:
        handle.write(data)
    print(f"wrote {args.out} ({meta['preset']}, step {meta.get('step', 0)}, {args.dtype}, {len(data) / 1e6:.2f} MB, "
          f"sha256 {file_digest(args.out)})")


def cmd_inject(args: argparse.Namespace) -> None:
    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
    from diffinject.stages.inject.synthetic import check_output_folder
    from diffinject.experiment.set_makers import check_checkpoint_resolution
    from diffinject.experiment.stage_runs import run_stage1, run_stage3

    cfg = _training_config(args)
    if args.topk_dir is not None:
        check_input_dir(args.topk_dir, "--topk-dir", ("topk.json", "topk_images.npy"), "`diffinject topk`")
    if args.out is not None:
        check_output_dir(args.out, "--out")
        check_output_folder(args.out)  # before stage 1: finalizing would replace the whole folder
    # the weights load strictly now, not after stage 1
    check_checkpoint_resolution(cfg, load_unet_checkpoint(args.checkpoint)[1]["preset"], args.checkpoint)
    _start_ray(cfg)
    topk_dir = args.topk_dir
    if topk_dir is None:
        print("no --topk-dir given: running stage 1 (bias classifier, top-K) first", flush=True)
        topk_dir = run_stage1(cfg).checkpoint_dir
    inj = cfg.injection
    print(f"stage 3: {inj.mode} injection, gamma {inj.gamma}, {inj.inversion_steps}/{inj.generation_steps} DDIM "
          f"steps, conflict ratio {inj.conflict_ratio}", flush=True)
    out = run_stage3(cfg, Path(topk_dir), args.checkpoint, out_dir=args.out,
                     random_lpips_backbone=args.random_lpips_backbone)
    m = out.metrics
    print(f"wrote {m['n_syn']} synthetic samples to {out.checkpoint_dir} (t_edit {m['t_edit']}, "
          f"{m['samples_per_s']:.2f} samples/s; MLflow run {out.run_id}, triptych.png among its artifacts)")
    print(f"quality (scoring oracles, held-out accuracy class {m['quality.class_oracle_acc']:.2f} / bias "
          f"{m['quality.bias_oracle_acc']:.2f}): label fidelity {m['quality.label_fidelity']:.2f}, conflict rate "
          f"{m['quality.conflict_rate']:.2f}, useful {m['quality.useful_rate']:.2f} (quality_grid.png among the "
          f"run's artifacts)")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from diffinject.data.parquet import load_split
    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
    from diffinject.experiment.run_context import dataset_folder
    from diffinject.experiment.set_makers import check_checkpoint_resolution, resolve_t_edit
    from diffinject.tracking.client import Tracker

    cfg = _config(args)
    cfg.injection.calibrate_t_edit = True
    check_tracking_store()
    check_output_dir(args.out or ".", "--out")
    check_data_paths(cfg.data)
    check_checkpoint_resolution(cfg, load_unet_checkpoint(args.checkpoint)[1]["preset"], args.checkpoint)
    images = load_split(dataset_folder(cfg), "train").images[:cfg.injection.calibration_images]
    if args.random_lpips_backbone:
        print("warning: LPIPS with a randomly initialised AlexNet: the curve and t_edit are not meaningful")
    tracker = Tracker()
    run_id = tracker.start_run(tracker.experiment(cfg.run.experiment), f"calibrate-{cfg.data.dataset}-{cfg.data.ratio}",
                               {"dataset": cfg.data.dataset, "ratio": cfg.data.ratio, "diffinject.role": "calibrate"})
    with tracker.ending(run_id):
        folder = Path(args.out or ".")
        folder.mkdir(parents=True, exist_ok=True)
        t_edit = resolve_t_edit(cfg, args.checkpoint, images, tracker, run_id, folder, args.random_lpips_backbone)
        tracker.log_metrics(run_id, {"t_edit": t_edit})
    print(f"t_edit = {t_edit} (first t where the mean LPIPS over {len(images)} images reaches "
          f"{cfg.injection.lpips_threshold}); curve: {folder / 't_edit_calibration.png'} (MLflow run {run_id})")


def cmd_results(args: argparse.Namespace) -> None:
    from diffinject.reporting.results import collect, format_table, newest_experiment
    from diffinject.reporting.runs import find_experiment, open_store

    tracker = open_store()
    if args.experiment is None:
        name = newest_experiment(tracker)
        print(f"experiment {name!r}: the one whose finished run ended last (--experiment NAME for another)")
    else:
        name = find_experiment(tracker, args.experiment).name
    print(format_table(collect(name, tracker)))


def build_parser() -> argparse.ArgumentParser:
    from diffinject.data.registry import DATASETS
    from diffinject.methods import METHODS

    parser = ArgumentParser(prog="diffinject", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build or check datasets").add_subparsers(dest="data_command", required=True)
    build = data.add_parser("build", help="write a dataset in the released layout")
    build.add_argument("name", help="colored_mnist_5k | colored_digits (offline, from installed packages) | "
                                    "cmnist | cifar10c (from --source or --download)")
    build.add_argument("--data-root", default="data")
    build.add_argument("--source", type=Path, help="MNIST IDX folder (cmnist) or cifar-10-batches-py (cifar10c)")
    build.add_argument("--download", action="store_true", help="download the source data (needs the network)")
    build.add_argument("--ratios", nargs="+", default=["0.5", "1", "2", "5"])
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=cmd_data_build)
    check = data.add_parser("check", help="validate a dataset and print per-split counts")
    check.add_argument("name", help=f"the dataset: {' | '.join(DATASETS)}")
    check.add_argument("--data-root", default="data")
    check.add_argument("--ratio", help="one ratio (default: all the dataset ships)")
    check.set_defaults(func=cmd_data_check)

    train = sub.add_parser("train", help="train a registered method on a dataset and ratio")
    train.add_argument("method", help=f"the method: {' | '.join(METHODS)}")
    train.add_argument("--synthetic", action="append", metavar="DIR",
                       help="a synthetic set (from `diffinject inject`) added to the training data (repeatable)")
    _add_run_args(train)
    train.set_defaults(func=cmd_train)

    topk = sub.add_parser("topk", help="stage 1: GCE bias classifier and top-K extraction")
    _add_run_args(topk)
    topk.set_defaults(func=cmd_topk)

    diffusion = sub.add_parser("diffusion", help="stage 2: train or sample a diffusion model").add_subparsers(
        dest="diffusion_command", required=True)
    dtrain = diffusion.add_parser("train", help="train a P2-weighted diffusion model on Ray Train")
    _add_run_args(dtrain)
    dtrain.set_defaults(func=cmd_diffusion_train)
    sample = diffusion.add_parser("sample", help="DDIM samples from a checkpoint, as a PNG grid")
    sample.add_argument("--checkpoint", type=Path, required=True)
    sample.add_argument("--format", choices=("diffinject", "guided-diffusion"), default="diffinject",
                        help="diffinject (stage 2's diffusion.pt) or a released guided-diffusion / P2 state dict")
    sample.add_argument("--preset", help="U-Net preset (required for guided-diffusion; checked for diffinject)")
    sample.add_argument("--num", type=int, default=64,
                        help=f"images in the grid, at most {SAMPLE_COUNT.high:,} (default: %(default)s)")
    sample.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    sample.add_argument("--eta", type=float, default=0.0,
                        help="DDIM noise: 0 is deterministic, 1 is DDPM-like (default: %(default)s)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    sample.add_argument("--columns", type=int, default=8, help="images per grid row (default: %(default)s)")
    sample.add_argument("--scale", type=int, default=1,
                        help=f"enlarge the grid 1 to {SAMPLE_SCALE.high} times, nearest neighbour "
                             f"(default: %(default)s)")
    sample.add_argument("--out", type=Path, default=Path("samples.png"), help="the PNG grid (default: %(default)s)")
    sample.set_defaults(func=cmd_diffusion_sample)
    export = diffusion.add_parser("export", help="rewrite a checkpoint with its weights in another dtype")
    export.add_argument("--checkpoint", type=Path, required=True, help="a diffinject diffusion.pt")
    export.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(func=cmd_diffusion_export)

    gan = sub.add_parser("gan", help="stage 3 of A² and AmpliBias: train a starting generator").add_subparsers(
        dest="gan_command", required=True)
    gtrain = gan.add_parser("train", help="A²'s source StyleGAN2 or AmpliBias's per-class FastGAN starting points")
    gtrain.add_argument("--job", choices=("stylegan2_source", "fastgan_init"), required=True)
    gtrain.add_argument("--out", type=Path, help="folder for generator.pt (default: under run.storage_path)")
    _add_run_args(gtrain)
    gtrain.set_defaults(func=cmd_gan_train)
    gexport = gan.add_parser("export", help="rewrite a GAN file with its weights in another dtype")
    gexport.add_argument("--checkpoint", type=Path, required=True, help="a diffinject GAN file (generator.pt)")
    gexport.add_argument("--family", choices=("stylegan2", "fastgan"), required=True)
    gexport.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    gexport.add_argument("--out", type=Path, required=True)
    gexport.set_defaults(func=cmd_gan_export)

    calibrate = sub.add_parser("calibrate", help="stage 3: pick t_edit from the LPIPS curve of a checkpoint")
    _add_run_args(calibrate)
    calibrate.add_argument("--checkpoint", type=Path, required=True, help="a diffinject diffusion.pt")
    calibrate.add_argument("--out", type=Path, help="folder for the curve plot (default: .)")
    calibrate.add_argument("--random-lpips-backbone", action="store_true",
                           help="no AlexNet weights: exercise the code path only (t_edit is not meaningful)")
    calibrate.set_defaults(func=cmd_calibrate)

    inject = sub.add_parser("inject", help="stage 3: make the synthetic set (Ray Data)")
    _add_run_args(inject)
    inject.add_argument("--checkpoint", type=Path, required=True, help="a diffinject diffusion.pt")
    inject.add_argument("--topk-dir", type=Path, help="a stage-1 output folder (default: run stage 1 first)")
    inject.add_argument("--out", type=Path, help="synthetic set folder (default under run.storage_path)")
    inject.add_argument("--random-lpips-backbone", action="store_true", help=argparse.SUPPRESS)
    inject.set_defaults(func=cmd_inject)

    results = sub.add_parser("results", help="print the results table from MLflow")
    results.add_argument("--experiment", help="MLflow experiment (default: the one whose finished run ended last)")
    results.set_defaults(func=cmd_results)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(build_parser().parse_args(argv), "synthetic", "topk_dir", "out", "checkpoint")
    try:
        args.func(args)
    except DiffInjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
