"""Network presets of the two GAN families, by name: the papers' configurations and the small
ones the CPU quick run trains (what they keep is said beside each)."""
from __future__ import annotations

from dataclasses import dataclass

from diffinject.core.errors import ConfigError


@dataclass(frozen=True)
class StyleGAN2Preset:
    name: str
    resolution: int
    z_dim: int
    w_dim: int
    mapping_layers: int
    channels: tuple[tuple[int, int], ...]  # (resolution, feature maps) of each synthesis block, 4 px first
    mbstd_group: int = 4                   # the discriminator's minibatch-stddev group size

    def width(self, resolution: int) -> int:
        return dict(self.channels)[resolution]


@dataclass(frozen=True)
class FastGANPreset:
    name: str
    resolution: int
    nz: int
    ngf: int
    ndf: int
    sle_span: int = 16  # generator: skip-layer excitation from r to sle_span * r px (FastGAN: 16)
    # discriminator's big path: excitation from 8 r to r px, for r = 8, 16, 32 where 8 r fits
    # (FastGAN-pytorch models.py, se_2_16 / se_4_32 / se_8_64: 256 -> 32, 128 -> 16, 64 -> 8 px)
    d_sle_span: int = 8
    # the excitation's activation between its two convolutions (gan.fastgan_blocks.SLE_ACTIVATIONS):
    # "swish" (FastGAN-pytorch models.py, SEBlock) | "leaky_relu" (slope 0.1, the paper's text, Sec. 3.1)
    sle_activation: str = "swish"


def _ladder(resolution: int, widths: dict[int, int]) -> tuple[tuple[int, int], ...]:
    out, r = [], 4
    while r <= resolution:
        out.append((r, widths[r]))
        r *= 2
    return tuple(out)


# StyleGAN2 config-f (Karras et al. 2020, Table 1 / rosinality stylegan2-pytorch channel_multiplier 2):
# 512 feature maps up to 64 px, 256 at 128, 128 at 256; mapping 8 x 512; z and w 512.
_CONFIG_F = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
PRESETS: dict[str, dict] = {
    "stylegan2": {
        "paper_32": StyleGAN2Preset("paper_32", 32, 512, 512, 8, _ladder(32, _CONFIG_F)),
        "paper_256": StyleGAN2Preset("paper_256", 256, 512, 512, 8, _ladder(256, _CONFIG_F)),
        # the CPU quick run: same structure (mapping, modulated convs, noise, skip toRGB, residual D),
        # 32 px, a 2-layer 64-d mapping and 64 / 32 / 32 / 16 feature maps at 4 / 8 / 16 / 32 px (the
        # quick run projects 350 originals per seed: the 32 px layer's width sets its cost)
        "quick_32": StyleGAN2Preset("quick_32", 32, 64, 64, 2, _ladder(32, {4: 64, 8: 32, 16: 32, 32: 16})),
    },
    "fastgan": {
        # FastGAN (Liu et al. 2021) at 256 px, nz 256, ngf = ndf = 64 (AmpliBias trains it at 256)
        "paper_256": FastGANPreset("paper_256", 256, 256, 64, 64),
        # the CPU quick run: 32 px (the digits' own scale), nz 64, ngf = ndf = 4, one skip-layer
        # excitation in G, 4 -> 32 (FastGAN's span is 16: 4 -> 64 at the smallest), and one on D's
        # big path, 32 -> 8 (FastGAN's span is 8: 64 -> 8 at the smallest)
        "quick_32": FastGANPreset("quick_32", 32, 64, 4, 4, sle_span=8, d_sle_span=4),
    },
}


def parameter_count(module) -> int:
    """Trainable parameters of a network (buffers such as constant noise and w_avg excluded)."""
    return sum(p.numel() for p in module.parameters())


def get_gan_preset(family: str, name: str):
    try:
        return PRESETS[family][name]
    except KeyError:
        raise ConfigError(f"unknown {family} preset {name!r}; expected one of {', '.join(PRESETS.get(family, {}))}"
                          ) from None
