"""Stage 3: content injection in h-space (InjectFusion): the batched engine and the reference path,
with the injection formulas of nets.injection (loaded on first use)."""
from diffinject.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "InjectionEngine": "diffinject.stages.inject.engine",
    "InjectionPlan": "diffinject.stages.inject.engine",
    "ddim_step": "diffinject.nets.injection",
    "inject_h": "diffinject.nets.injection",
    "reference_inject": "diffinject.stages.inject.engine",
    "reference_inject_tensor": "diffinject.stages.inject.engine",
    "region_mask": "diffinject.nets.injection",
    "rescale_to_norm": "diffinject.nets.injection",
    "slerp": "diffinject.nets.injection",
    "timestep_grid": "diffinject.nets.injection",
})
