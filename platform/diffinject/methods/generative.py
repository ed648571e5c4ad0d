"""The generative baselines of Table 1: stage 4 as DiffInject's (cross-entropy on the original
training set plus a synthetic set), the synthetic set from a GAN instead of h-space injection.

- A² (An et al., ACCV 2022): a StyleGAN2 adapted few-shot to the top-K set; each original is
  projected into the source generator's W space and decoded by the adapted one, keeping the
  original's label (stage-3 kind `stylegan2_adapt`, synthesis/stylegan2_adapt.py).
- AmpliBias (Ko et al., CIKM 2023): one FastGAN per class on that class's top-K samples; an
  image keeps its generator's class (stage-3 kind `fastgan`, synthesis/fastgan.py).
"""
from __future__ import annotations

from .base import register_method
from .vanilla import Vanilla


@register_method
class A2(Vanilla):
    name = "a2"
    needs_synthetic = True
    synthesis = "stylegan2_adapt"


@register_method
class AmpliBias(Vanilla):
    name = "amplibias"
    needs_synthetic = True
    synthesis = "fastgan"
