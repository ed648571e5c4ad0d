"""The project's GAN checkpoint file: a generator family's EMA networks plus the preset that
builds them.

    {"format": "diffinject-gan/1", "family": "stylegan2" | "fastgan", "preset": "paper_32",
     "nets": {"generator": {...}} (FastGAN: {"class_0": {...}, ...}), "step": 5000,
     "config": {...}, "extra": {...}}

A² writes two (the source generator, and the one adapted to the top-K set), AmpliBias one with a
generator per class. Training state (optimisers, raw weights) lives in Ray Train checkpoints.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from diffinject.core.errors import CheckpointError
from diffinject.nets.diffusion.checkpoint import load_strict
from diffinject.nets.diffusion.checkpoint_file import read_checkpoint_file
from diffinject.nets.gan.presets import get_gan_preset

FORMAT = "diffinject-gan/1"


def gan_checkpoint_bytes(family: str, preset: str, nets: dict[str, dict[str, torch.Tensor]], step: int,
                         config: dict, extra: dict | None = None, dtype: str = "float32") -> bytes:
    """The file's bytes; `dtype` float16 stores the floating-point tensors at half size (loading
    casts them back to the module's float32)."""
    get_gan_preset(family, preset)
    cast = {"float32": torch.float32, "float16": torch.float16}[dtype]

    def stored(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().cpu()
        return v.to(cast) if v.is_floating_point() else v

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "family": family, "preset": preset,
                "nets": {name: {k: stored(v) for k, v in weights.items()} for name, weights in nets.items()},
                "step": int(step), "config": config, "extra": extra or {}}, buffer)
    return buffer.getvalue()


def read_gan_checkpoint(path: Path, family: str) -> dict:
    """The checkpoint's payload, checked to be a `family` GAN checkpoint of a known preset."""
    payload = read_checkpoint_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a diffinject GAN checkpoint (no format {FORMAT!r})")
    if payload.get("family") != family:
        raise CheckpointError(f"{path} holds {payload.get('family')!r} generators; expected {family}")
    if not isinstance(payload.get("nets"), dict) or not payload["nets"]:
        raise CheckpointError(f"{path} is an incomplete GAN checkpoint: no networks")
    get_gan_preset(family, payload["preset"])
    return payload


def load_net(module: nn.Module, payload: dict, name: str, path: Path) -> nn.Module:
    """`module` (built from the payload's preset) with the weights of network `name`, strictly, eval mode."""
    if name not in payload["nets"]:
        raise CheckpointError(f"{path} has no network {name!r} (it has {', '.join(payload['nets'])})")
    load_strict(module, payload["nets"][name], f"{path} ({payload['family']} {payload['preset']}, {name})")
    return module.eval()
