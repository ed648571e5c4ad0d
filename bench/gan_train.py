"""Training speed of the generative baselines' generators, against the quick diffusion model's.

    python bench/gan_train.py [--steps 12] [--batch 8] [--paper] [--device auto|cpu|cuda]

Times, in the same run and on the same random 28 x 28 images: stage 2's `train_diffusion` on the
quick `small_32` U-Net (the reference path), A²'s `train_source` (StyleGAN2 with lazy R1 and path
length) and `adapt` (CDC few-shot adaptation), and AmpliBias's `train_class_generators` (one
FastGAN per class; here one class), each timed after a warm-up run of two steps, in float32 (and,
on a GPU, in bf16 autocast). Prints images/s and the ratio to the reference. `--paper` adds the
papers' presets (StyleGAN2 config F at 32 px, FastGAN at 256 px: slow on a CPU, keep --steps low).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffinject.config.schema import DiffusionConfig, FastGANConfig, StyleGAN2Config
from diffinject.nets.gan.checkpoint import read_gan_checkpoint
from diffinject.stages.stage2 import train_diffusion
from diffinject.stages.synthesis.fastgan_per_class import train_class_generators
from diffinject.stages.synthesis.stylegan2_adapt import adapt, train_source
from diffinject.training.loop import TrainContext


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


def timed(run, steps: int) -> float:
    """Seconds per step of `run(steps)`, after a warm-up `run(2)`."""
    run(2)
    start = time.perf_counter()
    run(steps)
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--paper", action="store_true", help="also the papers' presets")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    ctx = TrainContext(device=device)
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 3), dtype=np.uint8)
    labels = np.zeros(len(images), dtype=np.int64)
    precisions = [False, True] if device.type == "cuda" else [False]
    quiet = dict(log_every=10**6, checkpoint_every=10**6, sample_every=0)
    source_file = Path(tempfile.mkdtemp(prefix="bench-gan-")) / "source.pt"
    rows = []
    for bf16 in precisions:
        dtype = "bf16" if bf16 else "fp32"
        diffusion = DiffusionConfig(preset="small_32", batch_size=args.batch, hflip=False, bf16=bf16, **quiet)
        reference = timed(lambda n: train_diffusion(dataclasses.replace(diffusion, num_steps=n), images, ctx, 0),
                          args.steps)
        rows.append(("diffusion small_32 (reference)", dtype, reference, reference))
        for preset in ["quick_32"] + (["paper_32"] if args.paper else []):
            sg = StyleGAN2Config(preset=preset, batch_size=args.batch, adapt_batch_size=max(3, args.batch // 2),
                                 bf16=bf16, **quiet)
            source_file.write_bytes(train_source(dataclasses.replace(sg, num_steps=1), images, ctx, 0).checkpoint)
            payload = read_gan_checkpoint(source_file, "stylegan2")
            rows.append((f"StyleGAN2 source {preset}", dtype, timed(
                lambda n: train_source(dataclasses.replace(sg, num_steps=n), images, ctx, 0), args.steps), reference))
            per_image = args.batch / sg.adapt_batch_size
            rows.append((f"CDC adaptation {preset}", dtype, per_image * timed(
                lambda n: adapt(dataclasses.replace(sg, adapt_steps=n), payload, images, ctx, 0), args.steps),
                reference))
        for preset in ["quick_32"] + (["paper_256"] if args.paper else []):
            fg = FastGANConfig(preset=preset, batch_size=args.batch, distance="mse", bf16=bf16, **quiet)
            rows.append((f"FastGAN {preset}", dtype, timed(
                lambda n: train_class_generators(dataclasses.replace(fg, num_steps=n), images, labels, ctx, 0, mse),
                args.steps), reference))
    print(f"\n{args.steps} timed steps at batch {args.batch} on {device} ({torch.get_num_threads()} threads"
          f"{', ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''})")
    print(f"{'model':<34} {'dtype':>5} {'images/s':>9} {'x reference':>12}")
    for name, dtype, seconds, ref in rows:
        print(f"{name:<34} {dtype:>5} {args.batch / seconds:9.1f} {ref / seconds:12.2f}")


if __name__ == "__main__":
    main()
