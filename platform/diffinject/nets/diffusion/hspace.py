"""h-space access: the U-Net's middle-block output, read or replaced for one forward pass.

This is the only way the rest of the code touches the U-Net's insides. Skip connections
are never modified: the hook replaces only what `unet.mid_block` returns, before the first
decoder block concatenates its skip. `encode` / `decode` split one pass at the same point,
so the injection engine decodes twice (plain and injected h) from one encoder pass.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Encoded:
    """The encoder half of a U-Net pass: h (the middle block's output), the skip tensors
    and the time embedding the decoder needs."""

    h: torch.Tensor
    skips: tuple[torch.Tensor, ...]
    emb: torch.Tensor


def _check_plain(unet: nn.Module) -> None:
    cfg = unet.config
    if (getattr(unet, "class_embedding", None) is not None or cfg.time_embedding_type != "positional"
            or cfg.center_input_sample or any(hasattr(b, "skip_conv") for b in unet.down_blocks)):
        raise ValueError("encode/decode support UNet2DModel without class embedding, skip-sample blocks, "
                         "Fourier time embedding or input centring (every project preset)")


def encode(unet: nn.Module, x: torch.Tensor, t: torch.Tensor) -> Encoded:
    """UNet2DModel.forward up to and including the middle block (diffusers 0.42's order).

    With `decode`, the decoder can run more than once on one encoding, e.g. with h and with
    an injected h, without recomputing the encoder: `decode(unet, encode(unet, x, t))` is
    bit-identical to `unet(x, t).sample` (tested).
    """
    _check_plain(unet)
    t = t.expand(x.shape[0]) if t.dim() == 1 and t.numel() == 1 else t
    t = t * torch.ones(x.shape[0], dtype=t.dtype, device=t.device) if t.dim() == 0 else t
    emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
    sample = unet.conv_in(x)
    skips: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        sample, res = block(hidden_states=sample, temb=emb)
        skips += res
    return Encoded(h=unet.mid_block(sample, emb), skips=skips, emb=emb)


def decode(unet: nn.Module, encoded: Encoded, h: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder half: from `h` (default: the encoded h) and the encoding's skips to the output."""
    sample = encoded.h if h is None else h
    if sample.shape != encoded.h.shape:
        raise ValueError(f"h has shape {tuple(sample.shape)}; the encoder produced {tuple(encoded.h.shape)}")
    skips = encoded.skips
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        sample = block(sample, res, encoded.emb)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
