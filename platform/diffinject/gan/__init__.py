"""GAN generators for the generative baselines (A²: StyleGAN2 adapted few-shot; AmpliBias:
FastGAN): the losses as pure functions, DiffAugment, and the networks' building blocks."""
from .diffaugment import diff_augment
from .fastgan_blocks import SkipLayerExcitation
from .losses import (cdc_loss, hinge_d_loss, hinge_g_loss, logistic_d_loss, logistic_g_loss, path_length_penalty,
                     r1_penalty)
from .mapping import EqualLinear, MappingNetwork, pixel_norm
from .modulated import ModulatedConv2d, modulated_conv2d
from .projection import project
from .stylegan2 import (Discriminator, EqualConv2d, Generator, build_discriminator, build_generator,
                        parameter_count)

__all__ = ["Discriminator", "EqualConv2d", "EqualLinear", "Generator", "build_discriminator", "build_generator",
           "parameter_count", "project", "MappingNetwork", "ModulatedConv2d", "SkipLayerExcitation", "pixel_norm", "cdc_loss", "diff_augment", "hinge_d_loss", "hinge_g_loss", "logistic_d_loss",
           "logistic_g_loss", "modulated_conv2d", "path_length_penalty", "r1_penalty"]
