"""Every speed figure of the README's performance section, each beside its reference path, in one run.

    python bench/gpu_suite.py            # one H100/H200 (planned to fit 8 minutes)
    python bench/gpu_suite.py --smoke    # the same code on the CPU, tiny presets, under 2 minutes (a CI test)
    python bench/gpu_suite.py --cpu      # the levers' CPU figures at the quick run's setting (a few minutes)
        [--only injection equality profile ray diffusion classifier] [--json FILE] [--peak-tflops X]

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

`% limit`: achieved FLOP/s over the peak. FLOPs are counted by torch's FlopCounterMode (the
encoder and decoder halves of a U-Net pass times the passes the injection plan runs per sample,
content inversions shared over the pairs; forward + backward for training). The peak is the
card's dense bf16 data-sheet figure (H100/H200 989 TFLOP/s; --peak-tflops to use another), on
the CPU a float32 matmul measured in the same run. U-Nets other than the shipped one have random
weights (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffinject.config import ExperimentConfig, InjectionConfig, apply_protocol
from diffinject.diffusion.checkpoint import load_unet_checkpoint, unet_checkpoint_bytes
from diffinject.diffusion.hspace import decode, encode
from diffinject.diffusion.models import build_unet, get_preset
from diffinject.diffusion.shipped import quick_checkpoint
from diffinject.inject import InjectionEngine, reference_inject_tensor
from diffinject.inject.engine import InjectionPlan

sys.path.insert(0, str(Path(__file__).parent))
from diffusion_train import GPU_PEAKS, cpu_matmul_peak, flops_per_image, loop_images_per_s, synchronize  # noqa: E402

RELEASED_S_PER_SAMPLE = {32: 90.0, 256: 8.5}  # the paper's reported times (256: the middle of 7-10 s)
TOLERANCE = dict(rtol=1e-4, atol=1e-3)        # tests/test_inject_engine.py, batched vs one-pair path


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
    pairs: int                 # pairs of the all-levers headline rows (batch sized from memory)
    release_pairs: int
    pairs256: int
    equality_pairs: int
    diffusion: tuple[tuple[str, int], ...]  # (preset, batch) of the training rows
    train_steps: int
    classifier_size: int
    classifier_batch: int
    classifier_steps: int


GPU = Scale(inj32="adm_32", inj256="p2_256", steps=50, release_steps=1000, release_grid=50, contents=100,
            reference_pairs=2, lever_pairs=512, lever_batch=256, pairs=2048, release_pairs=256, pairs256=128,
            equality_pairs=16, diffusion=(("adm_32", 128), ("p2_256", 16)), train_steps=20,
            classifier_size=224, classifier_batch=256, classifier_steps=30)
# The quick run's own setting on a CPU (its shipped model, 50/50 steps, 32 pairs per pass): the
# levers' CPU figures; a few minutes on 2 cores.
CPU = Scale(inj32="shipped", inj256="tiny_32", steps=50, release_steps=1000, release_grid=50, contents=10,
            reference_pairs=1, lever_pairs=32, lever_batch=32, pairs=64, release_pairs=8, pairs256=32,
            equality_pairs=8, diffusion=(("small_32", 64),), train_steps=4,
            classifier_size=64, classifier_batch=32, classifier_steps=3)
SMOKE = Scale(inj32="shipped", inj256="tiny_32", steps=6, release_steps=21, release_grid=5, contents=3,
              reference_pairs=1, lever_pairs=4, lever_batch=4, pairs=8, release_pairs=4, pairs256=4,
              equality_pairs=4, diffusion=(("tiny_32", 8),), train_steps=2,
              classifier_size=32, classifier_batch=4, classifier_steps=2)


@dataclass
class Row:
    section: str
    figure: str
    value: float
    unit: str
    limit: float | None = None      # the value at 100 % of the peak
    reference: float | None = None  # the reference path's value in this run
    reference_name: str = ""
    note: str = ""
    seconds: float = 0.0            # wall time of the measurement

    def cells(self) -> list[str]:
        pct = f"{100 * self.value / self.limit:.1f} %" if self.limit else ""
        ratio = f"{self.value / self.reference:.2f}x" if self.reference else ""
        return [self.section, self.figure, f"{self.value:.4g} {self.unit}", pct,
                f"{ratio} {self.reference_name}".strip(), self.note]


HEADER = ["section", "figure", "value", "% limit", "x reference", "note"]


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def digit_images(n: int, seed: int) -> np.ndarray:
    """n coloured 28x28 digits (scikit-learn's, embedded): realistic inputs for inversion."""
    from diffinject.data.colored_digits import upscaled_digits

    gray, labels = upscaled_digits()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(gray), n)
    colours = rng.integers(64, 256, (10, 3))
    return (gray[pick, :, :, None] * colours[labels[pick]][:, None, None, :]).astype(np.uint8)


def load_model(name: str, device: torch.device):
    if name == "shipped":
        unet, _ = load_unet_checkpoint(quick_checkpoint())
    else:
        torch.manual_seed(0)
        unet = build_unet(name)
    return unet.to(device).eval()


def pass_flops(unet, device: torch.device) -> tuple[float, float]:
    """FLOPs of the encoder and the decoder half of one image's U-Net pass."""
    from torch.utils.flop_counter import FlopCounterMode

    size = unet.config.sample_size
    x, t = torch.randn(1, 3, size, size, device=device), torch.tensor([500], device=device)
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


class Injection:
    """Times the engine and the one-pair path for one model and one protocol."""

    def __init__(self, unet, base: InjectionConfig, device: torch.device, peak: float, contents: np.ndarray):
        self.unet, self.base, self.device, self.peak, self.contents = unet, base, device, peak, contents
        self.enc_flops, self.dec_flops = pass_flops(unet, device)

    def limit(self, cfg: InjectionConfig, content_share: float = 0.0) -> float:
        enc, dec = passes_per_sample(InjectionPlan.from_config(cfg), content_share)
        return self.peak / (enc * self.enc_flops + dec * self.dec_flops)

    def engine_rate(self, pairs: int, **levers) -> tuple[float, float, InjectionConfig]:
        """Steady-state samples/s: the engine is built (compilation, content trajectories) before
        the timed generation of `pairs` pairs; on a GPU one batch runs first (cuDNN's algorithm
        search, CUDA graphs recorded for the generation's call sequence)."""
        cfg = dataclasses.replace(self.base, **levers)
        originals = digit_images(pairs, seed=1)
        index, seeds = np.arange(pairs) % len(self.contents), np.arange(pairs)
        engine = InjectionEngine(self.unet, cfg, self.contents, self.device)
        if self.device.type == "cuda":
            warm = min(pairs, engine.batch_size)
            engine.generate_tensor(originals[:warm], index[:warm], seeds[:warm])
        _, seconds = timed(lambda: engine.generate_tensor(originals, index, seeds), self.device)
        return pairs / seconds, seconds, cfg

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


def lever_rows(scale: Scale, device: torch.device) -> list[dict]:
    """Each lever alone on top of the eager float32 engine (GPU-only ones only on a GPU)."""
    levers = [dict(precision="bf16_autocast"), dict(precision="bf16_weights"), dict(channels_last=True),
              dict(attention="classic"), dict(noise="counter"), dict(compile="inductor")]
    if device.type == "cuda":
        levers += [dict(compile="cudagraphs"), dict(precision="bf16_weights", batch_size=0)]
    return levers


def injection_rows(scale: Scale, device: torch.device, peak: float) -> list[Row]:
    rows: list[Row] = []
    contents = digit_images(scale.contents, seed=2)
    fast = fastest_levers(device)
    paper = scale is GPU  # the paper's times compare with the real models and step counts only
    base = InjectionConfig(inversion_steps=scale.steps, generation_steps=scale.steps, t_edit=500, t_boost=200,
                           mode="global", precision="fp32", batch_size=scale.lever_batch)
    unet32 = load_model(scale.inj32, device)
    name32 = "small_32 (shipped)" if scale.inj32 == "shipped" else scale.inj32
    bench = Injection(unet32, base, device, peak, contents)
    protocol = f"{name32}, {scale.steps}/{scale.steps}"

    ref, seconds = bench.reference_rate(scale.reference_pairs)
    rows.append(Row("injection", f"{protocol}: one-pair reference path", ref, "samples/s",
                    bench.limit(base, content_share=1),
                    note="fp32, 2 full passes per injected step, its own content inversion",
                    seconds=seconds))
    eager, seconds, cfg = bench.engine_rate(scale.lever_pairs)
    rows.append(Row("injection", f"{protocol}: batched, eager fp32 (batch {scale.lever_batch})", eager,
                    "samples/s", bench.limit(cfg), ref, "one-pair path", seconds=seconds))
    for levers in lever_rows(scale, device):
        rate, seconds, cfg = bench.engine_rate(scale.lever_pairs, **levers)
        label = ", ".join(f"{k}={v}" for k, v in levers.items())
        rows.append(Row("injection", f"{protocol}: + {label}", rate, "samples/s", bench.limit(cfg),
                        eager, "eager fp32 batched", seconds=seconds))
    rate, seconds, cfg = bench.engine_rate(scale.pairs, **fast)
    rows.append(Row("injection", f"{protocol}: all levers ({scale.pairs} pairs)", rate, "samples/s",
                    bench.limit(cfg), ref, "one-pair path",
                    note=f"{', '.join(f'{k}={v}' for k, v in fast.items())}"
                         + (f"; {rate * RELEASED_S_PER_SAMPLE[32]:.0f}x the paper's 90 s/sample" if paper else ""),
                    seconds=seconds))

    release = apply_protocol(ExperimentConfig(), "release").injection
    release = dataclasses.replace(release, inversion_steps=scale.release_steps, generation_steps=scale.release_steps,
                                  inject_grid=scale.release_grid, boost_grid=scale.release_grid, precision="fp32",
                                  batch_size=scale.lever_batch)
    rows += eager_and_all_levers(Injection(unet32, release, device, peak, contents),
                                 f"{name32}, released {scale.release_steps}/{scale.release_steps} "
                                 f"(grid {scale.release_grid})", scale.release_pairs, fast,
                                 "90 s/sample" if paper else None)
    del unet32
    unet256 = load_model(scale.inj256, device)
    released = "7-10 s/sample" if paper else None
    rows += eager_and_all_levers(Injection(unet256, base, device, peak, contents),
                                 f"{scale.inj256}, {scale.steps}/{scale.steps}", scale.pairs256, fast, released)
    return rows


def eager_and_all_levers(bench: Injection, protocol: str, pairs: int, fast: dict, released: str | None) -> list[Row]:
    """The eager float32 engine (on an eighth of the pairs: it is the slow one) and all levers."""
    eager, seconds, cfg = bench.engine_rate(max(1, pairs // 8))
    rows = [Row("injection", f"{protocol}: batched, eager fp32", eager, "samples/s", bench.limit(cfg),
                seconds=seconds)]
    rate, seconds, cfg = bench.engine_rate(pairs, **fast)
    size = bench.unet.config.sample_size
    note = f"{rate * RELEASED_S_PER_SAMPLE[size]:.0f}x the paper's {released}" if released else "stand-in model"
    rows.append(Row("injection", f"{protocol}: all levers", rate, "samples/s", bench.limit(cfg), eager,
                    "eager fp32 batched", note=note, seconds=seconds))
    return rows


def equality_rows(scale: Scale, device: torch.device) -> list[Row]:
    """On the shipped (trained) model: batched fp32 vs one-pair path, and all levers vs one-pair path."""
    unet = load_model("shipped", device)
    contents, originals = digit_images(3, seed=2), digit_images(scale.equality_pairs, seed=1)
    index, seeds = np.arange(len(originals)) % 3, np.arange(len(originals))
    cfg = InjectionConfig(inversion_steps=scale.steps, generation_steps=scale.steps, t_edit=500, t_boost=200,
                          mode="global", precision="fp32", batch_size=scale.lever_batch)
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
                    "uint8 levels", note=f"max {float(diff.max()):.1f} levels; "
                    f"{', '.join(f'{k}={v}' for k, v in fast.items())}", seconds=time.perf_counter() - start))
    return rows


def ray_rows(scale: Scale, device: torch.device) -> list[Row]:
    """The Ray Data injection job on one actor against the engine alone, same pairs and levers
    (no compile: each actor would compile again)."""
    import ray

    from diffinject.inject.manifest import build_manifest
    from diffinject.ray_inject import run_injection_job

    levers = {k: v for k, v in fastest_levers(device).items() if k != "compile"}
    cfg = InjectionConfig(inversion_steps=scale.steps, generation_steps=scale.steps, t_edit=500, t_boost=200,
                          mode="global", **{"batch_size": scale.lever_batch, **levers})
    unet = load_model(scale.inj32, device)
    preset = get_preset(scale.inj32 if scale.inj32 != "shipped" else "small_32")
    train = digit_images(max(scale.pairs, 16), seed=1)
    topk = np.arange(scale.contents)
    manifest = build_manifest(len(train), topk, conflict_ratio=scale.pairs / len(train), seed=0)
    pairs = manifest.num_rows
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
            checkpoint.write_bytes(unet_checkpoint_bytes(unet.state_dict(), preset, 0, {}))
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
    return [Row("ray", f"Ray Data injection job, 1 actor ({pairs} pairs)", pairs / job, "samples/s",
                reference=pairs / alone, reference_name="engine alone",
                note="includes actor start, checkpoint load and Parquet writes", seconds=job)]


def diffusion_rows(scale: Scale, device: torch.device, peak: float) -> list[Row]:
    rows = []
    gpu = device.type == "cuda"
    fused = dict(channels_last=True, fused_adam=True)
    variants = [("fp32", False, {})]
    if gpu:
        variants += [("bf16", True, {}), ("bf16 + channels_last + fused AdamW", True, fused),
                     ("bf16 + channels_last + fused AdamW + inductor", True, {**fused, "compile": "inductor"})]
    else:  # bf16 autocast is a GPU lever in stage 2
        variants += [("channels_last + fused AdamW", False, fused)]
    for preset, batch in scale.diffusion:
        flops = flops_per_image(preset, device)
        reference = None
        for label, bf16, levers in variants:
            start = time.perf_counter()
            rate = loop_images_per_s(preset, batch, scale.train_steps, device, bf16,
                                     warmup=3 if levers.get("compile") else 2, **levers)
            rows.append(Row("diffusion training", f"{preset}, batch {batch}: {label}", rate, "images/s",
                            peak / flops, reference, "fp32" if reference else "",
                            note=f"{flops / 1e9:.1f} GFLOP/image (fwd + bwd)", seconds=time.perf_counter() - start))
            reference = reference or rate
    return rows


def classifier_rows(scale: Scale, device: torch.device, peak: float) -> list[Row]:
    """Stage 4's loop (Vanilla, ResNet-18): float32 vs bf16 + channels_last (GPU) / channels_last (CPU)."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models import resnet18

    from diffinject.config import ClassifierConfig
    from diffinject.data.parquet import ArraySplit
    from diffinject.train import TrainContext, TrainData, train_method

    size, batch = scale.classifier_size, scale.classifier_batch
    rng = np.random.default_rng(0)
    n = 4 * batch
    split = ArraySplit(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 2, n),
                       rng.integers(0, 2, n), np.array([str(i) for i in range(n)]))
    small = ArraySplit(split.images[:batch], split.labels[:batch], split.biases[:batch], split.ids[:batch])
    data = TrainData(train=split, valid=small, test=small, num_classes=2, num_biases=2)
    net = resnet18(num_classes=2).to(device)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(2, 3, size, size, device=device)).sum().backward()
    flops = counter.get_total_flops() / 2
    variants = [("fp32", {}), ("bf16 + channels_last", dict(bf16=True, channels_last=True))]
    rows, reference, warmup = [], None, 2
    for label, levers in variants:
        cfg = ClassifierConfig(arch="resnet18", num_steps=warmup + scale.classifier_steps, batch_size=batch,
                               eval_every=10**9, log_every=1, **levers)
        stamps = {}

        def log(step, metrics):
            synchronize(device)
            stamps[step] = time.perf_counter()

        start = time.perf_counter()
        train_method("vanilla", cfg, data, TrainContext(device=device, log=log), seed=0)
        rate = scale.classifier_steps * batch / (stamps[warmup + scale.classifier_steps] - stamps[warmup])
        bf16_note = "" if device.type == "cuda" or not levers else "bf16 is a GPU lever: float32 here; "
        rows.append(Row("classifier training", f"ResNet-18 {size}x{size}, batch {batch}: {label}", rate, "images/s",
                        peak / flops, reference, "fp32" if reference else "",
                        note=f"{bf16_note}{flops / 1e9:.2f} GFLOP/image (fwd + bwd)",
                        seconds=time.perf_counter() - start))
        reference = reference or rate
    return rows


def profile_rows(scale: Scale, device: torch.device) -> list[Row]:
    """Where the all-levers engine's time goes: one batch of generation under torch.profiler,
    split into the encoder passes, the decoder passes and the rest (DDIM math, slerp, noise,
    host work); the top operators are printed below the split."""
    from torch.profiler import ProfilerActivity, profile, record_function

    unet = load_model(scale.inj32, device)
    cfg = InjectionConfig(inversion_steps=scale.steps, generation_steps=scale.steps, t_edit=500, t_boost=200,
                          mode="global", **{"precision": "fp32", "batch_size": scale.lever_batch,
                                            **fastest_levers(device)})
    contents = digit_images(scale.contents, seed=2)
    engine = InjectionEngine(unet, cfg, contents, device)
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


def device_peak(device: torch.device, override_tflops: float | None) -> tuple[str, float, str]:
    if override_tflops:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        return name, override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peaks = next((v for k, v in GPU_PEAKS.items() if k in name), None)
        if peaks is None:
            raise SystemExit(f"no data-sheet peak for {name!r}; pass --peak-tflops")
        return name, peaks["bf16"], f"{peaks['bf16'] / 1e12:.0f} TFLOP/s dense bf16 (data sheet)"
    peak = cpu_matmul_peak()
    return f"CPU, {torch.get_num_threads()} threads", peak, f"{peak / 1e9:.1f} GFLOP/s float32 matmul (measured)"


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


SECTIONS = ("injection", "equality", "profile", "ray", "diffusion", "classifier")


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scales = p.add_mutually_exclusive_group()
    scales.add_argument("--smoke", action="store_true", help="the CPU run with tiny presets (CI)")
    scales.add_argument("--cpu", action="store_true", help="the CPU run at the quick run's setting")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--peak-tflops", type=float)
    args = p.parse_args(argv)
    on_cpu = args.smoke or args.cpu
    if not on_cpu and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_suite.py needs a GPU (no CUDA device found); run it with --smoke or --cpu "
                         "on a CPU")
    device = torch.device("cpu" if on_cpu else "cuda")
    scale = SMOKE if args.smoke else CPU if args.cpu else GPU
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name, peak, peak_text = device_peak(device, args.peak_tflops)
    label = "smoke" if args.smoke else "cpu" if args.cpu else "gpu"
    print(f"device: {name}; peak: {peak_text}; torch {torch.__version__}; {label} scale", flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    steps = {"injection": lambda: injection_rows(scale, device, peak),
             "equality": lambda: equality_rows(scale, device),
             "profile": lambda: profile_rows(scale, device),
             "ray": lambda: ray_rows(scale, device),
             "diffusion": lambda: diffusion_rows(scale, device, peak),
             "classifier": lambda: classifier_rows(scale, device, peak)}
    for section in SECTIONS:
        if section in args.only:
            new = steps[section]()
            for row in new:
                print(f"[{time.perf_counter() - started:6.0f} s] " + " | ".join(row.cells()), flush=True)
            rows += new
    print()
    print(f"card: {name}; total {time.perf_counter() - started:.0f} s")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "peak": peak_text, "torch": torch.__version__,
                                         "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    return rows


if __name__ == "__main__":
    main()
