"""The project's diffusion checkpoint file: EMA U-Net weights plus the preset that builds them.

    {"format": "diffinject-unet/1", "preset": "small_32", "weights": {...}, "step": 1000,
     "config": {...DiffusionConfig...}}

This is what stage 2 produces and stages 3-4 consume. Training state (optimiser, raw
weights) lives in Ray Train checkpoints instead. Released guided-diffusion checkpoints are
read by `guided_diffusion.load_guided_diffusion_checkpoint`.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .models import UNetPreset, build_unet, get_preset

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


def read_checkpoint_file(path: Path) -> object:
    """torch.load(weights_only=True), with one clear error for a missing, unreadable or unsafe file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; expected a checkpoint file (e.g. FOLDER/diffusion.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # plain pickles: the error below says what the file is
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a checkpoint we can read"
        raise CheckpointError(f"checkpoint {path} {_load_failure(exc)}; expected a file written by torch.save "
                              f"(tensors, dicts, lists and numbers only)") from None


def _load_failure(exc: Exception) -> str:
    """What torch.load's error means, without its advice to load untrusted files unsafely."""
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return f"holds a Python object of type {unsafe.group(1)}, which is not loaded (loading it could run code)"
    if "zip archive" in text or isinstance(exc, EOFError):
        return "is truncated or corrupted (incomplete torch.save archive)"
    return f"is unreadable ({type(exc).__name__})"


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
    from .guided_diffusion import guided_diffusion_unet

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
