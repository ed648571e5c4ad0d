"""The generative baselines of Table 1: stage 4 as DiffInject's (cross-entropy on the original
training set plus a synthetic set), the synthetic set from a GAN instead of h-space injection.

- A² (An et al., ACCV 2022): a StyleGAN2 adapted few-shot to the top-K set; each original is
  projected into the source generator's W space and decoded by the adapted one, keeping the
  original's label (stage-3 kind `stylegan2_adapt`, synthesis/stylegan2_adapt.py).
- AmpliBias (Ko et al., CIKM 2023): one FastGAN per class on that class's top-K samples; an
  image keeps its generator's class (stage-3 kind `fastgan`, stages/synthesis/fastgan_per_class.py).
"""
from __future__ import annotations

import dataclasses
from diffinject.config.schema import ExperimentConfig
from diffinject.methods.vanilla import Vanilla
from diffinject.nets.gce_loss import gce_loss


class A2(Vanilla):
    """baselines.a2_loss=gce trains with the generalized cross-entropy (q = baselines.q), as A²'s
    released 3.training-ours.py does on original + augmented images; ce as every other stage 4."""
    name = "a2"
    needs_synthetic = True
    synthesis = "stylegan2_adapt"

    def update(self, x, y, index):
        if self.options.get("a2_loss", "ce") == "ce":
            return super().update(x, y, index)
        loss = gce_loss(self.nets["model"](x), y, self.options.get("q", 0.7)).mean()
        return {"loss": self.optimize(self.optimizers["model"], loss)}


class AmpliBias(Vanilla):
    name = "amplibias"
    needs_synthetic = True
    synthesis = "fastgan"

    @classmethod
    def stage1_config(cls, cfg: ExperimentConfig) -> ExperimentConfig:
        """AmpliBias takes its own top-K per class (fastgan.k_per_class; AmpliBias Sec. 4.1)."""
        return dataclasses.replace(cfg, bias=dataclasses.replace(cfg.bias, scope="per_class",
                                                                  k=cfg.fastgan.k_per_class))
