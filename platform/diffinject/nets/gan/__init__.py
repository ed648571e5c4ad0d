"""GAN generators for the generative baselines, as pure math and networks (no training loops:
those are stage code in stages/synthesis/): the losses and regularisers, DiffAugment, the building
blocks, and the two families' networks in their own modules, `gan.stylegan2` (A²'s StyleGAN2
and its W projector, `gan.projection`) and `gan.fastgan` (AmpliBias's FastGAN). The names below
are loaded on first use."""
from diffinject.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "EqualLinear": "diffinject.nets.gan.mapping",
    "MappingNetwork": "diffinject.nets.gan.mapping",
    "ModulatedConv2d": "diffinject.nets.gan.modulated",
    "SkipLayerExcitation": "diffinject.nets.gan.fastgan_blocks",
    "cdc_loss": "diffinject.nets.gan.losses",
    "diff_augment": "diffinject.nets.gan.diffaugment",
    "hinge_d_loss": "diffinject.nets.gan.losses",
    "hinge_g_loss": "diffinject.nets.gan.losses",
    "logistic_d_loss": "diffinject.nets.gan.losses",
    "logistic_g_loss": "diffinject.nets.gan.losses",
    "modulated_conv2d": "diffinject.nets.gan.modulated",
    "path_length_penalty": "diffinject.nets.gan.losses",
    "pixel_norm": "diffinject.nets.gan.mapping",
    "r1_penalty": "diffinject.nets.gan.losses",
    "reconstruction_loss": "diffinject.nets.gan.losses",
})
