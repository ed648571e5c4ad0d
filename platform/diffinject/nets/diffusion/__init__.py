"""Stage 2: diffusion models (diffusers' UNet2DModel presets), schedule, P2 loss, h-space access."""
from diffinject.nets.diffusion.guided_diffusion import convert_guided_diffusion_state_dict, load_guided_diffusion_checkpoint
from diffinject.nets.diffusion.hspace import HSpace
from diffinject.nets.diffusion.models import PRESETS, UNetPreset, build_unet, get_preset
from diffinject.nets.diffusion.sampling import ddim_sample
from diffinject.nets.diffusion.schedule import diffusion_loss, linear_alphas_cumprod, p2_loss, p2_weights
from diffinject.nets.diffusion.vlb import GaussianPosterior, vb_term

__all__ = ["GaussianPosterior", "HSpace", "PRESETS", "UNetPreset", "build_unet", "ddim_sample", "diffusion_loss", "get_preset",
           "linear_alphas_cumprod", "p2_loss", "p2_weights", "vb_term",
           "convert_guided_diffusion_state_dict", "load_guided_diffusion_checkpoint"]
