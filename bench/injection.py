"""Injection speed: the batched engine against the reference path, same pairs, steps and model.

    python bench/injection.py [--preset small_32] [--checkpoint diffusion.pt] [--pairs 16]
                              [--contents 4] [--steps 50 1000] [--reference-pairs 2] [--device auto]

For each step count (inversion = generation = N) it times, in one run:
  * `reference`: one pair at a time, no sharing, two full U-Net passes per injected step
    through HSpace (the released code's way, in-process), on `--reference-pairs` pairs;
  * `batched`: `InjectionEngine` on `--pairs` pairs sharing `--contents` contents (content
    trajectories included in the time), float32 on CPU, bf16 autocast on a GPU;
and prints samples/s and the batched/reference ratio. With no checkpoint the U-Net has random
weights (the speed does not depend on them).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffinject.config.schema import InjectionConfig
from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
from diffinject.nets.diffusion.models import build_unet, get_preset
from diffinject.stages.inject import InjectionEngine, reference_inject


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small_32")
    p.add_argument("--checkpoint", help="a diffinject diffusion.pt (its preset wins over --preset)")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--contents", type=int, default=4)
    p.add_argument("--reference-pairs", type=int, default=2)
    p.add_argument("--steps", type=int, nargs="+", default=[50, 1000])
    p.add_argument("--batch", type=int, default=32, help="pairs per U-Net pass")
    p.add_argument("--t-edit", type=int, default=500)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--skip-reference-above", type=int, default=1000,
                   help="skip the reference path for step counts above this (it is slow)")
    args = p.parse_args()
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if args.checkpoint:
        unet, meta = load_unet_checkpoint(args.checkpoint)
        preset = get_preset(meta["preset"])
    else:
        torch.manual_seed(0)
        preset = get_preset(args.preset)
        unet = build_unet(preset)
    unet = unet.to(device).eval()
    size = preset.image_size
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (args.pairs, size, size, 3), dtype=np.uint8)
    contents = rng.integers(0, 256, (args.contents, size, size, 3), dtype=np.uint8)
    content_index, seeds = np.arange(args.pairs) % args.contents, np.arange(args.pairs)
    where = torch.cuda.get_device_name(device) if use_cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; {preset.name} ({sum(q.numel() for q in unet.parameters()) / 1e6:.1f} M params, "
          f"{size}x{size}); t_edit {args.t_edit}; global injection; boosting at t <= 200")
    print(f"{'steps':>10} {'path':>10} {'pairs':>6} {'seconds':>9} {'samples/s':>10} {'batched/ref':>12}")
    for steps in args.steps:
        cfg = InjectionConfig(inversion_steps=steps, generation_steps=steps, t_edit=args.t_edit, mode="global",
                              batch_size=args.batch)
        reference_rate = None
        if steps <= args.skip_reference_above and args.reference_pairs > 0:
            synchronize(device)
            start = time.perf_counter()
            for i in range(args.reference_pairs):
                reference_inject(unet, cfg, originals[i], contents[content_index[i]], int(seeds[i]))
            synchronize(device)
            seconds = time.perf_counter() - start
            reference_rate = args.reference_pairs / seconds
            print(f"{f'{steps}/{steps}':>10} {'reference':>10} {args.reference_pairs:>6} {seconds:9.2f} "
                  f"{reference_rate:10.3f}", flush=True)
        synchronize(device)
        start = time.perf_counter()
        InjectionEngine(unet, cfg, contents, device=device).generate(originals, content_index, seeds)
        synchronize(device)
        seconds = time.perf_counter() - start
        rate = args.pairs / seconds
        ratio = f"{rate / reference_rate:12.2f}" if reference_rate else f"{'n/a':>12}"
        print(f"{f'{steps}/{steps}':>10} {'batched':>10} {args.pairs:>6} {seconds:9.2f} {rate:10.3f} {ratio}",
              flush=True)


if __name__ == "__main__":
    main()
