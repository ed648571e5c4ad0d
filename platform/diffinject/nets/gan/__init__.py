"""GAN generators for the generative baselines, as pure math and networks (no training loops:
those are stage code in synthesis/): the losses and regularisers, DiffAugment, the building
blocks, and the two families' networks in their own modules, `gan.stylegan2` (A²'s StyleGAN2
and its W projector, `gan.projection`) and `gan.fastgan` (AmpliBias's FastGAN)."""
from diffinject.nets.gan.diffaugment import diff_augment
from diffinject.nets.gan.fastgan_blocks import SkipLayerExcitation
from diffinject.nets.gan.losses import (cdc_loss, hinge_d_loss, hinge_g_loss, logistic_d_loss, logistic_g_loss, path_length_penalty,
                     r1_penalty, reconstruction_loss)
from diffinject.nets.gan.mapping import EqualLinear, MappingNetwork, pixel_norm
from diffinject.nets.gan.modulated import ModulatedConv2d, modulated_conv2d

__all__ = ["EqualLinear", "MappingNetwork", "ModulatedConv2d", "SkipLayerExcitation", "cdc_loss", "diff_augment",
           "hinge_d_loss", "hinge_g_loss", "logistic_d_loss", "logistic_g_loss", "modulated_conv2d",
           "path_length_penalty", "pixel_norm", "r1_penalty", "reconstruction_loss"]
