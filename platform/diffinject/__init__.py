"""DiffInject: debiasing image classifiers with diffusion-generated bias-conflict samples.

The package's folders are its layers, each importing only those below it (docs/architecture.md):
core, data, nets, config, training, methods, stages, tracking, cluster, reporting, experiment,
sweeps, cli. Importing the package or any of its folders loads no torch: the short API below is
loaded on first use.
"""
from diffinject.core.lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "gce_loss": "diffinject.nets.gce_loss",
    "load_guided_diffusion_checkpoint": "diffinject.nets.diffusion.guided_diffusion",
    "p2_weights": "diffinject.nets.diffusion.schedule",
    "slerp": "diffinject.nets.injection",
    "timestep_grid": "diffinject.nets.injection",
})
