"""StyleGAN2's modulated convolution with weight demodulation (Karras et al., 2020, Sec. 2.2)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     eps: float = 1e-8) -> torch.Tensor:
    """x: N x I x H x W, weight: O x I x k x k, styles: N x I. Each sample's weights are scaled by its
    styles per input channel (w' = s w) and, with `demodulate`, renormalised to unit L2 norm per
    output channel (w'' = w' / sqrt(sum w'^2 + eps)), so unit-variance inputs give unit-variance
    outputs. One grouped convolution for the batch; 'same' padding."""
    n, i, h, w = x.shape
    o, _, k, _ = weight.shape
    wts = weight[None] * styles[:, None, :, None, None]  # N x O x I x k x k
    if demodulate:
        wts = wts * torch.rsqrt(wts.pow(2).sum(dim=(2, 3, 4), keepdim=True) + eps)
    out = F.conv2d(x.reshape(1, n * i, h, w), wts.reshape(n * o, i, k, k), padding=k // 2, groups=n)
    return out.reshape(n, o, h, w)


class ModulatedConv2d(nn.Module):
    """A modulated convolution whose styles come from w through a learned affine map (bias 1, so
    the styles start at 1), with the equalised learning rate of StyleGAN2 (weights ~ N(0, 1)
    scaled by 1 / sqrt(fan_in) at run time)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.affine = nn.Linear(w_dim, in_channels)
        nn.init.normal_(self.affine.weight)
        nn.init.ones_(self.affine.bias)
        self.affine_scale = 1.0 / math.sqrt(w_dim)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = F.linear(w, self.affine.weight * self.affine_scale, self.affine.bias)
        return modulated_conv2d(x, self.weight * self.scale, styles, self.demodulate)
