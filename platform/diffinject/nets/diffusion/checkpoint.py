"""The project's diffusion checkpoint file: EMA U-Net weights plus the preset that builds them.

    {"format": "diffinject-unet/1", "preset": "small_32", "weights": {...}, "step": 1000,
     "config": {...DiffusionConfig...}}

This is what stage 2 produces and stages 3-4 consume. Training state (optimiser, raw
weights) lives in Ray Train checkpoints instead. Released guided-diffusion checkpoints are
read by `guided_diffusion.load_guided_diffusion_checkpoint`.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from diffinject.core.errors import CheckpointError
from diffinject.nets.diffusion.checkpoint_file import read_checkpoint_file
from diffinject.nets.diffusion.guided_diffusion import guided_diffusion_unet
from diffinject.nets.diffusion.models import UNetPreset, build_unet, get_preset

FORMAT = "diffinject-unet/1"


def unet_checkpoint_bytes(weights: dict[str, torch.Tensor], preset: UNetPreset, step: int, config: dict,
                          dtype: str = "float32") -> bytes:
    """The checkpoint file's bytes; `dtype` float16 stores floating-point weights in half precision
    (loading casts them back to the model's float32)."""
    cast = getattr(torch, dtype)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "preset": preset.name,
                "weights": {k: (v.detach().cpu().to(cast) if v.is_floating_point() else v.detach().cpu())
                            for k, v in weights.items()},
                "step": int(step), "config": config}, buffer)
    return buffer.getvalue()


def _read_payload(path: Path) -> dict:
    return _checked_payload(read_checkpoint_file(path), path)


def _checked_payload(payload: object, path: Path) -> dict:
    """`payload` is a diffinject checkpoint with a preset name and a weights dict."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a diffinject diffusion checkpoint (no format {FORMAT!r}); "
                              f"a released guided-diffusion / P2 file is loaded with "
                              f"--format guided-diffusion --preset NAME")
    missing = [key for key, kind in (("preset", str), ("weights", dict)) if not isinstance(payload.get(key), kind)]
    if missing:
        raise CheckpointError(f"{path} is an incomplete diffinject checkpoint: no {' and no '.join(missing)} entry "
                              f"(stage 2 writes format, preset, weights, step and config)")
    return payload


def checkpoint_meta(path: Path) -> dict:
    """A diffinject checkpoint's metadata (preset, step, config) without building its U-Net."""
    payload = _read_payload(path)
    get_preset(payload["preset"])
    return {k: v for k, v in payload.items() if k != "weights"}


def load_unet_checkpoint(path: Path, expect_preset: str | None = None) -> tuple[nn.Module, dict]:
    """The U-Net of a diffinject checkpoint (eval mode) and its metadata (preset, step, config)."""
    return _unet_from_payload(_read_payload(path), path, expect_preset)


def _unet_from_payload(payload: dict, path: Path, expect_preset: str | None) -> tuple[nn.Module, dict]:
    preset = get_preset(payload["preset"])
    if expect_preset and expect_preset != preset.name:
        raise CheckpointError(f"{path} holds a {preset.name} model, but {expect_preset} was asked for")
    unet = build_unet(preset)
    load_strict(unet, payload["weights"], f"{path} ({preset.name})")
    meta = {k: v for k, v in payload.items() if k != "weights"}
    return unet.eval(), meta


def load_given_checkpoint(path: Path, preset: str, dataset: str) -> tuple[nn.Module, str]:
    """A diffusion checkpoint given for `dataset` (--checkpoint DATASET=PATH) as the U-Net of
    `preset`, loaded strictly (every key and shape), and its format: the project's own
    ("diffinject", whose preset must be `preset`) or a released guided-diffusion / P2 state dict."""
    payload = read_checkpoint_file(path)
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        return guided_diffusion_unet(payload, preset, path), "guided-diffusion"
    payload = _checked_payload(payload, path)
    if payload["preset"] != preset:
        raise CheckpointError(f"{path} holds a {payload['preset']} model, but {dataset} uses diffusion.preset={preset}")
    return _unet_from_payload(payload, path, preset)[0], "diffinject"


def check_given_checkpoints(checkpoints: dict[str, str], configs) -> None:
    """Every --checkpoint DATASET=PATH loads strictly into the U-Net its dataset's configs use,
    checked before any stage runs (a bad file would otherwise stop the run after stage 1)."""
    for dataset, preset in sorted({(cfg.data.dataset, cfg.diffusion.preset) for cfg in configs
                                   if cfg.data.dataset in checkpoints}):
        load_given_checkpoint(Path(checkpoints[dataset]), preset, dataset)


def load_strict(unet: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True), with key and shape mismatches reported as one clear error."""
    expected = unet.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            key, found, want = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {key}: found {found}, expected {want})")
        raise CheckpointError(f"{what}: the weights are for another architecture: {'; '.join(parts)}")
    unet.load_state_dict(weights, strict=True)
