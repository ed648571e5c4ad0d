"""Every speed figure of the README's performance section, each beside its reference path, in one run.

    python bench/gpu_suite.py            # one H100/H200, planned to fit --budget-s (360 s)
    python bench/gpu_suite.py --plan     # no GPU needed: each row's counted FLOPs and estimated time (H200)
    python bench/gpu_suite.py --smoke    # the same code on the CPU, tiny presets, under 2 minutes (a CI test)
    python bench/gpu_suite.py --cpu      # the levers' CPU figures at the quick run's setting (a few minutes)
        [--only injection equality profile ray diffusion classifier] [--json FILE] [--peak-tflops X]
        [--budget-s S] [--fraction F] [--card NAME] [--out FILE]

Planning: every row's FLOPs are counted before anything runs (FlopCounterMode on the meta device:
no weights, no GPU), padding, content inversions and warm-up batches included, and its time is
estimated at --fraction (30 %) of the card's peak for its precision plus a fixed overhead
(model build, compilation; estimates, see ROW_S...). Before each row the suite checks the time
spent so far plus that estimate against --budget-s and skips the row (saying so) when it would
not fit. Each row is printed as soon as it is measured and the table rewritten to --out
($OUT/gpu_suite_table.md, else ./gpu_suite_table.md); a failing row prints `section X failed:`
and skips the rest of its section only.

Rows (GPU presets; the smoke run's stand-ins in brackets):
  * injection, adm_32 [shipped small_32], 50/50 steps: the one-pair reference path; the batched
    engine in eager float32; each lever alone on top of that; all levers together (headline);
  * injection, adm_32, the released 1000/1000 protocol (content injected on the 50-step grid)
    [21/21 steps on a 5-step grid], and p2_256 [tiny_32] at 50/50: eager float32 batched vs all levers;
  * equality, on the trained model the project ships: the batched float32 engine against the
    one-pair path at the CPU tests' tolerance (TF32 off), and the all-levers images' distance;
  * profile: the all-levers engine's time split between encoder passes, decoder passes and the
    rest (DDIM math, noise, host work), with the top operators printed;
  * Ray Data: the injection job on one actor against the engine alone, same pairs and levers;
  * diffusion training, adm_32 and p2_256 [tiny_32]: stage 2's loop, float32 vs its levers (MFU);
  * classifier training, ResNet-18 at 224x224 [32x32]: the stage-4 loop, float32 vs bf16 + channels_last.

`% limit`: achieved useful FLOP/s over the peak (the pairs asked for; a compiled engine's padding
copies are not useful work: the `padded` column says how much more it ran). FLOPs are counted by torch's FlopCounterMode (the
encoder and decoder halves of a U-Net pass times the passes the injection plan runs per sample,
content inversions shared over the pairs; forward + backward for training). The peak is the
card's dense data-sheet figure for the row's precision (bench/diffusion_train.py GPU_PEAKS, the
card matched by its full name): bf16 rows against the bf16 tensor-core peak (H100 SXM / H200 989
TFLOP/s), fp32 rows against the TF32 tensor-core peak (495), since cuDNN runs float32
convolutions on TF32 tensor cores by default (torch.backends.cudnn.allow_tf32; with it off, the
CUDA-core fp32 peak, 67). --peak-tflops X compares every row with X. On the CPU: a float32
matmul measured in the same run. U-Nets other than the shipped one have random
weights (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffinject.config.protocols import apply_protocol
from diffinject.config.quick import QUICK_DATASET
from diffinject.config.schema import ExperimentConfig, InjectionConfig
from diffinject.experiment.shipped_diffusion import quick_checkpoint
from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint, unet_checkpoint_bytes
from diffinject.nets.diffusion.hspace import decode, encode
from diffinject.nets.diffusion.models import build_unet, get_preset
from diffinject.stages.inject import InjectionEngine, reference_inject_tensor
from diffinject.stages.inject.engine import AUTO_CPU_PAIRS, InjectionPlan, padded_size

sys.path.insert(0, str(Path(__file__).parent))
from diffusion_train import (GPU_PEAKS, card_of, cpu_matmul_peak, flops_per_image, loop_images_per_s,  # noqa: E402
                             synchronize)

RELEASED_S_PER_SAMPLE = {32: 90.0, 256: 8.5}  # the paper's reported times (256: the middle of 7-10 s)
TOLERANCE = dict(rtol=1e-4, atol=1e-3)        # tests/test_inject_engine.py, batched vs one-pair path
BUDGET_S = 360.0      # a GPU check has 15 minutes of device time in all, machine start included
PLAN_FRACTION = 0.3   # the conservative share of the peak a row is planned at
ASSUMED_AUTO_BATCH = 4096  # pairs_that_fit's cap: the largest batch a memory-sized engine can pick
# Fixed per-row overheads of the plan (estimates, not measured on a GPU yet): model build, cuDNN's
# algorithm search and host work; inductor compiling an engine's passes or a training step; Ray's start.
ROW_S = 2.0
COMPILED_INJECTION_S = 15.0
COMPILED_TRAINING_S = 30.0
RAY_START_S = 10.0


@dataclass(frozen=True)
class Scale:
    inj32: str                 # the 32x32 injection model (the shipped checkpoint when "shipped")
    inj256: str
    steps: int                 # inversion = generation steps of the fast protocol
    release_steps: int         # the released protocol's steps and its inject / boost grid
    release_grid: int
    contents: int
    reference_pairs: int       # pairs through the one-pair path
    lever_pairs: int           # pairs of each lever row
    lever_batch: int           # pairs per U-Net pass of the lever rows
    pairs: int                 # pairs of the all-levers headline row (batch sized from memory)
    release_pairs: int         # pairs (= batch) of the released protocol's all-levers row
    pairs256: int              # pairs (= batch) of the 256x256 model's all-levers row
    equality_pairs: int
    ray_pairs: int
    profile_pairs: int
    diffusion: tuple[tuple[str, int], ...]  # (preset, batch) of the training rows
    train_steps: int
    classifier_size: int
    classifier_batch: int
    classifier_steps: int


# Sized so that the plan fits BUDGET_S at PLAN_FRACTION of an H200's peaks (python bench/gpu_suite.py --plan).
GPU = Scale(inj32="adm_32", inj256="p2_256", steps=50, release_steps=1000, release_grid=50, contents=32,
            reference_pairs=2, lever_pairs=256, lever_batch=256, pairs=1024, release_pairs=64, pairs256=32,
            equality_pairs=8, ray_pairs=512, profile_pairs=256, diffusion=(("adm_32", 128), ("p2_256", 16)),
            train_steps=20, classifier_size=224, classifier_batch=256, classifier_steps=30)
# The quick run's own setting on a CPU (its shipped model, 50/50 steps, 32 pairs per pass): the
# levers' CPU figures; a few minutes on 2 cores.
CPU = Scale(inj32="shipped", inj256="tiny_32", steps=50, release_steps=1000, release_grid=50, contents=10,
            reference_pairs=1, lever_pairs=32, lever_batch=32, pairs=64, release_pairs=8, pairs256=32,
            equality_pairs=8, ray_pairs=64, profile_pairs=32, diffusion=(("small_32", 64),), train_steps=4,
            classifier_size=64, classifier_batch=32, classifier_steps=3)
SMOKE = Scale(inj32="shipped", inj256="tiny_32", steps=6, release_steps=21, release_grid=5, contents=3,
              reference_pairs=1, lever_pairs=4, lever_batch=4, pairs=8, release_pairs=4, pairs256=4,
              equality_pairs=4, ray_pairs=8, profile_pairs=4, diffusion=(("tiny_32", 8),), train_steps=2,
              classifier_size=32, classifier_batch=4, classifier_steps=2)


@dataclass
class Row:
    section: str
    figure: str
    value: float
    unit: str
    limit: float | None = None      # the value at 100 % of the peak (useful work only)
    reference: float | None = None  # the reference path's value in this run
    reference_name: str = ""
    note: str = ""
    seconds: float = 0.0            # wall time of the measurement
    padded: float = 1.0             # work run / useful work in the timed window (compiled engines' padding)

    def cells(self) -> list[str]:
        pct = f"{100 * self.value / self.limit:.1f} %" if self.limit else ""
        ratio = f"{self.value / self.reference:.2f}x" if self.reference else ""
        padding = f"+{100 * (self.padded - 1):.0f} %" if self.padded > 1 else ""
        return [self.section, self.figure, f"{self.value:.4g} {self.unit}", pct, padding,
                f"{ratio} {self.reference_name}".strip(), self.note]


HEADER = ["section", "figure", "value", "% limit", "padded", "x reference", "note"]


@dataclass
class Planned:
    """One measurement of the suite, counted before it runs."""

    section: str
    name: str
    precision: str       # "bf16" or "fp32": the peak it is planned at and compared with
    useful: float        # FLOPs of the work it measures
    total: float         # FLOPs it runs in all: padding, content inversions and warm-up batches too
    overhead_s: float    # fixed estimate: build, compilation, start-up
    run: Callable[[], list[Row]]

    def estimate_s(self, peaks: dict[str, float], fraction: float) -> float:
        return self.total / (fraction * peaks[self.precision]) + self.overhead_s


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def release(device: torch.device) -> None:
    """Frees what the last measurement left: compiled code (dynamo's caches, so that no function
    nears its recompile limit over the engines of a run), CUDA-graph pools and cached blocks."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def digit_images(n: int, seed: int) -> np.ndarray:
    """n coloured 28x28 digits (scikit-learn's, embedded): realistic inputs for inversion."""
    from diffinject.data.colored_digits import upscaled_digits

    gray, labels = upscaled_digits()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(gray), n)
    colours = rng.integers(64, 256, (10, 3))
    return (gray[pick, :, :, None] * colours[labels[pick]][:, None, None, :]).astype(np.uint8)


def preset_of(name: str) -> str:
    return "small_32" if name == "shipped" else name


def load_model(name: str, device: torch.device):
    if name == "shipped":
        unet, _ = load_unet_checkpoint(quick_checkpoint(QUICK_DATASET))
    else:
        torch.manual_seed(0)
        unet = build_unet(name)
    return unet.to(device).eval()


def pass_flops(preset: str) -> tuple[float, float]:
    """FLOPs of the encoder and the decoder half of one image's U-Net pass (meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = build_unet(preset).eval()
        size = unet.config.sample_size
        x, t = torch.randn(1, 3, size, size), torch.tensor([500])
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            encoded = encode(unet, x, t)
        enc = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            decode(unet, encoded)
    return float(enc), float(counter.get_total_flops())


def passes_per_sample(plan: InjectionPlan, content_share: float) -> tuple[float, float]:
    """(encoder, decoder) passes per sample: the original's inversion, the generation (a second
    decoder pass at injected steps, a full extra pass per calibrated step), and `content_share`
    content inversions (1 on the one-pair path; 0 in the engine's steady state, where a job's
    contents are inverted once when the engine is built)."""
    inv, gen, injected = len(plan.inversion_grid) - 1, len(plan.generation_grid) - 1, len(plan.content_step)
    extra = injected if plan.omega else 0
    return (inv + gen + extra + content_share * (inv + 1),
            inv + gen + injected + extra + content_share * inv)


def chunk_lengths(pairs: int, batch: int) -> list[int]:
    return [min(batch, pairs - start) for start in range(0, pairs, batch)]


def pass_rows(pairs: int, batch: int, compile_mode: str) -> int:
    """Rows the engine's passes run for `pairs` pairs: each chunk, padded to its pass size when compiled."""
    return sum(n if compile_mode == "none" else padded_size(n, batch) for n in chunk_lengths(pairs, batch))


def precision_class(cfg: InjectionConfig) -> str:
    return "bf16" if cfg.precision.startswith("bf16") else "fp32"


class Injection:
    """Plans and times the engine and the one-pair path for one model and one protocol (the model
    is loaded at the first measurement)."""

    def __init__(self, model: str, base: InjectionConfig, device: torch.device, peaks: dict, contents: np.ndarray):
        self.model, self.base, self.device, self.peaks, self.contents = model, base, device, peaks, contents
        self.enc_flops, self.dec_flops = pass_flops(preset_of(model))
        self._unet = None

    @property
    def unet(self):
        if self._unet is None:
            self._unet = load_model(self.model, self.device)
        return self._unet

    def sample_flops(self, cfg: InjectionConfig, content_share: float = 0.0) -> float:
        enc, dec = passes_per_sample(InjectionPlan.from_config(cfg), content_share)
        return enc * self.enc_flops + dec * self.dec_flops

    def limit(self, cfg: InjectionConfig, content_share: float = 0.0) -> float:
        return self.peaks[precision_class(cfg)] / self.sample_flops(cfg, content_share)

    def engine_work(self, pairs: int, **levers) -> tuple[float, float]:
        """(useful, total) FLOPs of engine_rate: the pairs; the padded passes of the content
        inversion, the warm-up batches (GPU) and the timed generation."""
        cfg = dataclasses.replace(self.base, **levers)
        batch = cfg.batch_size or (ASSUMED_AUTO_BATCH if self.device.type == "cuda" else AUTO_CPU_PAIRS)
        sample = self.sample_flops(cfg)
        content = self.sample_flops(cfg, 1.0) - sample
        rows = pass_rows(pairs, batch, cfg.compile)
        if self.device.type == "cuda":
            rows += sum(pass_rows(n, batch, cfg.compile) for n in set(chunk_lengths(pairs, batch)))
        return pairs * sample, rows * sample + pass_rows(len(self.contents), batch, cfg.compile) * content

    def engine_rate(self, pairs: int, **levers) -> tuple[float, float, InjectionConfig, float]:
        """Steady-state samples/s: the engine is built (compilation, content trajectories) before
        the timed generation of `pairs` pairs; on a GPU each chunk length runs once first (cuDNN's
        algorithm search, the compiled pass sizes, CUDA graphs recorded). Also returns the padded
        work over the useful work of the timed generation."""
        cfg = dataclasses.replace(self.base, **levers)
        originals = digit_images(pairs, seed=1)
        index, seeds = np.arange(pairs) % len(self.contents), np.arange(pairs)
        engine = InjectionEngine(self.unet, cfg, self.contents, self.device)
        lengths = chunk_lengths(pairs, engine.batch_size)
        if self.device.type == "cuda":
            for n in sorted(set(lengths)):
                engine.generate_tensor(originals[:n], index[:n], seeds[:n])
        _, seconds = timed(lambda: engine.generate_tensor(originals, index, seeds), self.device)
        padded = sum(engine.pass_rows(n) for n in lengths) / pairs
        return pairs / seconds, seconds, cfg, padded

    def reference_rate(self, pairs: int) -> tuple[float, float]:
        """The one-pair path, each pair with its own content inversion (no sharing)."""
        originals = digit_images(pairs, seed=1)
        cfg = dataclasses.replace(self.base, precision="fp32")

        def run():
            for i in range(pairs):
                reference_inject_tensor(self.unet, cfg, originals[i], self.contents[i % len(self.contents)], i)

        _, seconds = timed(run, self.device)
        return pairs / seconds, seconds


def fastest_levers(device: torch.device) -> dict:
    """All levers together: on a GPU bf16 weights, channels_last, CUDA graphs, noise made on the
    device and batches sized from free memory; on a CPU (no bf16 units, no graphs) channels_last
    and counter noise (inductor has its own row: compiling it again for each row would take most
    of the smoke run's two minutes)."""
    if device.type == "cuda":
        return dict(precision="bf16_weights", channels_last=True, compile="cudagraphs", noise="counter", batch_size=0)
    return dict(precision="fp32", channels_last=True, noise="counter")


def lever_rows(device: torch.device) -> list[dict]:
    """Each lever alone on top of the eager float32 engine (GPU-only ones only on a GPU)."""
    levers = [dict(precision="bf16_autocast"), dict(precision="bf16_weights"), dict(channels_last=True),
              dict(attention="classic"), dict(noise="counter"), dict(compile="inductor")]
    if device.type == "cuda":
        levers += [dict(compile="cudagraphs"), dict(precision="bf16_weights", batch_size=0)]
    return levers


def describe(levers: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in levers.items())


def engine_row(bench: Injection, figure: str, pairs: int, levers: dict, measured: dict, key: str,
               reference: str | None, reference_name: str, note: Callable[[float], str] = lambda rate: "") -> Planned:
    """A row timing the engine with `levers` on `pairs` pairs; its rate is kept as measured[key]."""
    cfg = dataclasses.replace(bench.base, **levers)
    useful, total = bench.engine_work(pairs, **levers)
    overhead = ROW_S + (COMPILED_INJECTION_S if cfg.compile != "none" else 0.0)

    def run() -> list[Row]:
        rate, seconds, cfg, padded = bench.engine_rate(pairs, **levers)
        measured[key] = rate
        return [Row("injection", figure, rate, "samples/s", bench.limit(cfg), measured.get(reference),
                    reference_name, note(rate), seconds, padded)]

    return Planned("injection", figure, precision_class(cfg), useful, total, overhead, run)


def injection_plan(scale: Scale, device: torch.device, peaks: dict) -> list[Planned]:
    contents = digit_images(scale.contents, seed=2)
    fast = fastest_levers(device)
    paper = scale is GPU  # the paper's times compare with the real models and step counts only
    base = InjectionConfig(inversion_steps=scale.steps, generation_steps=scale.steps, t_edit=500, t_boost=200,
                           mode="global", precision="fp32", batch_size=scale.lever_batch)
    name32 = "small_32 (shipped)" if scale.inj32 == "shipped" else scale.inj32
    bench = Injection(scale.inj32, base, device, peaks, contents)
    protocol = f"{name32}, {scale.steps}/{scale.steps}"
    measured: dict[str, float] = {}
    pairs = scale.reference_pairs

    def reference() -> list[Row]:
        rate, seconds = bench.reference_rate(pairs)
        measured["one-pair"] = rate
        return [Row("injection", f"{protocol}: one-pair reference path", rate, "samples/s",
                    bench.limit(base, content_share=1),
                    note="fp32, 2 full passes per injected step, its own content inversion", seconds=seconds)]

    flops = pairs * bench.sample_flops(base, 1.0)
    plan = [Planned("injection", f"{protocol}: one-pair reference path", "fp32", flops, flops, ROW_S, reference)]
    plan.append(engine_row(bench, f"{protocol}: batched, eager fp32 (batch {scale.lever_batch})", scale.lever_pairs,
                           {}, measured, "eager", "one-pair", "one-pair path"))
    for levers in lever_rows(device):
        plan.append(engine_row(bench, f"{protocol}: + {describe(levers)}", scale.lever_pairs, levers, measured,
                               describe(levers), "eager", "eager fp32 batched"))
    plan.append(engine_row(bench, f"{protocol}: all levers ({scale.pairs} pairs)", scale.pairs, fast, measured,
                           "all", "one-pair", "one-pair path",
                           lambda rate: describe(fast) + (f"; {rate * RELEASED_S_PER_SAMPLE[32]:.0f}x the paper's "
                                                          f"90 s/sample" if paper else "")))
    release = apply_protocol(ExperimentConfig(), "release").injection
    release = dataclasses.replace(release, inversion_steps=scale.release_steps, generation_steps=scale.release_steps,
                                  inject_grid=scale.release_grid, boost_grid=scale.release_grid, precision="fp32",
                                  batch_size=scale.lever_batch)
    plan += eager_and_all_levers(Injection(scale.inj32, release, device, peaks, contents),
                                 f"{name32}, released {scale.release_steps}/{scale.release_steps} "
                                 f"(grid {scale.release_grid})", scale.release_pairs, fast,
                                 "90 s/sample" if paper else None)
    plan += eager_and_all_levers(Injection(scale.inj256, base, device, peaks, contents),
                                 f"{scale.inj256}, {scale.steps}/{scale.steps}", scale.pairs256, fast,
                                 "7-10 s/sample" if paper else None)
    return plan


def eager_and_all_levers(bench: Injection, protocol: str, pairs: int, fast: dict, released: str | None
                         ) -> list[Planned]:
    """The eager float32 engine (on an eighth of the pairs: it is the slow one) and all levers,
    with the pairs in one batch (a memory-sized batch would pad them to an eighth of its size)."""
    measured: dict[str, float] = {}
    size = get_preset(preset_of(bench.model)).image_size
    levers = {**fast, "batch_size": pairs}

    def note(rate: float) -> str:
        return f"{rate * RELEASED_S_PER_SAMPLE[size]:.0f}x the paper's {released}" if released else "stand-in model"

    return [engine_row(bench, f"{protocol}: batched, eager fp32", max(1, pairs // 8), {}, measured, "eager",
                       None, ""),
            engine_row(bench, f"{protocol}: all levers ({pairs} pairs, batch {pairs})", pairs, levers, measured,
                       "all", "eager", "eager fp32 batched", note)]


def equality_plan(scale: Scale, device: torch.device, peaks: dict) -> list[Planned]:
    """On the shipped (trained) model: batched fp32 vs one-pair path, and all levers vs one-pair path."""
    cfg = InjectionConfig(inversion_steps=scale.steps, generation_steps=scale.steps, t_edit=500, t_boost=200,
                          mode="global", precision="fp32", batch_size=scale.lever_batch)
    pairs = scale.equality_pairs
    bench = Injection("shipped", cfg, device, peaks, digit_images(3, seed=2))
    useful = pairs * bench.sample_flops(cfg, 1.0)
    total = useful + 2 * bench.engine_work(pairs)[1]

    def run() -> list[Row]:
        return equality_rows(bench, cfg, pairs, device)

    return [Planned("equality", f"batched fp32 and all levers vs one-pair path ({pairs} pairs)", "fp32", useful,
                    total, 2 * ROW_S, run)]


def equality_rows(bench: Injection, cfg: InjectionConfig, pairs: int, device: torch.device) -> list[Row]:
    unet, contents, originals = bench.unet, bench.contents, digit_images(pairs, seed=1)
    index, seeds = np.arange(len(originals)) % 3, np.arange(len(originals))
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        start = time.perf_counter()
        reference = torch.cat([reference_inject_tensor(unet, cfg, originals[i], contents[index[i]], int(seeds[i]))
                               for i in range(len(originals))])
        batched = InjectionEngine(unet, cfg, contents, device).generate_tensor(originals, index, seeds)
        seconds = time.perf_counter() - start
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    excess = ((batched - reference).abs() - TOLERANCE["atol"] - TOLERANCE["rtol"] * reference.abs()).max()
    ok = bool(excess <= 0)
    rows = [Row("equality", f"batched fp32 vs one-pair path, max |diff| ({len(originals)} pairs)",
                float((batched - reference).abs().max()), "", note=f"{'PASS' if ok else 'FAIL'}: within rtol 1e-4, "
                f"atol 1e-3 (the CPU tests' tolerance), TF32 off", seconds=seconds)]
    fast = {**fastest_levers(device), "noise": "host"}  # same noise draws, so only the arithmetic differs
    start = time.perf_counter()
    levers = InjectionEngine(unet, dataclasses.replace(cfg, **fast), contents, device).generate_tensor(
        originals, index, seeds)
    diff = ((levers.clamp(-1, 1) - reference.clamp(-1, 1)).abs() * 127.5)
    rows.append(Row("equality", "all levers (host noise) vs one-pair path, mean |diff|", float(diff.mean()),
                    "uint8 levels", note=f"max {float(diff.max()):.1f} levels; {describe(fast)}",
                    seconds=time.perf_counter() - start))
    return rows


def ray_plan(scale: Scale, device: torch.device, peaks: dict) -> list[Planned]:
    """The Ray Data injection job on one actor against the engine alone, same pairs and levers
    (no compile: each actor would compile again)."""
    from diffinject.stages.inject.manifest import build_manifest

    levers = {k: v for k, v in fastest_levers(device).items() if k != "compile"}
    cfg = InjectionConfig(inversion_steps=scale.steps, generation_steps=scale.steps, t_edit=500, t_boost=200,
                          mode="global", **{"batch_size": scale.lever_batch, **levers})
    train = digit_images(max(scale.ray_pairs, 16), seed=1)
    topk = np.arange(scale.contents)
    manifest = build_manifest(len(train), topk, conflict_ratio=scale.ray_pairs / len(train), seed=0)
    bench = Injection(scale.inj32, cfg, device, peaks, train[topk])
    useful, total = bench.engine_work(manifest.num_rows)
    figure = f"Ray Data injection job, 1 actor ({manifest.num_rows} pairs)"
    return [Planned("ray", figure, precision_class(cfg), useful, 2 * total, RAY_START_S,
                    lambda: ray_rows(bench, cfg, manifest, train, topk, figure))]


def ray_rows(bench: Injection, cfg: InjectionConfig, manifest, train: np.ndarray, topk: np.ndarray,
             figure: str) -> list[Row]:
    import ray

    from diffinject.cluster.inject_job import run_injection_job

    device, unet, pairs = bench.device, bench.unet, manifest.num_rows
    originals = train[manifest["original_index"].to_numpy()]
    index, seeds = manifest["content_index"].to_numpy(), manifest["seed"].to_numpy()
    _, alone = timed(lambda: InjectionEngine(unet, cfg, train[topk], device).generate_tensor(originals, index, seeds),
                     device)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=max(2, torch.get_num_threads()), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = Path(tmp) / "diffusion.pt"
            checkpoint.write_bytes(unet_checkpoint_bytes(unet.state_dict(), get_preset(preset_of(bench.model)), 0, {}))
            labels = np.zeros(len(train), dtype=np.int64)
            ids = np.array([str(i) for i in range(len(train))])
            start = time.perf_counter()
            run_injection_job(manifest, train, ids, labels, labels, train[topk], ids[topk], labels[topk],
                              labels[topk], checkpoint, cfg, Path(tmp) / "out", num_actors=1,
                              use_gpu="true" if device.type == "cuda" else "false", verbose=False)
            job = time.perf_counter() - start
    finally:
        if started_here:
            ray.shutdown()
    return [Row("ray", figure, pairs / job, "samples/s", reference=pairs / alone, reference_name="engine alone",
                note="includes actor start, checkpoint load and Parquet writes", seconds=job)]


def diffusion_plan(scale: Scale, device: torch.device, peaks: dict) -> list[Planned]:
    """Stage 2's loop, float32 vs its levers; FLOPs forward + backward per image."""
    fused = dict(channels_last=True, fused_adam=True)
    variants = [("fp32", False, {})]
    if device.type == "cuda":
        variants += [("bf16", True, {}), ("bf16 + channels_last + fused AdamW", True, fused),
                     ("bf16 + channels_last + fused AdamW + inductor", True, {**fused, "compile": "inductor"})]
    else:  # bf16 autocast is a GPU lever in stage 2
        variants += [("channels_last + fused AdamW", False, fused)]
    plan = []
    for preset, batch in scale.diffusion:
        flops, measured = flops_per_image(preset), {}
        for label, bf16, levers in variants:
            warmup = 3 if levers.get("compile") else 2
            overhead = ROW_S + (COMPILED_TRAINING_S if levers.get("compile") else 0.0)
            figure = f"{preset}, batch {batch}: {label}"
            plan.append(Planned("diffusion training", figure, "bf16" if bf16 else "fp32",
                                scale.train_steps * batch * flops, (warmup + scale.train_steps) * batch * flops,
                                overhead, training_run(scale, device, peaks, preset, batch, figure, bf16, levers,
                                                       warmup, flops, measured)))
    return plan


def training_row(section: str, figure: str, rate: float, bf16: bool, has_levers: bool, peaks: dict, flops: float,
                 measured: dict, note: str, start: float) -> Row:
    """A training loop's row: images/s against the peak of its precision, and against the section's
    first (float32) row when it turns a lever on."""
    reference = measured.get("fp32") if has_levers else None
    measured.setdefault("fp32", rate)
    return Row(section, figure, rate, "images/s", peaks["bf16" if bf16 else "fp32"] / flops, reference,
               "fp32" if reference else "", note=note, seconds=time.perf_counter() - start)


def training_run(scale: Scale, device: torch.device, peaks: dict, preset: str, batch: int, figure: str, bf16: bool,
                 levers: dict, warmup: int, flops: float, measured: dict) -> Callable[[], list[Row]]:
    def run() -> list[Row]:
        start = time.perf_counter()
        rate = loop_images_per_s(preset, batch, scale.train_steps, device, bf16, warmup=warmup, **levers)
        return [training_row("diffusion training", figure, rate, bf16, bool(levers or bf16), peaks, flops, measured,
                             f"{flops / 1e9:.1f} GFLOP/image (fwd + bwd)", start)]
    return run


def classifier_plan(scale: Scale, device: torch.device, peaks: dict) -> list[Planned]:
    """Stage 4's loop (Vanilla, ResNet-18): float32 vs bf16 + channels_last (GPU) / channels_last (CPU)."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models import resnet18

    size, batch, warmup = scale.classifier_size, scale.classifier_batch, 2
    with torch.device("meta"):
        net, x = resnet18(num_classes=2), torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    flops = counter.get_total_flops() / 2
    measured: dict[str, float] = {}
    plan = []
    for label, levers in (("fp32", {}), ("bf16 + channels_last", dict(bf16=True, channels_last=True))):
        bf16 = bool(levers) and device.type == "cuda"
        figure = f"ResNet-18 {size}x{size}, batch {batch}: {label}"
        plan.append(Planned("classifier training", figure, "bf16" if bf16 else "fp32",
                            scale.classifier_steps * batch * flops, (warmup + scale.classifier_steps) * batch * flops,
                            ROW_S, classifier_run(scale, device, peaks, figure, levers, warmup, flops, measured)))
    return plan


def classifier_run(scale: Scale, device: torch.device, peaks: dict, figure: str, levers: dict, warmup: int,
                   flops: float, measured: dict) -> Callable[[], list[Row]]:
    def run() -> list[Row]:
        from diffinject.config.schema import ClassifierConfig
        from diffinject.data.parquet import ArraySplit
        from diffinject.methods.registry import train_method
        from diffinject.training.loop import TrainContext, TrainData

        size, batch = scale.classifier_size, scale.classifier_batch
        rng = np.random.default_rng(0)
        n = 4 * batch
        split = ArraySplit(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 2, n),
                           rng.integers(0, 2, n), np.array([str(i) for i in range(n)]))
        small = ArraySplit(split.images[:batch], split.labels[:batch], split.biases[:batch], split.ids[:batch])
        data = TrainData(train=split, valid=small, test=small, num_classes=2, num_biases=2)
        cfg = ClassifierConfig(arch="resnet18", num_steps=warmup + scale.classifier_steps, batch_size=batch,
                               eval_every=10**9, log_every=1, **levers)
        stamps = {}

        def log(step, metrics):
            synchronize(device)
            stamps[step] = time.perf_counter()

        start = time.perf_counter()
        train_method("vanilla", cfg, data, TrainContext(device=device, log=log), seed=0)
        rate = scale.classifier_steps * batch / (stamps[warmup + scale.classifier_steps] - stamps[warmup])
        bf16 = bool(levers) and device.type == "cuda"
        bf16_note = "" if device.type == "cuda" or not levers else "bf16 is a GPU lever: float32 here; "
        return [training_row("classifier training", figure, rate, bf16, bool(levers), peaks, flops, measured,
                             f"{bf16_note}{flops / 1e9:.2f} GFLOP/image (fwd + bwd)", start)]
    return run


def profile_plan(scale: Scale, device: torch.device, peaks: dict) -> list[Planned]:
    """Where the all-levers engine's time goes: one batch of profile_pairs pairs under torch.profiler."""
    cfg = InjectionConfig(inversion_steps=scale.steps, generation_steps=scale.steps, t_edit=500, t_boost=200,
                          mode="global", **{"precision": "fp32", **fastest_levers(device),
                                            "batch_size": scale.profile_pairs})
    bench = Injection(scale.inj32, cfg, device, peaks, digit_images(scale.contents, seed=2))
    useful, total = bench.engine_work(scale.profile_pairs)
    overhead = ROW_S + (COMPILED_INJECTION_S if cfg.compile != "none" else 0.0)
    return [Planned("profile", f"all levers, one batch of {scale.profile_pairs} pairs", precision_class(cfg), useful,
                    total, overhead, lambda: profile_rows(scale, bench))]


def profile_rows(scale: Scale, bench: Injection) -> list[Row]:
    """The all-levers engine's time split into the encoder passes, the decoder passes and the rest
    (DDIM math, slerp, noise, host work); the top operators are printed below the split."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device, contents = bench.device, bench.contents
    engine = InjectionEngine(bench.unet, bench.base, contents, device)
    pairs = engine.batch_size
    originals, index, seeds = digit_images(pairs, seed=1), np.arange(pairs) % len(contents), np.arange(pairs)
    if device.type == "cuda":
        engine.generate_tensor(originals, index, seeds)

    def labelled(fn, label):
        def call(*args):
            with record_function(label):
                return fn(*args)
        return call

    engine._encoder, engine._decoder = labelled(engine._encoder, "encoder"), labelled(engine._decoder, "decoder")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _, wall = timed(lambda: engine.generate_tensor(originals, index, seeds), device)
    events = prof.key_averages()
    kind = "device" if device.type == "cuda" else "cpu"

    def seconds(label: str) -> float:
        event = next((e for e in events if e.key == label), None)
        return 0.0 if event is None else getattr(event, f"{kind}_time_total") / 1e6

    enc, dec = seconds("encoder"), seconds("decoder")
    sort = "self_device_time_total" if kind == "device" else "self_cpu_time_total"
    print(f"top operators of one all-levers batch ({pairs} pairs, {kind} time):")
    print(events.table(sort_by=sort, row_limit=12))
    name = f"{'small_32 (shipped)' if scale.inj32 == 'shipped' else scale.inj32}, {scale.steps}/{scale.steps}"
    note = f"one batch of {pairs} pairs: {wall:.2f} s under the profiler"
    rest = max(wall - enc - dec, 0.0)
    return [Row("profile", f"{name}, all levers: {part}", 100 * value / wall, "% of the batch", note=note)
            for part, value in (("encoder passes", enc), ("decoder passes", dec),
                                ("rest (DDIM math, slerp, noise, host)", rest))]


def device_peaks(device: torch.device, override_tflops: float | None, card: str | None
                 ) -> tuple[str, dict[str, float], str]:
    """(device name, {"bf16": peak, "fp32": peak} in FLOP/s, a line saying where they come from).
    fp32 rows are compared with the TF32 tensor-core peak while cuDNN's TF32 is on (torch's
    default for convolutions, which are most of a U-Net's FLOPs), else with the CUDA-core peak."""
    if override_tflops:
        name = card or (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU")
        peak = override_tflops * 1e12
        return name, {"bf16": peak, "fp32": peak}, f"{override_tflops:g} TFLOP/s for every row (--peak-tflops)"
    if device.type == "cuda" or card:
        name = card or torch.cuda.get_device_name(device)
        known = card or card_of(name)
        if known is None:
            raise SystemExit(f"no data-sheet peak for {name!r}; pass --peak-tflops")
        sheet = GPU_PEAKS[known]
        tf32 = torch.backends.cudnn.allow_tf32
        fp32 = sheet["tf32"] if tf32 else sheet["fp32"]
        return name, {"bf16": sheet["bf16"], "fp32": fp32}, (
            f"{known} data sheet, dense: bf16 {sheet['bf16'] / 1e12:.0f} TFLOP/s; fp32 rows against "
            f"{'TF32 tensor cores (cuDNN TF32 on)' if tf32 else 'CUDA cores (TF32 off)'} {fp32 / 1e12:.0f} TFLOP/s")
    peak = cpu_matmul_peak()
    return (f"CPU, {torch.get_num_threads()} threads", {"bf16": peak, "fp32": peak},
            f"{peak / 1e9:.1f} GFLOP/s float32 matmul (measured)")


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


SECTIONS = ("injection", "equality", "profile", "ray", "diffusion", "classifier")
PLANNERS = {"injection": injection_plan, "equality": equality_plan, "profile": profile_plan, "ray": ray_plan,
            "diffusion": diffusion_plan, "classifier": classifier_plan}


def build_plan(scale: Scale, device: torch.device, peaks: dict, sections=SECTIONS) -> list[Planned]:
    """Every row of the chosen sections, counted (nothing is run or loaded on the device)."""
    return [row for section in SECTIONS if section in sections for row in PLANNERS[section](scale, device, peaks)]


def plan_table(plan: list[Planned], peaks: dict, fraction: float, budget: float) -> str:
    """The plan as text: each row's FLOPs and estimated seconds, cumulative, and whether it fits."""
    lines = [f"{'section':<20} {'row':<78} {'prec':<5} {'useful TF':>10} {'run TF':>10} {'est s':>7} {'cum s':>7}"]
    total, kept = 0.0, []
    for row in plan:
        seconds = row.estimate_s(peaks, fraction)
        fits = total + seconds <= budget
        if fits:
            total += seconds
            kept.append(row)
        lines.append(f"{row.section:<20} {row.name[:78]:<78} {row.precision:<5} {row.useful / 1e12:10.1f} "
                     f"{row.total / 1e12:10.1f} {seconds:7.1f} {total:7.1f}" + ("" if fits else "  SKIPPED: over budget"))
    flop_s = sum(r.total / (fraction * peaks[r.precision]) for r in kept)
    overhead = sum(r.overhead_s for r in kept)
    skipped = f"; {len(plan) - len(kept)} of {len(plan)} rows skipped" if len(kept) < len(plan) else ""
    lines.append(f"total: {sum(r.total for r in kept) / 1e15:.2f} PFLOP run ({sum(r.useful for r in kept) / 1e15:.2f} "
                 f"useful): {flop_s:.0f} s at {100 * fraction:.0f} % of the peaks + {overhead:.0f} s fixed overheads "
                 f"(estimates) = {flop_s + overhead:.0f} s of a {budget:.0f} s budget{skipped}")
    return "\n".join(lines)


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_suite_table.md" if os.environ.get("OUT") else Path("gpu_suite_table.md")


def run_plan(plan: list[Planned], peaks: dict, fraction: float, budget: float, device: torch.device,
             header: str, out: Path) -> list[Row]:
    """Runs the rows in order: skips (saying so) a row whose estimate does not fit what is left of
    the budget; a failing row stops its own section only. Each row is printed when measured and
    the table rewritten to `out`."""
    started, rows, notes, failed = time.perf_counter(), [], [], set()
    for i, planned in enumerate(plan):
        elapsed = time.perf_counter() - started
        estimate = planned.estimate_s(peaks, fraction)
        if planned.section in failed:
            notes.append(f"skipped {planned.section} / {planned.name}: its section failed")
        elif elapsed + estimate > budget:
            notes.append(f"skipped {planned.section} / {planned.name}: estimated {estimate:.0f} s at "
                         f"{100 * fraction:.0f} % of the peak, {budget - elapsed:.0f} s of the budget left")
            print(notes[-1], flush=True)
        else:
            try:
                new = planned.run()
            except Exception as error:  # noqa: BLE001 - one failure keeps the other sections
                failed.add(planned.section)
                notes.append(f"section {planned.section} failed: {type(error).__name__}: {error}")
                print(notes[-1], flush=True)
                new = []
            for row in new:
                print(f"[{time.perf_counter() - started:6.0f} s] " + " | ".join(row.cells()), flush=True)
            rows += new
        if i + 1 == len(plan) or plan[i + 1].section != planned.section:
            plan[i] = None  # the section's models and engines go with its rows
        release(device)
        out.write_text(f"{header}; {time.perf_counter() - started:.0f} s so far\n\n{markdown(rows)}\n\n"
                       + "".join(f"- {note}\n" for note in notes))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scales = p.add_mutually_exclusive_group()
    scales.add_argument("--smoke", action="store_true", help="the CPU run with tiny presets (CI)")
    scales.add_argument("--cpu", action="store_true", help="the CPU run at the quick run's setting")
    p.add_argument("--plan", action="store_true", help="print the GPU plan (FLOPs, estimated seconds) and stop")
    p.add_argument("--card", choices=sorted(GPU_PEAKS), help="the card --plan estimates for (default: this "
                   "machine's GPU, else H200)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--out", type=Path, help="the table, rewritten after each row (default: $OUT/gpu_suite_table.md, "
                   "else ./gpu_suite_table.md)")
    p.add_argument("--peak-tflops", type=float)
    p.add_argument("--budget-s", type=float, help=f"seconds the run may take (default {BUDGET_S:g} on a GPU, "
                   "no limit with --smoke / --cpu)")
    p.add_argument("--fraction", type=float, default=PLAN_FRACTION, help="share of the peak rows are planned at")
    args = p.parse_args(argv)
    if not 0 < args.fraction <= 1:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    on_cpu = args.smoke or args.cpu
    scale = SMOKE if args.smoke else CPU if args.cpu else GPU
    budget = args.budget_s if args.budget_s is not None else math.inf if on_cpu else BUDGET_S
    if args.plan:
        card = args.card or (None if torch.cuda.is_available() else "H200")
        device = torch.device("cuda")  # planned as on a GPU: nothing runs
        name, peaks, peak_text = device_peaks(device, args.peak_tflops, card)
        print(f"plan for {name}; peak: {peak_text}; {'smoke' if args.smoke else 'cpu' if args.cpu else 'gpu'} scale")
        print(plan_table(build_plan(scale, device, peaks, args.only), peaks, args.fraction, budget))
        return []
    if not on_cpu and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_suite.py needs a GPU (no CUDA device found); run it with --smoke or --cpu "
                         "on a CPU, or --plan")
    device = torch.device("cpu" if on_cpu else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name, peaks, peak_text = device_peaks(device, args.peak_tflops, None)
    label = "smoke" if args.smoke else "cpu" if args.cpu else "gpu"
    header = f"device: {name}; peak: {peak_text}; torch {torch.__version__}; {label} scale; budget {budget:g} s"
    print(header, flush=True)
    plan = build_plan(scale, device, peaks, args.only)
    print(plan_table(plan, peaks, args.fraction, budget), flush=True)
    started = time.perf_counter()
    rows = run_plan(plan, peaks, args.fraction, budget, device, header, args.out or default_out())
    print()
    print(f"card: {name}; total {time.perf_counter() - started:.0f} s")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "peak": peak_text, "torch": torch.__version__,
                                         "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    return rows


if __name__ == "__main__":
    main()
