"""Stage 2's networks and math: diffusers' UNet2DModel presets, the schedule, the P2 loss and the
VLB term, DDIM sampling, h-space access, and released guided-diffusion checkpoints (loaded on
first use: importing the package loads no torch)."""
from diffinject.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "GaussianPosterior": "diffinject.nets.diffusion.vlb",
    "HSpace": "diffinject.nets.diffusion.hspace",
    "PRESETS": "diffinject.nets.diffusion.models",
    "UNetPreset": "diffinject.nets.diffusion.models",
    "build_unet": "diffinject.nets.diffusion.models",
    "convert_guided_diffusion_state_dict": "diffinject.nets.diffusion.guided_diffusion",
    "ddim_sample": "diffinject.nets.diffusion.sampling",
    "diffusion_loss": "diffinject.nets.diffusion.schedule",
    "get_preset": "diffinject.nets.diffusion.models",
    "linear_alphas_cumprod": "diffinject.nets.diffusion.schedule",
    "load_guided_diffusion_checkpoint": "diffinject.nets.diffusion.guided_diffusion",
    "p2_loss": "diffinject.nets.diffusion.schedule",
    "p2_weights": "diffinject.nets.diffusion.schedule",
    "vb_term": "diffinject.nets.diffusion.vlb",
})
