"""StyleGAN2's generator and residual discriminator (Karras et al., 2020, config F), written from
the paper: A²'s source generator and the one adapted to the top-K set.

Generator: z -> w (MappingNetwork) -> synthesis from a learned constant 4 x 4 input. At 4 px one
3 x 3 modulated convolution (the constant stands in for the first), at every further resolution
two, the first after a bilinear x2 upsampling (this replaces the paper's FIR-filtered transposed
convolution). Each convolution adds its own per-pixel noise, scaled by a learned strength that
starts at zero, then a bias and a leaky ReLU (0.2) times sqrt(2). Skip architecture: each
resolution's 1 x 1 toRGB (modulated, not demodulated) is added to the upsampled RGB image of the
resolution before. Layer l of the synthesis reads w_l, so there are `num_ws` = 2 log2(R) - 2.

Discriminator: fromRGB (1 x 1), then per resolution down to 8 px a residual block (3 x 3 conv,
3 x 3 conv after a 2 x 2 average-pool downsampling (the paper's FIR filter replaced), a 1 x 1
skip of the pooled input, the sum divided by sqrt(2)); at 4 px the minibatch standard deviation
(one extra feature map), a 3 x 3 conv, a fully connected layer and the logit. Above 32 px it
also has Ojha et al.'s (2021) patch-level head: a 1 x 1 conv on the 16 px feature map, one logit
per patch. Equalised learning rate everywhere.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffinject.nets.gan.mapping import EqualLinear, MappingNetwork
from diffinject.nets.gan.modulated import ModulatedConv2d
from diffinject.nets.gan.presets import StyleGAN2Preset, get_gan_preset, parameter_count  # noqa: F401 (parameter_count: re-exported)

NOISE_MODES = ("random", "const", "none")
PATCH_RESOLUTION = 16   # the discriminator feature map the patch-level head reads (resolutions > 32)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class EqualConv2d(nn.Module):
    """A convolution with weights stored N(0, 1) and scaled by 1 / sqrt(fan_in) at run time; 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class StyledConv(nn.Module):
    """(upsample) -> 3 x 3 modulated conv -> + strength * noise -> + bias -> leaky ReLU * sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, upsample: bool):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))
        self.upsample = upsample
        self.resolution = resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self.upsample:
            x = _upsample(x)
        x = self.conv(x, w)
        if noise is not None:
            x = x + noise.to(x.dtype) * self.noise_strength
        return _lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class Generator(nn.Module):
    def __init__(self, preset: StyleGAN2Preset):
        super().__init__()
        self.preset = preset
        self.resolution, self.z_dim, self.w_dim = preset.resolution, preset.z_dim, preset.w_dim
        self.mapping = MappingNetwork(preset.z_dim, preset.w_dim, preset.mapping_layers)
        (r0, c0), rest = preset.channels[0], preset.channels[1:]
        self.const = nn.Parameter(torch.randn(1, c0, r0, r0))
        self.convs = nn.ModuleList([StyledConv(c0, c0, preset.w_dim, r0, upsample=False)])
        self.to_rgbs = nn.ModuleList([ToRGB(c0, preset.w_dim)])
        previous = c0
        for resolution, channels in rest:
            self.convs.append(StyledConv(previous, channels, preset.w_dim, resolution, upsample=True))
            self.convs.append(StyledConv(channels, channels, preset.w_dim, resolution, upsample=False))
            self.to_rgbs.append(ToRGB(channels, preset.w_dim))
            previous = channels
        self.num_ws = len(self.convs) + 1  # the last toRGB reads one w past the last convolution

    def make_noise(self, n: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh N(0, 1) noise, one N x 1 x H x W map per convolution (on the generator's device)."""
        device = self.const.device
        return [torch.randn(n, 1, c.resolution, c.resolution, generator=generator).to(device) for c in self.convs]

    def _noise(self, n: int, noise_mode: str, generator: torch.Generator | None) -> list[torch.Tensor | None]:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; expected one of {', '.join(NOISE_MODES)}")
        if noise_mode == "random":
            return self.make_noise(n, generator)
        if noise_mode == "const":
            return [c.noise_const for c in self.convs]
        return [None] * len(self.convs)

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None, noise_mode: str = "random",
                  generator: torch.Generator | None = None, return_features: bool = False):
        """ws: N x num_ws x w_dim -> images N x 3 x R x R (about [-1, 1]); with `return_features`
        also the output of every convolution (the 4 px one first, then two per resolution), the
        feature list few-shot-gan-adaptation's model.py returns for the CDC loss. `noise` (one map
        per convolution) overrides `noise_mode`."""
        if ws.dim() != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must be N x {self.num_ws} x {self.w_dim}, got {tuple(ws.shape)}")
        n = ws.shape[0]
        noise = list(noise) if noise is not None else self._noise(n, noise_mode, generator)
        x = self.convs[0](self.const.expand(n, -1, -1, -1), ws[:, 0], noise[0])
        rgb = self.to_rgbs[0](x, ws[:, 1])
        features = [x]
        for block, to_rgb in enumerate(self.to_rgbs[1:]):
            i = 1 + 2 * block
            x = self.convs[i](x, ws[:, i], noise[i])
            features.append(x)
            x = self.convs[i + 1](x, ws[:, i + 1], noise[i + 1])
            features.append(x)
            rgb = _upsample(rgb) + to_rgb(x, ws[:, i + 2])
        return (rgb, features) if return_features else rgb

    def ws(self, z: torch.Tensor, truncation: float = 1.0, mixing_prob: float = 0.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
        """N x num_ws x w_dim: w = mapping(z) at every layer; with probability `mixing_prob` a
        sample switches, from a random layer on, to the w of a second z (style mixing)."""
        w = self.mapping(z, truncation)
        ws = w[:, None].expand(-1, self.num_ws, -1)
        if mixing_prob > 0:
            n = z.shape[0]
            z2 = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)
            w2 = self.mapping(z2, truncation)
            cutoff = torch.randint(1, self.num_ws, (n,), generator=generator)
            mixed = torch.rand(n, generator=generator) < mixing_prob
            cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, self.num_ws)).to(z.device)
            later = torch.arange(self.num_ws, device=z.device)[None, :] >= cutoff[:, None]
            ws = torch.where(later[:, :, None], w2[:, None], ws)
        return ws

    def forward(self, z: torch.Tensor, truncation: float = 1.0, mixing_prob: float = 0.0,
                generator: torch.Generator | None = None, noise_mode: str = "random",
                return_features: bool = False, return_ws: bool = False):
        """Images from z (N x z_dim); with `return_features` (images, features); with `return_ws`
        the ws as a last element (the path-length penalty differentiates through them)."""
        ws = self.ws(z, truncation, mixing_prob, generator)
        out = self.synthesis(ws, noise_mode=noise_mode, generator=generator, return_features=return_features)
        out = out if isinstance(out, tuple) else (out,)
        out = out + (ws,) if return_ws else out
        return out if len(out) > 1 else out[0]


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """x with one more feature map: the standard deviation of each feature over a group of
    samples (samples i, i + N/G, ... share a group), averaged over features and pixels. G is the
    largest divisor of N up to `group` (an epoch's last batch may be short)."""
    n, c, h, w = x.shape
    g = next(d for d in range(min(group, n), 0, -1) if n % d == 0)
    y = x.reshape(g, -1, c, h, w).float()
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # N/G
    y = y.to(x.dtype).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = _lrelu(self.conv0(x))
        x = _lrelu(self.conv1(F.avg_pool2d(x, 2)))
        return (x + skip) / math.sqrt(2.0)


class Discriminator(nn.Module):
    def __init__(self, preset: StyleGAN2Preset):
        super().__init__()
        self.preset = preset
        widths = dict(preset.channels)
        self.resolution = preset.resolution
        self.from_rgb = EqualConv2d(3, widths[preset.resolution], 1)
        self.blocks = nn.ModuleList()
        self.block_resolutions = []  # the resolution each block outputs
        r = preset.resolution
        while r > 4:
            self.blocks.append(DiscriminatorBlock(widths[r], widths[r // 2]))
            r //= 2
            self.block_resolutions.append(r)
        c4 = widths[4]
        self.mbstd_group = preset.mbstd_group
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4)
        self.out = EqualLinear(c4, 1)
        self.patch_head = EqualConv2d(widths[PATCH_RESOLUTION], 1, 1) if preset.resolution > 32 else None

    def forward(self, x: torch.Tensor, patch: bool = False):
        """N logits; with `patch` (resolutions > 32 only) also N x 1 x 16 x 16 patch logits."""
        if patch and self.patch_head is None:
            raise ValueError(f"a {self.resolution} px discriminator has no patch-level head (only above 32 px)")
        h = _lrelu(self.from_rgb(x))
        patches = None
        for block, r in zip(self.blocks, self.block_resolutions):
            h = block(h)
            if patch and r == PATCH_RESOLUTION:
                patches = self.patch_head(h)
        h = _lrelu(self.conv(minibatch_stddev(h, self.mbstd_group)))
        logits = self.out(_lrelu(self.fc(h.flatten(1)))).squeeze(1)
        return (logits, patches) if patch else logits


def build_generator(name: str) -> Generator:
    return Generator(get_gan_preset("stylegan2", name))


def build_discriminator(name: str) -> Discriminator:
    return Discriminator(get_gan_preset("stylegan2", name))

