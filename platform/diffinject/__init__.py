"""DiffInject: debiasing image classifiers with diffusion-generated bias-conflict samples.

The package's folders are its layers, each importing only those below it (docs/architecture.md):
core, data, nets, config, training, methods, stages, tracking, cluster, reporting, experiment,
sweeps, cli. This file imports nothing, so importing any light module loads no torch.
"""
__version__ = "0.1.0"

# The short public API, loaded on first use (PEP 562) so that `import diffinject` stays light.
_API = {
    "gce_loss": "diffinject.nets.gce_loss",
    "load_guided_diffusion_checkpoint": "diffinject.nets.diffusion.guided_diffusion",
    "p2_weights": "diffinject.nets.diffusion.schedule",
    "slerp": "diffinject.nets.injection",
    "timestep_grid": "diffinject.nets.injection",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'diffinject' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_API[name]), name)
