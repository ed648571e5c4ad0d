"""Does a diffusion model's h carry the content? h-space injection measured the way DiffInject
uses it, per U-Net preset, checkpoint and injection setting, on an embedded dataset at 1%.

    python bench/hspace_transfer.py --dataset colored_mnist_5k --checkpoint shipped   # the main job's model
    python bench/hspace_transfer.py                     # small_32 trained here, 800 steps (Colored Digits)
    python bench/hspace_transfer.py --preset adm_32 --steps 5000 --batch 128 --lr 2e-4 --device cuda

Trains the preset with stage 2's loop (the quick preset's settings unless overridden), or reads
a trained model (--checkpoint FILE, e.g. a kept step_NNNNNNN.pt; `shipped`: the verified model
shipped for --dataset). Then injects contents into originals as stage 3 does: each original is
a bias-aligned training image, each content one of the truly bias-conflicting training images,
of another class. The dataset's scoring oracles (the quality report's: trained on the real
training split, a colour-blind class reader and a colour reader) read every generated image.
Per setting it prints the share whose class reads as the original's / the content's label,
whose colour reads as the original's / the content's bias, and the quality report's useful
share under both labellings (class = the given label, colour conflicting with it). The row
`global:0:...` (gamma 0) injects nothing: the DDIM reconstruction of the original.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffinject.config.quick import QUICK_INJECTION, quick_diffusion
from diffinject.config.schema import DiffusionConfig, InjectionConfig
from diffinject.data.parquet import load_split, prepare_dataset
from diffinject.data.registry import get_dataset_spec
from diffinject.experiment.shipped_diffusion import quick_checkpoint
from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
from diffinject.stages.inject.engine import InjectionEngine
from diffinject.stages.quality.metrics import quality_metrics
from diffinject.stages.quality.oracles import dataset_oracles
from diffinject.stages.stage2 import train_diffusion
from diffinject.training.loop import TrainContext

# MODE:GAMMA:T_EDIT[:STEPS[:T_BOOST]]; STEPS defaults to --steps-inject, T_BOOST to the quick preset's
DEFAULT_SETTINGS = ["global:0:200:20:-1", "global:0:200:50:-1", "global:0:200:100:-1", "global:1.0:200:50",
                    "global:0.3:200:50", "global:1.0:500:50"]


def pairs(train, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n bias-aligned originals (training rows), the bias-conflicting contents (training rows),
    and for each original the position in `contents` of one content of another class."""
    rng = np.random.default_rng(seed)
    contents = np.flatnonzero(~train.aligned)
    aligned = np.flatnonzero(train.aligned)
    originals = rng.choice(aligned, min(n, len(aligned)), replace=False)
    choice = np.array([rng.choice(np.flatnonzero(train.labels[contents] != train.labels[o])) for o in originals])
    return originals, contents, choice


def trained_unet(args, train, device: torch.device):
    """The preset trained with stage 2's loop on the training split, timed."""
    given = {"preset": args.preset, "num_steps": args.steps, "batch_size": args.batch, "lr": args.lr,
             "ema_decay": args.ema}
    cfg = dataclasses.replace(DiffusionConfig(hflip=False), **{**quick_diffusion(args.dataset), "sample_every": 0,
                                                              **{k: v for k, v in given.items() if v is not None}})
    cfg = dataclasses.replace(cfg, log_every=max(1, cfg.num_steps // 10))
    seen = []
    ctx = TrainContext(device=device, log=lambda step, m: seen.append(m.get("loss")))
    started = time.perf_counter()
    result = train_diffusion(cfg, train.images, ctx, seed=0)
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in result.ema_unet.parameters()) / 1e6
    print(f"{cfg.preset} ({params:.1f} M parameters): {cfg.num_steps} steps x {cfg.batch_size} in {seconds:.0f} s "
          f"({cfg.num_steps * cfg.batch_size / seconds:.0f} img/s on {device}); final loss {seen[-1]:.4f}")
    return result.ema_unet


def setting(text: str, default_steps: int) -> tuple[str, InjectionConfig]:
    fields = text.split(":")
    try:
        mode, gamma, t_edit = fields[0], float(fields[1]), int(fields[2])
        steps = int(fields[3]) if len(fields) > 3 else default_steps
        boost = {"t_boost": int(fields[4])} if len(fields) > 4 else {}
        if mode not in ("local", "global") or len(fields) > 5:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"--settings {text!r}: expected MODE:GAMMA:T_EDIT[:STEPS[:T_BOOST]], MODE local or "
                         f"global, numbers elsewhere") from None
    inj = InjectionConfig(**{**QUICK_INJECTION, "mode": mode, "gamma": gamma, "t_edit": t_edit,
                             "inversion_steps": steps, "generation_steps": steps, **boost})
    return f"{mode} gamma {gamma} t_edit {t_edit}, {steps}+{steps}, boost {inj.t_boost}", inj


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="colored_digits", help="an embedded dataset (built offline)")
    p.add_argument("--checkpoint", help="a trained U-Net checkpoint to read instead of training one; "
                                        "'shipped': the model shipped for --dataset")
    p.add_argument("--preset", help="U-Net preset to train (default: the quick preset's)")
    p.add_argument("--steps", type=int, help="training steps (default: the quick preset's)")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ema", type=float)
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--steps-inject", type=int, default=QUICK_INJECTION["generation_steps"],
                   help="DDIM steps of both passes where a setting names none")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, metavar="MODE:GAMMA:T_EDIT[:STEPS[:T_BOOST]]")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "diffinject-bench-digits"))
    args = p.parse_args()
    try:
        settings = [setting(text, args.steps_inject) for text in args.settings]
    except ValueError as exc:
        p.exit(2, f"error: {exc}\n")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)

    folder = prepare_dataset(Path(args.data) / "data", Path(args.data) / "cache", get_dataset_spec(args.dataset), "1")
    train, valid = load_split(folder, "train"), load_split(folder, "valid")
    oracles = dataset_oracles(args.dataset, train, valid)
    print(f"oracles on the real valid split: class {oracles.accuracy['class_oracle_acc']:.2f}, "
          f"colour {oracles.accuracy['bias_oracle_acc']:.2f}")

    if args.checkpoint:
        path = quick_checkpoint(args.dataset) if args.checkpoint == "shipped" else Path(args.checkpoint)
        unet, meta = load_unet_checkpoint(path)
        print(f"{path}: {meta.get('preset')} at step {meta.get('step')}")
    else:
        unet = trained_unet(args, train, device)
    originals, contents, choice = pairs(train, args.pairs, seed=0)
    original_label, content_label = train.labels[originals], train.labels[contents][choice]
    original_bias, content_bias = train.biases[originals], train.biases[contents][choice]
    print(f"\n{len(originals)} pairs: bias-aligned originals x {len(contents)} bias-conflicting contents of another "
          f"class\n{'setting':44} class=orig class=cont colour=orig colour=cont useful(orig) useful(cont)    s")
    for name, inj in settings:
        t0 = time.perf_counter()
        engine = InjectionEngine(unet, inj, train.images[contents], device)
        generated = engine.generate(train.images[originals], choice, np.arange(len(originals)))
        read_class, read_colour = oracles.read(generated)
        m = quality_metrics(read_class, read_colour, original_label, original_label, content_label)
        print(f"{name:44} {m['shows_original']:10.2f} {m['shows_content']:10.2f} "
              f"{np.mean(read_colour == original_bias):12.2f} {np.mean(read_colour == content_bias):11.2f} "
              f"{m['useful_as_original']:12.2f} {m['useful_as_content']:12.2f} {time.perf_counter() - t0:4.0f}")


if __name__ == "__main__":
    main()
