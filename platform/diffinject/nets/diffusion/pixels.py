"""uint8 images <-> the diffusion models' [-1, 1] tensors (stage 2 training, sampling, stage 3)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_model_pixels(images: np.ndarray, size: int, device: torch.device | str,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 N x H x W x 3 -> N x 3 x size x size in [-1, 1] (bilinear, antialiased resize)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.to(dtype)


def to_uint8(x: torch.Tensor, height: int | None = None, width: int | None = None) -> np.ndarray:
    """N x 3 x S x S in [-1, 1] -> uint8 N x height x width x 3 (default: no resize)."""
    x = x.float().clamp(-1, 1)
    height, width = height or x.shape[-2], width or x.shape[-1]
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
