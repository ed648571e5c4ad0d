"""DiffInject: debiasing image classifiers with diffusion-generated bias-conflict samples."""
__version__ = "0.1.0"

from .diffusion.guided_diffusion import load_guided_diffusion_checkpoint  # noqa: E402
from .diffusion.schedule import p2_weights  # noqa: E402
from .inject.formulas import slerp, timestep_grid  # noqa: E402
from .losses import gce_loss  # noqa: E402

__all__ = ["gce_loss", "load_guided_diffusion_checkpoint", "p2_weights", "slerp", "timestep_grid", "__version__"]
