"""FastGAN's building blocks (Liu et al., ICLR 2021), arranged as the authors' code
(FastGAN-pytorch, models.py) arranges them where it and the paper agree; written for this
platform, not copied.

- Every convolution and transposed convolution of G and D is spectrally normalised
  (FastGAN-pytorch wraps each in spectral_norm; here the parametrization API,
  torch.nn.utils.parametrizations.spectral_norm): `spectral_normalize`.
- Initialisation as FastGAN-pytorch's weights_init: every convolution's weight N(0, 0.02),
  every batch norm's weight N(1, 0.02) and bias 0 (`init_weights`).
- Generator up-blocks: `UpBlockComp` (nearest x2, then twice: 3 x 3 conv to 2 C, noise
  injection, BN, GLU) at 8, 32, 128 (512) px, alternating with the plain `UpBlock` (nearest x2,
  3 x 3 conv to 2 C, BN, GLU; no noise) at 16, 64, 256 (1024) px.
- Skip-layer excitation (Sec. 3.1): a low-resolution map gates the channels of a
  high-resolution one, y = x_high * sigmoid(conv1x1(act(conv4x4(pool4(x_low))))), `act` a named
  choice (SLE_ACTIVATIONS).
- `DownBlockComp`: the discriminator's down-block (4 x 4 stride-2 conv, BN, leaky ReLU, 3 x 3
  conv, BN, leaky ReLU) averaged with a shortcut (2 x 2 average pool, 1 x 1 conv, BN, leaky ReLU).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

INIT_STD = 0.02  # FastGAN-pytorch weights_init: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales
CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d)


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """FastGAN-pytorch's weights_init on one module (use with `net.apply`): a convolution's weight
    (its parametrization's original, if spectrally normalised already) N(0, 0.02); a batch norm's
    weight N(1, 0.02) and bias 0. Biases of convolutions and everything else are left alone."""
    if isinstance(module, CONVOLUTIONS):
        weight = (module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight")
                  else module.weight)
        weight.normal_(0.0, INIT_STD)
    elif isinstance(module, nn.BatchNorm2d):
        module.weight.normal_(1.0, INIT_STD)
        module.bias.zero_()


def spectral_normalize(net: nn.Module) -> nn.Module:
    """Every convolution and transposed convolution of `net` spectrally normalised (in place)."""
    for module in list(net.modules()):
        if isinstance(module, CONVOLUTIONS) and not parametrize.is_parametrized(module, "weight"):
            spectral_norm(module)
    return net


def prepare_fastgan_net(net: nn.Module) -> nn.Module:
    """What G's and D's constructors end with: the initialisation, then the spectral norm (whose
    power iteration then starts from the initialised weights)."""
    net.apply(init_weights)
    return spectral_normalize(net)


def _leaky_relu_01(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


SLE_ACTIVATIONS = {
    # FastGAN-pytorch models.py: SEBlock's Swish, x * sigmoid(x), between its two convolutions
    "swish": F.silu,
    # the paper's text (Liu et al. 2021, Sec. 3.1 / Fig. 4): LeakyReLU with slope 0.1
    "leaky_relu": _leaky_relu_01,
}


class SkipLayerExcitation(nn.Module):
    """y = x_high * gate(x_low), gate = sigmoid(conv1x1(act(conv4x4(adaptive_avg_pool4(x_low)))))
    per channel of x_high; `activation` names act (SLE_ACTIVATIONS)."""

    def __init__(self, low_channels: int, high_channels: int, activation: str = "swish"):
        super().__init__()
        if activation not in SLE_ACTIVATIONS:
            raise ValueError(f"unknown skip-layer excitation activation {activation!r}; expected one of "
                             f"{', '.join(SLE_ACTIVATIONS)}")
        self.activation = activation
        self.squeeze = nn.Conv2d(low_channels, high_channels, kernel_size=4, bias=False)
        self.excite = nn.Conv2d(high_channels, high_channels, kernel_size=1, bias=False)

    def gate(self, x_low: torch.Tensor) -> torch.Tensor:
        """N x C_high x 1 x 1 channel weights in (0, 1)."""
        pooled = F.adaptive_avg_pool2d(x_low, 4)
        return torch.sigmoid(self.excite(SLE_ACTIVATIONS[self.activation](self.squeeze(pooled))))

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
        return x_high * self.gate(x_low)


class NoiseInjection(nn.Module):
    """x + w * noise, one learned scalar w (starting at 0) and one noise map per image."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise.to(x.dtype)


class UpBlock(nn.Module):
    """Double the resolution: nearest x2, 3 x 3 conv to 2 C, BN, GLU (no noise)."""

    noise_maps = 0

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(2 * out_channels)

    def forward(self, x: torch.Tensor, noise: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return F.glu(self.norm(self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))), dim=1)


class UpBlockComp(nn.Module):
    """Double the resolution: nearest x2, then twice (3 x 3 conv to 2 C, noise injection, BN,
    GLU); each injection adds its own noise map (`noise`: two N x 1 x H x W maps)."""

    noise_maps = 2

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, 2 * out_channels, 3, padding=1, bias=False),
                                    nn.Conv2d(out_channels, 2 * out_channels, 3, padding=1, bias=False)])
        self.noises = nn.ModuleList([NoiseInjection(), NoiseInjection()])
        self.norms = nn.ModuleList([nn.BatchNorm2d(2 * out_channels), nn.BatchNorm2d(2 * out_channels)])

    def forward(self, x: torch.Tensor, noise: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(noise) != self.noise_maps:
            raise ValueError(f"UpBlockComp needs {self.noise_maps} noise maps, got {len(noise)}")
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        for conv, inject, norm, maps in zip(self.convs, self.noises, self.norms, noise):
            x = F.glu(norm(inject(conv(x), maps)), dim=1)
        return x


def is_comp_resolution(resolution: int) -> bool:
    """Whether FastGAN's generator builds `resolution` with an UpBlockComp (8, 32, 128, 512 px)
    rather than a plain UpBlock (16, 64, 256, 1024 px)."""
    return round(math.log2(resolution)) % 2 == 1


def up_block(resolution: int, in_channels: int, out_channels: int) -> UpBlock | UpBlockComp:
    return (UpBlockComp if is_comp_resolution(resolution) else UpBlock)(in_channels, out_channels)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))


class DownBlockComp(nn.Module):
    """Halve the resolution: (4 x 4 stride-2 conv, BN, lrelu, 3 x 3 conv, BN, lrelu) averaged with a
    shortcut (2 x 2 average pool, 1 x 1 conv, BN, lrelu)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.main = nn.Sequential(_down(in_channels, out_channels),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.shortcut(x)) / 2
