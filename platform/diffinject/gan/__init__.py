"""GAN generators for the generative baselines (A²: StyleGAN2 adapted few-shot; AmpliBias:
FastGAN): the losses as pure functions, DiffAugment, the networks' building blocks and FastGAN's
generator and discriminator."""
from .diffaugment import diff_augment
from .fastgan import Discriminator, Generator, build_discriminator, build_generator, parameter_count
from .fastgan_blocks import SkipLayerExcitation
from .losses import (cdc_loss, hinge_d_loss, hinge_g_loss, logistic_d_loss, logistic_g_loss, path_length_penalty,
                     r1_penalty, reconstruction_loss)
from .mapping import EqualLinear, MappingNetwork, pixel_norm
from .modulated import ModulatedConv2d, modulated_conv2d

__all__ = ["Discriminator", "EqualLinear", "Generator", "MappingNetwork", "ModulatedConv2d", "SkipLayerExcitation",
           "build_discriminator", "build_generator", "cdc_loss", "diff_augment", "hinge_d_loss", "hinge_g_loss",
           "logistic_d_loss", "logistic_g_loss", "modulated_conv2d", "parameter_count", "path_length_penalty",
           "pixel_norm", "r1_penalty", "reconstruction_loss"]
