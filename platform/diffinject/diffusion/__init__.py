"""Stage 2: diffusion models (diffusers' UNet2DModel presets), schedule, P2 loss, h-space access."""
from .guided_diffusion import convert_guided_diffusion_state_dict, load_guided_diffusion_checkpoint
from .hspace import HSpace
from .models import PRESETS, UNetPreset, build_unet, get_preset
from .sampling import ddim_sample
from .schedule import diffusion_loss, linear_alphas_cumprod, p2_loss, p2_weights
from .vlb import GaussianPosterior, vb_term

__all__ = ["GaussianPosterior", "HSpace", "PRESETS", "UNetPreset", "build_unet", "ddim_sample", "diffusion_loss", "get_preset",
           "linear_alphas_cumprod", "p2_loss", "p2_weights", "vb_term",
           "convert_guided_diffusion_state_dict", "load_guided_diffusion_checkpoint"]
