"""h-space access: the U-Net's middle-block output, read or replaced for one forward pass.

This is the only way the rest of the code touches the U-Net's insides. Skip connections
are never modified: the hook replaces only what `unet.mid_block` returns, before the first
decoder block concatenates its skip.
"""
from __future__ import annotations

import torch
from torch import nn


class HSpace:
    """Context manager over a UNet2DModel's middle block.

        with HSpace(unet) as hs:
            eps = unet(x, t).sample          # hs.captured holds h
            hs.replace_with(h_new)
            eps_new = unet(x, t).sample      # decoded from h_new, same skips

    A replacement applies to the next forward pass only, and must have h's shape.
    """

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self.captured: torch.Tensor | None = None
        self._replacement: torch.Tensor | None = None
        self._handle = None

    def replace_with(self, h: torch.Tensor) -> None:
        self._replacement = h

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor):
        self.captured = output
        if self._replacement is None:
            return None
        replacement, self._replacement = self._replacement, None
        if replacement.shape != output.shape:
            raise ValueError(f"h-space replacement has shape {tuple(replacement.shape)}; "
                             f"the middle block produced {tuple(output.shape)}")
        return replacement.to(dtype=output.dtype)

    def __enter__(self) -> "HSpace":
        self._handle = self.unet.mid_block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None
        self._replacement = None
