"""Per-dataset presets of each config section, as the paper and the reference code set them
(docs/design.md 2.4). A dataset takes the presets of its recipe (data registry: an embedded
stand-in trains as its paper dataset)."""
from __future__ import annotations

from diffinject.config.schema import (BaselinesConfig, ClassifierConfig, DiffusionConfig, FastGANConfig,
                                      InjectionConfig, StyleGAN2Config)
from diffinject.core.errors import ConfigError


def recipe(dataset: str) -> str:
    """The dataset whose presets `dataset` takes: an embedded stand-in's paper dataset (Colored
    Digits and Colored MNIST 5k train as Colored MNIST), else itself. Unknown: the registry's error."""
    from diffinject.data.registry import get_dataset_spec

    return get_dataset_spec(dataset).recipe


def classifier_preset(dataset: str) -> ClassifierConfig:
    """The dataset's classifier as the DiffInject paper's appendix trains it (DisEnt's
    preprocessing; Adam 1e-3 for CMNIST and CCIFAR-10, 1e-4 for BFFHQ and Dogs & Cats; crop +
    flip for CCIFAR-10 and BFFHQ only): stage 1's, and the `uniform` baseline protocol's.
    The `reference` protocol changes the stage-4 / baseline copy (BASELINE_PROTOCOLS)."""
    dataset = recipe(dataset)
    if dataset == "cmnist":
        return ClassifierConfig(arch="mlp", lr=1e-3, batch_size=256, augment="none", normalize=False,
                                num_steps=20_000)
    if dataset == "cifar10c":
        return ClassifierConfig(arch="resnet18", lr=1e-3, batch_size=256, augment="crop_flip",
                                normalize=True, num_steps=50_000)
    if dataset == "bffhq":
        return ClassifierConfig(arch="resnet18", lr=1e-4, batch_size=64, augment="crop_flip",
                                normalize=True, resize=224, num_steps=50_000)
    if dataset == "dogs_and_cats":
        return ClassifierConfig(arch="resnet18", lr=1e-4, batch_size=64, augment="none",
                                normalize=True, resize=224, num_steps=50_000)
    raise ConfigError(f"no classifier preset for dataset {dataset!r}")


def diffusion_preset(dataset: str) -> DiffusionConfig:
    """32x32 models for the small datasets (CMNIST resized 28 -> 32, as in the paper); the
    256x256 ones normally use released P2 checkpoints, whose architecture p2_256 is."""
    dataset = recipe(dataset)
    if dataset == "cmnist":
        return DiffusionConfig(preset="adm_32", hflip=False, lr=1e-4)
    if dataset == "cifar10c":
        return DiffusionConfig(preset="adm_32", hflip=True, lr=1e-4)
    return DiffusionConfig(preset="p2_256", hflip=True, lr=2e-5, batch_size=32, gamma=0.5)


def stylegan2_preset(dataset: str) -> StyleGAN2Config:
    """A²'s generators at the diffusion models' resolutions: 32 px for the small datasets (digits
    resized 28 -> 32, no flips, as stage 2), 256 px for BFFHQ and Dogs & Cats."""
    dataset = recipe(dataset)
    if dataset == "cmnist":
        return StyleGAN2Config(preset="paper_32", hflip=False)
    if dataset == "cifar10c":
        return StyleGAN2Config(preset="paper_32", hflip=True)
    return StyleGAN2Config(preset="paper_256", hflip=True)


def fastgan_preset(dataset: str, ratio: str) -> FastGANConfig:
    """AmpliBias Sec. 4.1: K = 100 per class at 1 %, 200 at 5 % (the paper names no other ratio:
    0.5 % and 2 % take the 1 % value). No flips for the digits (a mirrored digit is not its
    class's), as stage 2 and A² train them; FastGAN-pytorch train.py flips every other dataset."""
    return FastGANConfig(k_per_class=200 if ratio == "5" else 100, hflip=recipe(dataset) != "cmnist")


def baselines_preset(dataset: str, ratio: str) -> BaselinesConfig:
    """The comparison methods' own hyperparameters, as their reference scripts pass them (both
    baseline protocols keep them): DisEnt's lambdas dis / swap_b / swap and its lr decay factor;
    every script passes --curr_step=10000 --lr_decay_step=10000, the BaselinesConfig defaults."""
    dataset = recipe(dataset)
    # Learning-Debiased-Disentangled scripts/run_cmnist_ours.sh; BiasEnsemble train_cmnist.sh (DisEnt + BE)
    if dataset == "cmnist":
        return BaselinesConfig(lambda_dis_align=10, lambda_swap_align=10, lambda_swap=1, lr_gamma=0.5)
    if dataset == "cifar10c":
        # Learning-Debiased-Disentangled scripts/run_cifar10c_ours.sh: 1/1/1 at 0.5 % and 5 %, 5/5/1 at 1 % and 2 %
        strong = ratio in ("1", "2")
        return BaselinesConfig(lambda_dis_align=5 if strong else 1, lambda_swap_align=5 if strong else 1,
                               lambda_swap=1, lr_gamma=0.5)
    if dataset == "bffhq":
        # Learning-Debiased-Disentangled scripts/run_bffhq_ours.sh (no --lr_gamma: train.py's default 0.1);
        # BiasEnsemble train_bffhq.sh passes --lr_gamma=0.1
        return BaselinesConfig(lambda_dis_align=2, lambda_swap_align=2, lambda_swap=0.1, lr_gamma=0.1)
    # BiasEnsemble scripts/train_codes/train_dnc.sh (DisEnt + BE)
    return BaselinesConfig(lambda_dis_align=1, lambda_swap_align=1, lambda_swap=1, lr_gamma=0.1)


def injection_preset(dataset: str) -> InjectionConfig:
    """The paper's per-dataset gamma and conflict ratio (docs/design.md 2.3, item 8); both protocols keep them."""
    gamma, ratio = {"cmnist": (0.9, 0.1), "cifar10c": (0.3, 0.1), "bffhq": (0.7, 0.6),
                    "dogs_and_cats": (0.2, 0.6)}[recipe(dataset)]
    return InjectionConfig(gamma=gamma, conflict_ratio=ratio)

