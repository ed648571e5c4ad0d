"""Does a diffusion model's h carry the content? Content transfer of h-space injection, per
U-Net preset and injection setting, on an embedded dataset at 1% (Colored Digits by default).

    python bench/hspace_transfer.py                                   # small_32, 800 steps (the quick model)
    python bench/hspace_transfer.py --preset adm_32 --steps 5000 --batch 128 --lr 2e-4 --device cuda
    python bench/hspace_transfer.py --dataset colored_mnist_5k --checkpoint MODEL.pt --steps-inject 50

Trains the preset with stage 2's loop (the quick preset's settings unless overridden; --checkpoint
reads a trained model instead, e.g. the shipped one or a kept step_NNNNNNN.pt), then
injects contents into originals of another digit and reads the generated digit with a
grey-level classifier (logistic regression on the luminance, which ignores the colour bias,
fitted on the training split). Per setting it prints the fraction read as the content's
digit (transfer: what DiffInject needs), as the original's digit (kept), and the reference
rows: the classifier on real test images, and gamma 0 (no injection, the DDIM
reconstruction of the original). Chance is 10 %.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffinject.config import QUICK_INJECTION, DiffusionConfig, InjectionConfig, quick_diffusion
from diffinject.data.parquet import load_split, prepare_dataset
from diffinject.data.registry import get_dataset_spec
from diffinject.diffusion.checkpoint import load_unet_checkpoint
from diffinject.inject.engine import InjectionEngine
from diffinject.stage2 import train_diffusion
from diffinject.train import TrainContext

DEFAULT_SETTINGS = ["global:0:200", "global:1.0:200", "global:1.0:0", "global:0.9:500", "local:0.9:500",
                    "local:1.0:200"]


def grey(images: np.ndarray) -> np.ndarray:
    """Luminance as the per-pixel channel maximum (the digits are drawn in one colour on black)."""
    return images.max(axis=-1).reshape(len(images), -1).astype(np.float32) / 255.0


def digit_reader(train):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=0.5).fit(grey(train.images), train.labels)


def pairs(labels: np.ndarray, n: int, contents_per_class: int, seed: int):
    """Contents: `contents_per_class` training images per digit; originals: n images, each
    paired with a content of another digit."""
    rng = np.random.default_rng(seed)
    content_idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), contents_per_class, replace=False)
                                  for c in range(10)])
    originals = rng.choice(np.setdiff1d(np.arange(len(labels)), content_idx), n, replace=False)
    choice = np.array([rng.choice(np.flatnonzero(labels[content_idx] != labels[o])) for o in originals])
    return originals, content_idx, choice


QUICK_DIFFUSION = quick_diffusion("colored_digits")


def trained_unet(args, train, device: torch.device):
    """The preset trained with stage 2's loop on the training split, timed."""
    cfg = dataclasses.replace(DiffusionConfig(hflip=False), **{**QUICK_DIFFUSION, "preset": args.preset,
                                                              "num_steps": args.steps, "batch_size": args.batch,
                                                              "lr": args.lr, "ema_decay": args.ema,
                                                              "log_every": max(1, args.steps // 10),
                                                              "sample_every": 0})
    seen = []
    ctx = TrainContext(device=device, log=lambda step, m: seen.append((step, time.perf_counter(), m.get("loss"))))
    started = time.perf_counter()
    result = train_diffusion(cfg, train.images, ctx, seed=0)
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in result.ema_unet.parameters()) / 1e6
    print(f"{args.preset} ({params:.1f} M parameters): {args.steps} steps x {args.batch} in {seconds:.0f} s "
          f"({args.steps * args.batch / seconds:.0f} img/s on {device}); final loss {seen[-1][2]:.4f}")
    return result.ema_unet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=QUICK_DIFFUSION["preset"])
    p.add_argument("--steps", type=int, default=QUICK_DIFFUSION["num_steps"])
    p.add_argument("--batch", type=int, default=QUICK_DIFFUSION["batch_size"])
    p.add_argument("--lr", type=float, default=QUICK_DIFFUSION["lr"])
    p.add_argument("--ema", type=float, default=QUICK_DIFFUSION["ema_decay"])
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--steps-inject", type=int, default=QUICK_INJECTION["generation_steps"], help="DDIM steps of "
                                                                                               "both passes")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, metavar="MODE:GAMMA:T_EDIT")
    p.add_argument("--dataset", default="colored_digits", help="an embedded dataset (built offline)")
    p.add_argument("--checkpoint", help="a trained U-Net checkpoint to read instead of training one")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "diffinject-bench-digits"))
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)

    folder = prepare_dataset(Path(args.data) / "data", Path(args.data) / "cache", get_dataset_spec(args.dataset), "1")
    train, test = load_split(folder, "train"), load_split(folder, "test")
    reader = digit_reader(train)
    print(f"digit reader (grey levels) on the real test split: {100 * reader.score(grey(test.images), test.labels):.1f} %")

    if args.checkpoint:
        unet, meta = load_unet_checkpoint(Path(args.checkpoint))
        print(f"{args.checkpoint}: {meta.get('preset')} at step {meta.get('step')}")
    else:
        unet = trained_unet(args, train, device)
    originals, content_idx, choice = pairs(train.labels, args.pairs, contents_per_class=2, seed=0)
    content_digit, original_digit = train.labels[content_idx][choice], train.labels[originals]
    seeds = np.arange(len(originals))
    print(f"\n{len(originals)} pairs (content digit != original digit), {args.steps_inject} + {args.steps_inject} "
          f"DDIM steps\nsetting            transfer  kept    other   s")
    for text in args.settings:
        mode, gamma, t_edit = text.split(":")
        inj = InjectionConfig(**{**QUICK_INJECTION, "mode": mode, "gamma": float(gamma), "t_edit": int(t_edit),
                                 "inversion_steps": args.steps_inject, "generation_steps": args.steps_inject})
        t0 = time.perf_counter()
        engine = InjectionEngine(unet, inj, train.images[content_idx], device)
        generated = engine.generate(train.images[originals], choice, seeds)
        read = reader.predict(grey(generated))
        transfer, kept = np.mean(read == content_digit), np.mean(read == original_digit)
        print(f"{text:18} {100 * transfer:6.1f} %  {100 * kept:5.1f} %  {100 * (1 - transfer - kept):5.1f} %  "
              f"{time.perf_counter() - t0:4.0f}")


if __name__ == "__main__":
    main()
