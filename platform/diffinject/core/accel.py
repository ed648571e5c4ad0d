"""Speed levers shared by injection, diffusion training and classifier training.

Each lever is a switch whose off position is the eager float32 reference path; the switches
live in the stage configs (InjectionConfig.precision / compile / channels_last / attention /
noise / batch_size, DiffusionConfig.channels_last / compile / fused_adam, ClassifierConfig.bf16
/ channels_last) and `bench/gpu_suite.py` measures each beside that reference. Levers that
only exist on a GPU (CUDA graphs, fused AdamW) are refused on the CPU with a clear error
instead of silently doing nothing.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from diffinject.core.errors import ConfigError
from diffinject.core.vocabulary import ATTENTION, COMPILE_MODES


def check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {', '.join(allowed)}; got {value!r}")


def check_compile(field: str, mode: str, device: torch.device) -> None:
    check_choice(field, mode, COMPILE_MODES)
    if mode == "cudagraphs" and device.type != "cuda":
        raise ConfigError(f"{field}=cudagraphs captures CUDA graphs and needs a GPU; this run is on {device.type} "
                          f"(use inductor or none)")


def compiled(fn: Callable, mode: str) -> Callable:
    """fn under torch.compile with static shapes: `inductor` (default mode) or `cudagraphs`
    (inductor's reduce-overhead mode, which replays CUDA graphs); `none` returns fn itself.
    Static shapes mean one compilation per input shape, so callers keep batches at one size."""
    if mode == "none":
        return fn
    return torch.compile(fn, dynamic=False, mode="reduce-overhead" if mode == "cudagraphs" else None)


def cudagraph_step(mode: str) -> None:
    """Before a call into a CUDA-graph-compiled function: tells torch that the outputs of earlier
    replays are no longer read (the caller has cloned what it keeps)."""
    if mode == "cudagraphs":
        torch.compiler.cudagraph_mark_step_begin()


def bf16_autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on `device` (CUDA or CPU) when enabled, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def in_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """x in NHWC memory when channels_last, else untouched. Untouched, not made NCHW: tensors
    made from NHWC images already have NHWC strides, and forcing NCHW would change the CPU conv
    kernels' summation order, and so every result of the reference path, in the last bits."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def set_attention(unet: nn.Module, attention: str) -> None:
    """diffusers' attention processor: `sdpa` (torch's scaled_dot_product_attention, diffusers'
    default) or `classic` (the explicit softmax(QK^T)V of AttnProcessor)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    check_choice("attention", attention, ATTENTION)
    for module in unet.modules():  # UNet2DModel has no set_attn_processor of its own
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


def pairs_that_fit(free_bytes: int, bytes_per_pair: float, fraction: float, multiple: int = 8,
                   cap: int = 4096) -> int:
    """Pairs per U-Net pass for `fraction` of `free_bytes`, given the measured memory of one
    pair: a multiple of `multiple` (tensor-core friendly), at least `multiple`, at most `cap`."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"injection.memory_fraction must be in (0, 1], got {fraction}")
    if bytes_per_pair <= 0:
        raise ValueError(f"bytes_per_pair must be positive, got {bytes_per_pair}")
    fit = int(free_bytes * fraction // bytes_per_pair) // multiple * multiple
    return max(multiple, min(cap, fit))
