"""The numerics a stage runs with beyond its config fields: the device, and the levers that act
only there. One rule per lever, used both by the code that runs and by the artifact keys
(cells.py), so that a cache filled on a CPU is never served on a GPU, nor the other way round.

On by default on a GPU, off on a CPU (where everything runs in float32):
    injection.precision=auto     bf16 autocast of the U-Net passes (fp32 on a CPU)
    diffusion / stylegan2 / fastgan .bf16=true   bf16 autocast of the training passes
    TF32                         float32 matmuls and convolutions of every Ray Train job on CUDA
                                 (cluster.train_jobs); the inference actors keep torch's defaults, which
                                 use TF32 for convolutions only
classifier.bf16 and bias.classifier.bf16 are off by default; an explicit injection.precision
(fp32, bf16_autocast, bf16_weights) acts on either device.
"""
from __future__ import annotations

TRAINING_TF32 = True  # cluster.train_jobs lets CUDA training workers use TF32 for float32 matmuls and convolutions


def device_name(on_gpu: bool) -> str:
    return "cuda" if on_gpu else "cpu"


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """injection.precision as it acts: `auto` is bf16_autocast on a GPU and fp32 on a CPU."""
    if precision == "auto":
        return "bf16_autocast" if on_gpu else "fp32"
    return precision


def bf16_autocast_on(flag: bool, on_gpu: bool) -> bool:
    """A stage's bf16 flag as it acts: autocast on a GPU only (a CPU always runs in float32)."""
    return flag and on_gpu


def training_on_gpu(cluster_gpus: bool, num_workers: int, cuda_here: bool) -> bool:
    """Whether a Ray Train job runs on a GPU: run.use_gpu resolved to the cluster's GPUs, and,
    for run.num_workers=0 (the loop in this process), this process sees one (cluster.train_jobs)."""
    return cluster_gpus and (num_workers > 0 or cuda_here)


def training_numerics(bf16: bool, on_gpu: bool) -> dict:
    """The key entry of a training stage."""
    return {"device": device_name(on_gpu), "bf16_autocast": bf16_autocast_on(bf16, on_gpu),
            "tf32": TRAINING_TF32 and on_gpu}


def injection_numerics(precision: str, on_gpu: bool) -> dict:
    """The key entry of an h-space injection (the U-Net passes of stage 3 or t_edit calibration)."""
    return {"device": device_name(on_gpu), "precision": resolve_precision(precision, on_gpu)}


def synthesis_numerics(on_gpu: bool) -> dict:
    """The key entry of a GAN kind's synthesis (A²'s projection, FastGAN sampling): no lever, so
    the device alone (on CUDA, torch's default TF32 convolutions)."""
    return {"device": device_name(on_gpu)}
