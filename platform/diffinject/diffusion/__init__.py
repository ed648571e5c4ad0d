"""Stage 2: diffusion models (diffusers' UNet2DModel presets), schedule, P2 loss, h-space access."""
from .hspace import HSpace
from .models import PRESETS, UNetPreset, build_unet, get_preset
from .schedule import linear_alphas_cumprod, p2_loss, p2_weights

__all__ = ["HSpace", "PRESETS", "UNetPreset", "build_unet", "get_preset", "linear_alphas_cumprod",
           "p2_loss", "p2_weights"]
