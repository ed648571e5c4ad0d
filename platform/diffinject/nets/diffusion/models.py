"""U-Net presets on diffusers' UNet2DModel (the ADM / improved-DDPM layouts, docs/design.md 2.2)."""
from __future__ import annotations

from dataclasses import dataclass

from diffinject.core.errors import ConfigError


@dataclass(frozen=True)
class UNetPreset:
    name: str
    image_size: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_levels: tuple[int, ...]  # indices into block_out_channels that get self-attention
    learned_sigma: bool
    resample: str                      # "resnet" (ADM res-block up/down) or "conv"
    attention_head_dim: int
    norm_num_groups: int = 32
    dropout: float = 0.0

    @property
    def h_shape(self) -> tuple[int, int, int]:
        """Shape of h-space (the middle block's output) for one image."""
        side = self.image_size // 2 ** (len(self.block_out_channels) - 1)
        return (self.block_out_channels[-1], side, side)


PRESETS: dict[str, UNetPreset] = {p.name: p for p in (
    # The released P2-weighting 256x256 models (ffhq_p2.pt, afhqdog_p2.pt, ...): 93.6 M parameters.
    UNetPreset("p2_256", 256, (128, 128, 256, 256, 512, 512), 1, (4,), True, "resnet", 64),
    # Improved DDPM's CIFAR-10 layout; bottleneck 256 x 4 x 4.
    UNetPreset("adm_32", 32, (128, 256, 256, 256), 3, (1, 2), True, "conv", 64, dropout=0.3),
    # CPU-sized 32x32 model for the quick run (2.6 M parameters, bottleneck 128 x 4 x 4): 16
    # channels at full resolution keep it at ~140 training images/s on 2 CPU cores.
    UNetPreset("small_32", 32, (16, 32, 64, 128), 1, (2,), False, "conv", 32, norm_num_groups=8),
    # Unit-test model: seconds per step on a CPU.
    UNetPreset("tiny_32", 32, (16, 32), 1, (), False, "conv", 16, norm_num_groups=8),
)}


def get_preset(name: str) -> UNetPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown U-Net preset {name!r}; expected one of {', '.join(sorted(PRESETS))}") from None


def build_unet(preset: UNetPreset | str):
    """A freshly initialised diffusers UNet2DModel in the preset's layout.

    ADM conventions: scale-shift norm, sinusoidal embedding with flip_sin_to_cos and no
    frequency shift, GroupNorm before attention (attn_norm_num_groups) also in the middle block.
    """
    from diffusers import UNet2DModel

    p = get_preset(preset) if isinstance(preset, str) else preset
    levels = range(len(p.block_out_channels))
    down = tuple("AttnDownBlock2D" if i in p.attention_levels else
                 ("ResnetDownsampleBlock2D" if p.resample == "resnet" else "DownBlock2D") for i in levels)
    up = tuple("AttnUpBlock2D" if i in p.attention_levels else
               ("ResnetUpsampleBlock2D" if p.resample == "resnet" else "UpBlock2D") for i in reversed(levels))
    return UNet2DModel(
        sample_size=p.image_size, in_channels=3, out_channels=6 if p.learned_sigma else 3,
        block_out_channels=p.block_out_channels, layers_per_block=p.layers_per_block,
        down_block_types=down, up_block_types=up, attention_head_dim=p.attention_head_dim,
        resnet_time_scale_shift="scale_shift", downsample_type=p.resample, upsample_type=p.resample,
        flip_sin_to_cos=True, freq_shift=0, norm_num_groups=p.norm_num_groups,
        attn_norm_num_groups=p.norm_num_groups, dropout=p.dropout,
    )
