"""Diffusion training throughput and model FLOPs utilisation (MFU), per preset and batch size.

    python bench/diffusion_train.py [--presets small_32 adm_32] [--batch 64 16] [--steps 6]
                                    [--device auto|cpu|cuda]

For each preset it times, in the same run:
  * `bare`: U-Net forward + backward + AdamW on a fixed batch (the reference path), and
  * `loop`: stage 2's `train_diffusion` (pixels, flips, noising, P2 + VB loss, clipping, EMA),
    timed between its log lines after a warm-up,
in float32 on the CPU, and on a GPU (when there is one) in float32 (TF32) and in bf16 autocast.
FLOPs per training image (forward + backward) are counted by torch's FlopCounterMode.
MFU = achieved FLOP/s / peak: on a GPU the card's dense peak from its data sheet; on the CPU
the FLOP/s of a large float32 matmul measured in the same run (a practical peak).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffinject.config.schema import DiffusionConfig
from diffinject.nets.diffusion.models import build_unet, get_preset
from diffinject.stages.stage2 import train_diffusion
from diffinject.training.loop import TrainContext

# Dense (no sparsity) peak FLOP/s from NVIDIA's data sheets: H100 (nvidia.com/en-us/data-center/h100,
# SXM / PCIe / NVL columns), H200 (nvidia.com/en-us/data-center/h200, SXM / NVL columns), A100
# (A100 data sheet, SXM). The sheets quote bf16 and TF32 tensor-core figures "with sparsity": the
# dense figures are half of those. bf16: tensor cores; tf32: tensor cores on float32 tensors (what
# cuDNN's convolutions use by default, torch.backends.cudnn.allow_tf32); fp32: the CUDA cores.
GPU_PEAKS = {"H100 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 67e12},
             "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12},
             "H100 NVL": {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12},
             "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 67e12},
             "H200 NVL": {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12},
             "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}}


def card_of(device_name: str) -> str | None:
    """The GPU_PEAKS card of a torch.cuda.get_device_name, by its full name: "NVIDIA H100 80GB
    HBM3" is the SXM card, "NVIDIA H100 PCIe" and "NVIDIA H100 NVL" the others; None when unknown."""
    for family in ("H100", "H200"):
        if family in device_name:
            for form in ("NVL", "PCIe"):
                if form in device_name and f"{family} {form}" in GPU_PEAKS:
                    return f"{family} {form}"
            return f"{family} SXM" if f"{family} SXM" in GPU_PEAKS else family
    return "A100" if "A100" in device_name else None


def flops_per_image(preset_name: str) -> float:
    """Forward + backward FLOPs of one training image, counted on the meta device (no weights
    are made, so it costs the same for any model on any machine)."""
    from torch.utils.flop_counter import FlopCounterMode

    preset = get_preset(preset_name)
    with torch.device("meta"):
        unet = build_unet(preset)
        x = torch.randn(2, 3, preset.image_size, preset.image_size)
        t = torch.tensor([10, 500])
    with FlopCounterMode(display=False) as counter:
        unet(x, t).sample.float().pow(2).mean().backward()
    return counter.get_total_flops() / 2


def cpu_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def bare_images_per_s(preset_name: str, batch: int, steps: int, device: torch.device, bf16: bool) -> float:
    preset = get_preset(preset_name)
    unet = build_unet(preset).to(device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, preset.image_size, preset.image_size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step():
        with autocast:
            loss = unet(x, t).sample.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def loop_images_per_s(preset_name: str, batch: int, steps: int, device: torch.device, bf16: bool,
                      warmup: int = 2, **levers) -> float:
    """train_diffusion's own speed: time between the log line after warm-up and the last one.
    `levers`: DiffusionConfig speed fields (channels_last, compile, fused_adam)."""
    cfg = DiffusionConfig(preset=preset_name, batch_size=batch, num_steps=warmup + steps, log_every=1,
                          checkpoint_every=10**9, sample_every=0, bf16=bf16, hflip=True, **levers)
    size = get_preset(preset_name).image_size
    images = np.random.default_rng(0).integers(0, 256, size=(max(4 * batch, 64), size, size, 3), dtype=np.uint8)
    stamps: dict[int, float] = {}

    def log(step, metrics):
        synchronize(device)
        stamps[step] = time.perf_counter()

    train_diffusion(cfg, images, TrainContext(device=device, log=log), seed=0)
    return steps * batch / (stamps[warmup + steps] - stamps[warmup])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["small_32", "adm_32"])
    p.add_argument("--batch", type=int, nargs="+", help="one per preset (default: 64/16 on CPU, 128 on GPU)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = p.parse_args()
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
        card = card_of(name)
        peaks = None if card is None else {**GPU_PEAKS[card], "fp32": GPU_PEAKS[card]["tf32"]}  # TF32 on
        modes = [("fp32/tf32", False), ("bf16", True)]
        sheet = "unknown" if peaks is None else f"{peaks['bf16'] / 1e12:.0f} TFLOP/s bf16, {peaks['fp32'] / 1e12:.0f} tf32"
        print(f"device: {name}; dense peak from the data sheet: {sheet}")
    else:
        peak = cpu_matmul_peak()
        peaks = {"fp32": peak}
        modes = [("fp32", False)]
        print(f"device: CPU, {torch.get_num_threads()} threads; measured fp32 matmul peak "
              f"{peak / 1e9:.1f} GFLOP/s (the MFU denominator)")
    batches = args.batch or [128 if use_cuda else (64 if "small" in n or "tiny" in n else 16) for n in args.presets]
    if len(batches) != len(args.presets):
        raise SystemExit(f"--batch needs one value per preset ({len(args.presets)}), got {len(batches)}")

    print(f"{'preset':<10} {'params':>8} {'GFLOP/img':>10} {'batch':>6} {'mode':>10} {'path':>5} "
          f"{'img/s':>9} {'TFLOP/s':>8} {'MFU':>7} {'loop/bare':>10}")
    for preset_name, batch in zip(args.presets, batches):
        params = sum(q.numel() for q in build_unet(preset_name).parameters())
        flops = flops_per_image(preset_name)
        for mode, bf16 in modes:
            peak = None if peaks is None else peaks["bf16" if bf16 else "fp32"]
            bare = bare_images_per_s(preset_name, batch, args.steps, device, bf16)
            loop = loop_images_per_s(preset_name, batch, args.steps, device, bf16)
            for path, rate in (("bare", bare), ("loop", loop)):
                achieved = rate * flops
                mfu = f"{100 * achieved / peak:6.1f}%" if peak else "    n/a"
                ratio = f"{loop / bare:10.2f}" if path == "loop" else " " * 10
                print(f"{preset_name:<10} {params / 1e6:7.2f}M {flops / 1e9:10.2f} {batch:>6} {mode:>10} "
                      f"{path:>5} {rate:9.1f} {achieved / 1e12:8.3f} {mfu} {ratio}", flush=True)


if __name__ == "__main__":
    main()
