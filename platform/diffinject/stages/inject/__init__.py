"""Stage 3: content injection in h-space (InjectFusion), batched engine and reference path."""
from diffinject.stages.inject.engine import InjectionEngine, InjectionPlan, reference_inject, reference_inject_tensor
from diffinject.nets.injection import ddim_step, inject_h, region_mask, rescale_to_norm, slerp, timestep_grid

__all__ = ["InjectionEngine", "InjectionPlan", "ddim_step", "inject_h", "reference_inject", "reference_inject_tensor", "region_mask",
           "rescale_to_norm", "slerp", "timestep_grid"]
