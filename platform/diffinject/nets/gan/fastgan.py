"""FastGAN (Liu et al., ICLR 2021), from the paper (Sec. 3, Figs. 3-4) and, where it and the paper
agree, the authors' code (FastGAN-pytorch, models.py); the blocks are in gan.fastgan_blocks.

Every convolution of both networks is spectrally normalised and initialised as FastGAN-pytorch's
weights_init (convolutions N(0, 0.02), batch norms N(1, 0.02) and 0).

Generator: z -> 4 x 4 (transposed convolution, BN, GLU), then one up-block per resolution up to
the preset's: UpBlockComp (two convolutions, each with its own noise injection) at 8, 32, 128 px,
the plain UpBlock (one convolution, no noise) at 16, 64, 256 px; skip-layer excitation from r to
16 r px wherever 16 r fits (the preset's sle_span: 16); tanh RGB images at full and at half
resolution. Widths follow FastGAN's table (WIDTH_MULTIPLIERS x ngf). Its noise maps are inputs
(`random_inputs`, in `noise_shapes` order: two per UpBlockComp), so a seed fixes an image.

Discriminator: a big path (the full-resolution image down to 8 x 8, with skip-layer excitation
from the 8 r px features to the r px ones for r = 8, 16, 32 where 8 r fits: 256 -> 32, 128 -> 16,
64 -> 8 px at 256 px, as FastGAN-pytorch's se_2_16, se_4_32, se_8_64; the quick preset's span is
4, one excitation 32 -> 8) and a small path (the half-resolution image down to 8 x 8, no
excitation), each ending in 5 x 5 real/fake logits; on real images three small decoders
reconstruct, at half resolution, the whole image from the big path's 8 x 8 features, the small
image from the small path's, and one quadrant of the image from the matching quarter of the big
path's 16 x 16 features (the self-supervision of Sec. 3.2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffinject.nets.gan.fastgan_blocks import DownBlockComp, SkipLayerExcitation, prepare_fastgan_net, up_block
from diffinject.nets.gan.presets import FastGANPreset, get_gan_preset, parameter_count  # noqa: F401 (parameter_count: re-exported)

# feature maps per resolution, as multiples of ngf (generator) or ndf (discriminator)
WIDTH_MULTIPLIERS = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5}
DECODED_FROM = 8  # the resolution of the features the decoders start from


def widths(base: int) -> dict[int, int]:
    return {r: int(m * base) for r, m in WIDTH_MULTIPLIERS.items()}


def resolutions(low: int, high: int) -> list[int]:
    """low, 2 low, ..., high."""
    out = [low]
    while out[-1] < high:
        out.append(out[-1] * 2)
    return out


class Generator(nn.Module):
    def __init__(self, preset: FastGANPreset):
        super().__init__()
        self.preset = preset
        width = widths(preset.ngf)
        self.nz = preset.nz
        self.resolutions = resolutions(8, preset.resolution)
        self.init = nn.ConvTranspose2d(preset.nz, 2 * width[4], 4, bias=False)
        self.init_norm = nn.BatchNorm2d(2 * width[4])
        # UpBlockComp at 8, 32, 128 px, UpBlock at 16, 64, 256 px (FastGAN-pytorch models.py)
        self.blocks = nn.ModuleDict({str(r): up_block(r, width[r // 2], width[r]) for r in self.resolutions})
        # skip-layer excitation: low -> 16 low px wherever that fits (256 px: 4->64, 8->128, 16->256)
        span = preset.sle_span
        self.sle = nn.ModuleDict({str(r): SkipLayerExcitation(width[r], width[span * r], preset.sle_activation)
                                  for r in (4, 8, 16) if span * r <= preset.resolution})
        self.sle_span = span
        self.to_big = nn.Conv2d(width[preset.resolution], 3, 3, padding=1)
        self.to_small = nn.Conv2d(width[preset.resolution // 2], 3, 1)
        prepare_fastgan_net(self)

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """One (1, r, r) per noise injection, in forward order: two per UpBlockComp, none per UpBlock."""
        return [(1, r, r) for r in self.resolutions for _ in range(self.blocks[str(r)].noise_maps)]

    def random_inputs(self, n: int, generator: torch.Generator | None, device: torch.device | str = "cpu"
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(z, noise maps) drawn in a fixed order from `generator` (z first, then each noise
        injection's map, in `noise_shapes` order)."""
        z = torch.randn(n, self.nz, generator=generator)
        noise = [torch.randn(n, *shape, generator=generator) for shape in self.noise_shapes()]
        return z.to(device), [m.to(device) for m in noise]

    def forward(self, z: torch.Tensor, noise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(full-resolution image, half-resolution image), both in [-1, 1]; `noise` as `random_inputs` gives it."""
        expected = len(self.noise_shapes())
        if len(noise) != expected:
            raise ValueError(f"the {self.preset.name} FastGAN generator takes {expected} noise maps, got {len(noise)}")
        x = F.glu(self.init_norm(self.init(z[:, :, None, None])), dim=1)
        features, position = {4: x}, 0
        for r in self.resolutions:
            block = self.blocks[str(r)]
            x = block(x, noise[position:position + block.noise_maps])
            position += block.noise_maps
            if r % self.sle_span == 0 and str(r // self.sle_span) in self.sle:
                x = self.sle[str(r // self.sle_span)](features[r // self.sle_span], x)
            features[r] = x
        small = features[self.preset.resolution // 2]
        return torch.tanh(self.to_big(x)), torch.tanh(self.to_small(small))


D_SLE_TARGETS = (8, 16, 32)  # the big path's excited resolutions (FastGAN-pytorch: feat_last, feat_32, feat_16)


class DownPath(nn.Module):
    """An image of `resolution` px -> features at every resolution down to 8 x 8 -> 5 x 5 logits.
    With `sle_span`, skip-layer excitation gates the r px features (before they go on down) by the
    sle_span * r px ones, for r in D_SLE_TARGETS where sle_span * r <= resolution."""

    def __init__(self, resolution: int, width: dict[int, int], sle_span: int | None = None,
                 sle_activation: str = "swish"):
        super().__init__()
        self.resolution = resolution
        self.stem = nn.Sequential(nn.Conv2d(3, width[resolution], 3, padding=1), nn.LeakyReLU(0.2))
        self.downs = nn.ModuleDict({str(r): DownBlockComp(width[2 * r], width[r])
                                    for r in reversed(resolutions(DECODED_FROM, resolution // 2))})
        self.sle_span = sle_span
        self.sle = nn.ModuleDict({str(r): SkipLayerExcitation(width[sle_span * r], width[r], sle_activation)
                                  for r in D_SLE_TARGETS if sle_span and sle_span * r <= resolution})
        self.logits = nn.Sequential(nn.Conv2d(width[DECODED_FROM], width[4], 1, bias=False),
                                    nn.BatchNorm2d(width[4]), nn.LeakyReLU(0.2), nn.Conv2d(width[4], 1, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        x = self.stem(x)
        features = {self.resolution: x}
        for r, block in self.downs.items():
            x = block(x)
            if r in self.sle:
                x = self.sle[r](features[self.sle_span * int(r)], x)
            features[int(r)] = x
        return self.logits(x).flatten(1), features


class Decoder(nn.Module):
    """8 x 8 features -> a `resolution` px image in [-1, 1]: (nearest x2, 3 x 3 conv, BN, GLU) per
    doubling, then a 3 x 3 conv and tanh."""

    def __init__(self, in_channels: int, resolution: int, width: dict[int, int]):
        super().__init__()
        layers, channels = [], in_channels
        for r in resolutions(2 * DECODED_FROM, resolution):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, 2 * width[r], 3, padding=1,
                                                                              bias=False),
                       nn.BatchNorm2d(2 * width[r]), nn.GLU(dim=1)]
            channels = width[r]
        self.body = nn.Sequential(*layers, nn.Conv2d(channels, 3, 3, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


QUADRANTS = 4  # part 0: top left, 1: top right, 2: bottom left, 3: bottom right


def quadrant(x: torch.Tensor, part: int) -> torch.Tensor:
    """The `part` quarter of N x C x H x W maps (QUADRANTS)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    row, col = divmod(part, 2)
    return x[..., row * h:(row + 1) * h, col * w:(col + 1) * w]


class Discriminator(nn.Module):
    def __init__(self, preset: FastGANPreset):
        super().__init__()
        self.preset = preset
        width = widths(preset.ndf)
        self.small_size = preset.resolution // 2
        self.big = DownPath(preset.resolution, width, preset.d_sle_span, preset.sle_activation)
        self.small = DownPath(self.small_size, width)  # FastGAN-pytorch's small path has no excitation
        self.decode_big = Decoder(width[DECODED_FROM], self.small_size, width)
        self.decode_small = Decoder(width[DECODED_FROM], self.small_size, width)
        self.decode_part = Decoder(width[2 * DECODED_FROM], self.small_size, width)
        prepare_fastgan_net(self)

    def forward(self, images: torch.Tensor | tuple[torch.Tensor, torch.Tensor], label: str, part: int | None = None):
        """`images`: a full-resolution batch (its small image is its half-size resize) or the
        generator's (big, small) pair. Returns N x 50 logits (both paths' 5 x 5); for label
        "real" also the decoders' (whole image, small image, quadrant `part`) reconstructions."""
        if label not in ("real", "fake"):
            raise ValueError(f"label must be 'real' or 'fake', got {label!r}")
        if isinstance(images, torch.Tensor):
            images = (images, F.interpolate(images, size=self.small_size, mode="bilinear", align_corners=False,
                                            antialias=True))
        big_logits, big_features = self.big(images[0])
        small_logits, small_features = self.small(images[1])
        logits = torch.cat([big_logits, small_logits], dim=1)
        if label == "fake":
            return logits
        if part is None or not 0 <= part < QUADRANTS:
            raise ValueError(f"a real batch needs part in 0..{QUADRANTS - 1}, got {part!r}")
        decoded = (self.decode_big(big_features[DECODED_FROM]), self.decode_small(small_features[DECODED_FROM]),
                   self.decode_part(quadrant(big_features[2 * DECODED_FROM], part)))
        return logits, decoded


def build_generator(name: str) -> Generator:
    return Generator(get_gan_preset("fastgan", name))


def build_discriminator(name: str) -> Discriminator:
    return Discriminator(get_gan_preset("fastgan", name))

