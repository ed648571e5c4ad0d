"""DiffInject: debiasing image classifiers with diffusion-generated bias-conflict samples."""
__version__ = "0.1.0"

from .losses import gce_loss  # noqa: E402

__all__ = ["gce_loss", "__version__"]
