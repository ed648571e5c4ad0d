"""Typed configs for the stages, per-dataset presets, command-line overrides, flattening.

Presets carry the paper's / reference code's hyperparameters (docs/design.md 2.4); `quick`
shrinks the Colored Digits run to a CPU budget. Overrides are `section.field=value`
strings, e.g. `classifier.lr=1e-4` or `bias.k=20`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_type_hints

from .errors import ConfigError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# Speed levers (diffinject.accel): each one's first value is the eager float32 reference path.
COMPILE_MODES = ("none", "inductor", "cudagraphs")   # torch.compile off | inductor | inductor + CUDA graphs (GPU)
PRECISIONS = ("auto", "fp32", "bf16_autocast", "bf16_weights")
ATTENTION = ("sdpa", "classic")                      # diffusers' AttnProcessor2_0 | AttnProcessor
NOISE = ("host", "counter")


@dataclass
class DataConfig:
    dataset: str = "colored_digits"
    ratio: str = "1"            # percent of bias-conflicting training samples
    data_root: str = "data"     # released layout lives here (Colored Digits is built here)
    cache_root: str = "cache"   # Parquet shards


@dataclass
class ClassifierConfig:
    """Stage 4 (and every baseline): one classifier trained by a registered method."""

    arch: str = "mlp"                 # mlp | resnet18
    mlp_divide_by_255: bool = False   # the reference CMNIST MLP divides inputs by 255 a second time
    num_steps: int = 20_000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment: str = "none"             # none | crop_flip (random crop, pad 4, + horizontal flip)
    normalize: bool = False           # CIFAR mean/std normalisation
    resize: int = 0                   # 0 keeps the native size; 224 for BFFHQ, Dogs & Cats
    select: str = "valid"             # valid | test (reference repos' best-on-test) | last
    eval_every: int = 500
    checkpoint_every: int = 0         # resume state saved at evaluations on multiples of N steps and the last; 0: every evaluation
    log_every: int = 50
    bf16: bool = False                # bf16 autocast on GPU (the references train in float32; CPU always float32)
    channels_last: bool = False       # NHWC activations and weights (a GPU speed lever; same numbers up to rounding)


@dataclass
class BiasConfig:
    """Stage 1: the deliberately biased classifier (GCE) and top-K extraction."""

    q: float = 0.7
    k: int = 10
    scope: str = "global"             # global | per_class
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(select="last"))


@dataclass
class BaselinesConfig:
    """Hyperparameters of the comparison methods (LfF, DisEnt, BiasEnsemble), per dataset.

    `protocol` names the BASELINE_PROTOCOLS row preset() filled in: `reference` trains each
    method as its reference repository does, `uniform` trains every method alike."""

    protocol: str = "reference"       # reference | uniform
    q: float = 0.7                    # GCE of the biased models
    ema_alpha: float = 0.7            # per-sample loss EMA (LfF, DisEnt)
    lff_lr: float = 0.0               # LfF's Adam lr; 0: classifier.lr
    lff_num_steps: int = 0            # LfF's training steps; 0: classifier.num_steps
    disent_num_steps: int = 0         # DisEnt's (and DisEnt + BE's) training steps; 0: classifier.num_steps
    lambda_dis_align: float = 10.0    # DisEnt
    lambda_swap_align: float = 10.0
    lambda_swap: float = 1.0
    curr_step: int = 10_000           # DisEnt: feature swapping (and lr decay counting) start here
    disent_lr: float = 0.0            # DisEnt's Adam lr; 0: classifier.lr
    lr_decay_step: int = 10_000       # DisEnt step decay after curr_step; 0 disables
    lr_gamma: float = 0.5
    num_bias_models: int = 5          # BiasEnsemble committee
    agreement: int = 3                # pseudo-aligned when >= agreement models give p(y|x) > tau
    tau: float = 0.99
    committee_steps: int = 1_000      # training steps of each committee model
    committee_select: str = "last"    # valid: each model's best-on-valid evaluation | last: its last weights
    committee_eval_every: int = 500   # with committee_select=valid: evaluated after steps 1, 1 + N, 1 + 2N, ...
    committee_augment: bool = False   # score p(y|x) on training images with the training augmentation
    a2_loss: str = "ce"               # A²'s final classifier: ce (as every stage 4) | gce (A²'s release, with q)


@dataclass
class DiffusionConfig:
    """Stage 2: the P2-weighted diffusion model (docs/design.md 2.2)."""

    preset: str = "adm_32"            # U-Net preset (diffinject.diffusion.PRESETS)
    train_data: str = "train"         # "train": this dataset's training split at data.ratio;
                                      # "DATASET@RATIO": another dataset's training split
    resize: bool = True               # resize images to the preset's resolution (28 -> 32 for digits)
    hflip: bool = True                # random horizontal flips (off for digits)
    gamma: float = 1.0                # P2 weighting; 0 is plain DDPM
    k: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 128             # global batch, split over the workers
    num_steps: int = 100_000
    ema_decay: float = 0.9999         # with diffusers' (1 + n) / (10 + n) ramp at the start
    grad_clip: float = 1.0            # max gradient norm; 0 disables clipping
    bf16: bool = True                 # autocast on GPU (CPU always trains in float32)
    channels_last: bool = False       # NHWC activations and weights
    compile: str = "none"             # none | inductor | cudagraphs (GPU): torch.compile of the U-Net
    fused_adam: bool = False          # AdamW's fused CUDA kernel (GPU only)
    log_every: int = 100
    checkpoint_every: int = 5_000
    sample_every: int = 10_000        # EMA sample grid to MLflow; 0 disables
    sample_images: int = 64
    sample_steps: int = 50            # DDIM steps of the sample grids
    sample_eta: float = 0.0           # DDIM eta of the sample grids (1.0: DDPM-like, stochastic)
    check_sync_every: int = 0         # DDP: compare parameters across ranks every N steps (0: never)
    keep_checkpoints: bool = False    # also log each checkpoint's EMA weights as checkpoints/step_NNNNNNN.pt
                                      # (the model at every saved length, e.g. for a quality curve)
    seed: int = 0                     # one diffusion model per dataset serves every seed of a table


@dataclass
class InjectionConfig:
    """Stage 3: content injection in h-space (docs/design.md 2.3)."""

    protocol: str = "release"         # release | paper: whose PROTOCOLS fields preset() filled in
    label_from: str = "content"       # content | original: whose label a synthetic sample gets
    gamma: float = 0.9                # slerp weight of the content's h
    mode: str = "local"               # local (masked region of h) | global
    mask: str = "0.5,0.375,0.875,0.625"  # local region: top,left,bottom,right as fractions of h's H and W
    t_edit: int = 500                 # inject at generation steps with t >= t_edit
    calibrate_t_edit: bool = False    # pick t_edit where mean LPIPS(x0, predicted x0) reaches lpips_threshold
    lpips_threshold: float = 0.33
    calibration_images: int = 100
    t_boost: int = 200                # stochastic (eta = 1) steps at t <= t_boost; -1 disables boosting
    inversion_steps: int = 50         # the released scripts use 1000 / 1000
    generation_steps: int = 50
    inject_grid: int = 0              # N: only generation steps whose t is on the N-step grid inject; 0: every step
    boost_grid: int = 0               # N: only steps whose t is on the N-step grid boost; 0: every step
    dt_lambda: float = 1.0            # scale of the direction eps at (inject-grid) steps with t >= 950
    omega: float = 0.0                # InjectFusion's latent calibration (0: off, as in the released scripts)
    conflict_ratio: float = 0.1       # N_syn = round(conflict_ratio * |train|)
    originals: str = "non_topk"       # non_topk | aligned (the released code's choice; uses bias labels)
    batch_size: int = 32              # pairs per U-Net pass; 0: as many as fit in memory_fraction of the free
                                      # GPU memory (measured on a probe batch; on a CPU 0 means 32)
    memory_fraction: float = 0.8
    # Speed levers (diffinject.accel; the first value of each is the eager reference path):
    precision: str = "auto"           # auto: bf16_autocast on a GPU, fp32 on a CPU | fp32 (the model's dtype) |
                                      # bf16_autocast | bf16_weights (the U-Net cast to bf16; DDIM math in fp32)
    compile: str = "none"             # none | inductor | cudagraphs (GPU): the encoder and decoder passes, with
                                      # every batch padded to batch_size (static shapes)
    channels_last: bool = False
    attention: str = "sdpa"           # sdpa | classic
    noise: str = "host"               # host: each pair's boosting noise from its own CPU generator, copied to the
                                      # device | counter: drawn on the device from (seed, t, element), no copies.
                                      # Either way a pair's image does not depend on its batch; they differ.


@dataclass
class StyleGAN2Config:
    """A²'s generators (stage-3 kind `stylegan2_adapt`): a source StyleGAN2 trained on the whole
    biased training set, adapted few-shot to the top-K set with the cross-domain correspondence
    (CDC) loss; each original is projected into the source's W space and decoded by the adapted
    generator. Sources: An et al. (ACCV 2022) Sec. 3; StyleGAN2 (Karras et al. 2020); Ojha et al.
    (CVPR 2021); the projector of StyleGAN2 Appendix D."""

    preset: str = "paper_32"          # gan.stylegan2.PRESETS (resolution, widths, mapping depth)
    source_checkpoint: str = ""       # "": train the source in the run | "shipped" (gan/shipped.py) | a GAN file
    resize: bool = True               # images are resized to the preset's resolution (28 -> 32 for digits)
    hflip: bool = False               # random horizontal flips of the source's training images
    batch_size: int = 32
    num_steps: int = 100_000
    lr: float = 0.002                 # StyleGAN2 config-f Adam lr, betas (0, 0.99), lazy-regularisation corrected
    r1_gamma: float = 10.0            # lazy R1 every r1_every D steps
    r1_every: int = 16
    pl_weight: float = 2.0            # path-length regularisation every pl_every G steps
    pl_every: int = 4
    style_mixing: float = 0.9
    ema_half_life: int = 10_000       # images (StyleGAN2's ema_kimg = 10)
    seed: int = 0                     # one source generator per dataset serves every seed of a table
    # few-shot adaptation to the top-K set: few-shot-gan-adaptation train.py defaults (its --iter, --batch,
    # --lr, --kl_wt, --feat_const_batch, --n_train, --subspace_std, --subspace_freq)
    adapt_steps: int = 5_000
    adapt_batch_size: int = 4
    adapt_lr: float = 0.002
    cdc_weight: float = 1000.0        # kl_wt, on nn.KLDivLoss()'s mean over the N (N - 1) similarities
    cdc_batch_size: int = 4           # fresh latents of the CDC term each step (feat_const_batch)
    anchor_count: int = 10            # anchor latents (image-level D near them, patch-level elsewhere)
    anchor_std: float = 0.1
    image_d_every: int = 4            # anchors and the image-level D every N-th step, free latents otherwise
                                      # (32 px: image-level D always, the reference's patch branch never fires)
    adapt_ema_half_life: float = 312.5  # steps: the reference's accum = 0.5 ** (32 / 10_000) per step, any batch
    project_steps: int = 1_000        # W projection of each original
    project_lr: float = 0.1
    noise_reg_weight: float = 1e5
    project_batch_size: int = 16      # originals projected together (each has its own w and noise maps)
    decode_noise: str = "random"      # random: the adapted generator decodes w with fresh noise maps (A²'s
                                      # projector.py saves only w) | projected: with the projected noise maps
    distance: str = "lpips_vgg"       # lpips_vgg | mse: the projector's image distance
    log_every: int = 100
    checkpoint_every: int = 5_000
    keep_checkpoints: bool = False    # the source's GAN file at every checkpoint_every-th step to MLflow (checkpoints/)
    sample_every: int = 10_000        # EMA sample grid to MLflow; 0 disables
    sample_images: int = 30
    bf16: bool = True                 # bfloat16 autocast of the non-regulariser passes on CUDA


@dataclass
class FastGANConfig:
    """AmpliBias's generators (stage-3 kind `fastgan`): one FastGAN per class, trained on that
    class's top-K samples; a generator's images are labelled with its class. Sources: Ko et al.
    (CIKM 2023) Sec. 3; FastGAN (Liu et al., ICLR 2021); DiffAugment (Zhao et al. 2020)."""

    preset: str = "paper_256"         # gan.fastgan.PRESETS: 256 px, nz 256, ngf = ndf = 64
    init_checkpoint: str = ""         # "": each class's FastGAN from scratch (AmpliBias) | "shipped" | a file:
                                      # per-class starting points (G and D) the top-K training continues
    k_per_class: int = 100            # top-K per class the generators train on (AmpliBias: 100 at 1 %, 200 at 5 %)
    batch_size: int = 8
    num_steps: int = 50_000           # per class
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ema_decay: float = 0.999
    policy: str = "color,translation" # DiffAugment policy
    # random horizontal flip of each real image, drawn per step (FastGAN-pytorch train.py's data
    # transform, RandomHorizontalFlip); off for the digits (_fastgan_preset, docs/design.md 3.2)
    hflip: bool = True
    distance: str = "lpips_vgg"       # lpips_vgg | mse: the decoders' reconstruction distance
    bf16: bool = True                 # bf16 autocast on CUDA (ignored on CPU)
    log_every: int = 100
    checkpoint_every: int = 5_000
    keep_checkpoints: bool = False    # every class's G and D at each checkpoint_every-th step, one GAN file per
                                      # step, to MLflow (checkpoints/)
    sample_every: int = 10_000        # per-class EMA sample grid to MLflow; 0 disables
    sample_images: int = 30


@dataclass
class RunConfig:
    seed: int = 0
    num_workers: int = 0              # Ray Train workers; 0 runs the loop in-process
    use_gpu: str = "auto"             # auto | true | false
    max_failures: int = 2             # worker failures a training run survives
    experiment: str = "diffinject"    # MLflow experiment
    storage_path: str = "ray_results" # Ray Train checkpoints


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    stylegan2: StyleGAN2Config = field(default_factory=StyleGAN2Config)
    fastgan: FastGANConfig = field(default_factory=FastGANConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # True on a quick preset (a plain attribute, not a field: neither logged nor in any key),
    # so that an injection.protocol override puts the quick layer back on top of the protocol
    quick_preset = False


def _recipe(dataset: str) -> str:
    """The dataset whose presets `dataset` takes: an embedded stand-in's paper dataset (Colored
    Digits and Colored MNIST 5k train as Colored MNIST), else itself. Unknown: the registry's error."""
    from .data.registry import get_dataset_spec

    return get_dataset_spec(dataset).recipe


def _classifier_preset(dataset: str) -> ClassifierConfig:
    """The dataset's classifier as the DiffInject paper's appendix trains it (DisEnt's
    preprocessing; Adam 1e-3 for CMNIST and CCIFAR-10, 1e-4 for BFFHQ and Dogs & Cats; crop +
    flip for CCIFAR-10 and BFFHQ only): stage 1's, and the `uniform` baseline protocol's.
    The `reference` protocol changes the stage-4 / baseline copy (BASELINE_PROTOCOLS)."""
    dataset = _recipe(dataset)
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


# The quick run's diffusion models: each model the project ships (diffusion/shipped.py) was
# trained with exactly these settings on its dataset's 1% split (`diffinject diffusion train
# --quick`, then exported to float16); `--retrain-diffusion` trains it again. One model serves
# both ratios and every seed of the quick table.
QUICK_DIFFUSION = dict(preset="small_32", lr=2e-3, batch_size=64, ema_decay=0.995, log_every=20, sample_images=30,
                       sample_steps=50, sample_eta=1.0)
# Each shipped model's length. Colored MNIST 5k: where the quick DiffInject set's useful share stops
# rising on the measured curve (docs/table1.md, "The shipped diffusion models"); Colored Digits: the
# first shipped model's 1,000 steps.
QUICK_DIFFUSION_LENGTH = {
    "colored_mnist_5k": dict(num_steps=1_000, checkpoint_every=1_000, sample_every=1_000),
    "colored_digits": dict(num_steps=1_000, checkpoint_every=200, sample_every=1_000),
}
# The main job's dataset (table1.py --quick, ablations.py --quick, the CLI's default): real MNIST digits
# (docs/data.md); Colored Digits stays for the fast tests and as an explicit choice.
QUICK_DATASET = "colored_mnist_5k"


def quick_diffusion(dataset: str) -> dict:
    """The quick preset's diffusion settings for `dataset`: trained on its own 1% split, at the
    length of its shipped model (a dataset without one: the main job's)."""
    return {**QUICK_DIFFUSION, "train_data": f"{dataset}@1",
            **QUICK_DIFFUSION_LENGTH.get(dataset, QUICK_DIFFUSION_LENGTH[QUICK_DATASET])}


# The quick run's injection (docs/table1.md, "The quick DiffInject row"): the content's h replaces h
# outright (gamma 1) down to t = 200 (fixed), with 20 + 20 DDIM steps to fit the budget; every step
# injects and boosts (a 50-step grid would leave almost none of 20 steps).
QUICK_INJECTION = dict(mode="global", gamma=1.0, t_edit=200, calibrate_t_edit=False, inversion_steps=20,
                       generation_steps=20, inject_grid=0, boost_grid=0, batch_size=60)
# Per embedded dataset, what its quick injection changes of QUICK_INJECTION and of the protocol's
# labelling, each chosen by its shipped model's useful share alone (docs/table1.md):
# - Colored Digits labels with the content's label (its model shows the content's digit in 45% of
#   the images, the original's in 23%);
# - Colored MNIST 5k keeps the release's labelling (the original's) and injects into the masked
#   region of h only (the paper's CMNIST mode, App. B): useful share 0.201 +- 0.013 over seeds 0-2,
#   against 0.166 +- 0.006 for global injection.
QUICK_INJECTION_BY_DATASET = {"colored_digits": {"label_from": "content"}, "colored_mnist_5k": {"mode": "local"}}


# The quick run's generative baselines (docs/table1.md, "The quick A² and AmpliBias rows"): the
# same stages at CPU scale, every EMA horizon and learning-rate ramp shorter than its run. The main
# job starts both from generators the project ships (QUICK_GANS_BY_DATASET), each at the length
# where its set's useful share stops rising.
# A²: the source StyleGAN2 (its losses, lazy R1 and path length, style mixing, EMA half-life 10k
# images as rosinality's train.py) at 32 px with the quick_32 widths, 1,000 steps of batch 16
# (16k images); the CDC adaptation for 100 steps of batch 4, its EMA half-life the reference's
# 1/16 of the run (312.5 of 5,000 steps); each original projected for 50 steps (the lr warm-up
# and tail are fractions of the run: 2.5 and 12.5 steps).
# AmpliBias: each class's FastGAN (quick_32: 32 px, nz 64, ngf = ndf = 4) continued from its
# shipped starting point for 25 steps of batch 8 on the stage-1 top-10 of its class (the
# DiffInject rows' set, not AmpliBias's top-100), EMA half-life 5 steps (0.87; of 0.14, 0.87 and
# 0.946 per step, the most useful set on the step-1,000 starting points: docs/table1.md).
# Both measure images with the mean squared error where the papers use LPIPS-VGG (its ImageNet
# weights need the network).
QUICK_STYLEGAN2 = dict(preset="quick_32", batch_size=16, num_steps=1_000, adapt_steps=100, adapt_batch_size=4,
                       adapt_ema_half_life=100 / 16, project_steps=50, project_batch_size=60, distance="mse",
                       log_every=100, checkpoint_every=1_000, sample_every=1_000, sample_images=30)
QUICK_FASTGAN = dict(preset="quick_32", k_per_class=10, batch_size=8, num_steps=25, ema_decay=0.87,
                     distance="mse", log_every=5, checkpoint_every=25, sample_every=25, sample_images=10)
# `diffinject gan train --job fastgan_init --quick`: the per-class starting points the quick AmpliBias
# row continues (each class's FastGAN on all of its training images; batch 8 and lr 2e-4 as
# FastGAN-pytorch train.py; EMA 0.95 per step, a half-life of 13.5 steps: 1/72 of the run, the
# reference's 0.999 over 50,000 steps)
QUICK_FASTGAN_INIT = dict(num_steps=1_000, ema_decay=0.95, checkpoint_every=250, sample_every=250, log_every=50)
# The embedded datasets with shipped starting generators (gan/shipped.py): their quick rows start from them.
QUICK_GANS_BY_DATASET = {"colored_mnist_5k": {"stylegan2.source_checkpoint": "shipped",
                                              "fastgan.init_checkpoint": "shipped"}}


def _diffusion_preset(dataset: str) -> DiffusionConfig:
    """32x32 models for the small datasets (CMNIST resized 28 -> 32, as in the paper); the
    256x256 ones normally use released P2 checkpoints, whose architecture p2_256 is."""
    dataset = _recipe(dataset)
    if dataset == "cmnist":
        return DiffusionConfig(preset="adm_32", hflip=False, lr=1e-4)
    if dataset == "cifar10c":
        return DiffusionConfig(preset="adm_32", hflip=True, lr=1e-4)
    return DiffusionConfig(preset="p2_256", hflip=True, lr=2e-5, batch_size=32, gamma=0.5)


def _stylegan2_preset(dataset: str) -> StyleGAN2Config:
    """A²'s generators at the diffusion models' resolutions: 32 px for the small datasets (digits
    resized 28 -> 32, no flips, as stage 2), 256 px for BFFHQ and Dogs & Cats."""
    dataset = _recipe(dataset)
    if dataset == "cmnist":
        return StyleGAN2Config(preset="paper_32", hflip=False)
    if dataset == "cifar10c":
        return StyleGAN2Config(preset="paper_32", hflip=True)
    return StyleGAN2Config(preset="paper_256", hflip=True)


def _fastgan_preset(dataset: str, ratio: str) -> FastGANConfig:
    """AmpliBias Sec. 4.1: K = 100 per class at 1 %, 200 at 5 % (the paper names no other ratio:
    0.5 % and 2 % take the 1 % value). No flips for the digits (a mirrored digit is not its
    class's), as stage 2 and A² train them; FastGAN-pytorch train.py flips every other dataset."""
    return FastGANConfig(k_per_class=200 if ratio == "5" else 100, hflip=_recipe(dataset) != "cmnist")


def _baselines_preset(dataset: str, ratio: str) -> BaselinesConfig:
    """The comparison methods' own hyperparameters, as their reference scripts pass them (both
    baseline protocols keep them): DisEnt's lambdas dis / swap_b / swap and its lr decay factor;
    every script passes --curr_step=10000 --lr_decay_step=10000, the BaselinesConfig defaults."""
    dataset = _recipe(dataset)
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


# How the comparison methods are trained (docs/design.md 2.4): the fields each protocol sets, one
# value, one per dataset, or one per dataset and ratio. `reference` follows the reference
# repositories' code (alinlab/LfF, kakaoenterprise/Learning-Debiased-Disentangled = DisEnt,
# kakaoenterprise/BiasEnsemble = BE), `uniform` trains every method with the classifier preset.
# `classifier.*` is Vanilla's regime, and the stage-4 classifier's of DiffInject (its paired
# difference to Vanilla then measures the synthetic data alone); stage 1 keeps its own.
BASELINE_PROTOCOLS: dict[str, dict[str, Any]] = {
    "reference": {
        # LfF, DisEnt and BE module/mlp.py: forward() divides the ToTensor() input by 255 again
        "classifier.mlp_divide_by_255": {"cmnist": True, "cifar10c": False, "bffhq": False, "dogs_and_cats": False},
        # DisEnt scripts/run_{cmnist,cifar10c,bffhq}_vanilla.sh --lr; BE train_dnc.sh --lr
        "classifier.lr": {"cmnist": 0.01, "cifar10c": 1e-3, "bffhq": 1e-4, "dogs_and_cats": 1e-4},
        "classifier.num_steps": 50_000,          # DisEnt and BE train.py --num_steps default 500 * 100
        # BE data/util.py transforms_preprcs["dogs_and_cats"]["train"]: RandomCrop(224, padding=4) + flip
        "classifier.augment": {"cmnist": "none", "cifar10c": "crop_flip", "bffhq": "crop_flip",
                               "dogs_and_cats": "crop_flip"},
        # LfF config.py: Adam 1e-3 and main_num_steps 235 * 100 (ColoredMNIST), 196 * 200 (CorruptedCIFAR10);
        # LfF has no BFFHQ / Dogs & Cats setting: those train as BE's LfF + BE does (classifier.*)
        "baselines.lff_lr": {"cmnist": 1e-3, "cifar10c": 1e-3, "bffhq": 0.0, "dogs_and_cats": 0.0},
        "baselines.lff_num_steps": {"cmnist": 23_500, "cifar10c": 39_200, "bffhq": 0, "dogs_and_cats": 0},
        # DisEnt scripts/run_*_ours.sh --lr (Corrupted CIFAR-10: 5e-4 at 0.5 %, 1e-3 above); BE train_dnc.sh
        "baselines.disent_lr": {"cmnist": 0.01, "cifar10c": {"0.5": 5e-4, "1": 1e-3, "2": 1e-3, "5": 1e-3},
                                "bffhq": 1e-4, "dogs_and_cats": 1e-4},
        "baselines.committee_steps": 1_000,      # BE train.py --biased_model_train_iter
        # BE learner.py pretrain_b_ensemble_best: board_pretrain_best_acc at step % valid_freq == 0 (0-based
        # steps 0 and 500: after updates 1 and 501) keeps a deep copy of the best-on-valid model ...
        "baselines.committee_select": "valid",
        "baselines.committee_eval_every": 500,   # BE train.py --valid_freq
        # ... and scores p(y|x) with pretrain_loader over the training set, whose transform is "train"
        "baselines.committee_augment": True,
        # A2-Adaptive-Augmentation... 3.training-ours.py: criterion_GCE on original + augmented, whatever --loss
        "baselines.a2_loss": "gce",
    },
    "uniform": {
        "classifier.mlp_divide_by_255": False,   # inputs in [0, 1] for every network
        "baselines.lff_lr": 0.0,                 # every method at classifier.lr ...
        "baselines.lff_num_steps": 0,            # ... for classifier.num_steps
        "baselines.disent_lr": 0.0,
        "baselines.committee_select": "last",    # each committee model's last weights (of the 1,000 steps) ...
        "baselines.committee_eval_every": 1_000,  # (evaluated once, at its end)
        "baselines.committee_augment": False,    # ... scored on the training images as they are
        "baselines.a2_loss": "ce",               # A²'s final classifier with cross-entropy, as every stage 4
    },
}


def _injection_preset(dataset: str) -> InjectionConfig:
    """The paper's per-dataset gamma and conflict ratio (docs/design.md 2.3, item 8); both protocols keep them."""
    gamma, ratio = {"cmnist": (0.9, 0.1), "cifar10c": (0.3, 0.1), "bffhq": (0.7, 0.6),
                    "dogs_and_cats": (0.2, 0.6)}[_recipe(dataset)]
    return InjectionConfig(gamma=gamma, conflict_ratio=ratio)


def _by_dataset(small: Any, large: Any) -> dict[str, Any]:
    """One value for the 32x32 datasets (cmnist and its stand-ins, cifar10c), another for bffhq and dogs_and_cats."""
    return {"cmnist": small, "cifar10c": small, "bffhq": large, "dogs_and_cats": large}


# The two DiffInject protocols (docs/design.md 2.3): the fields each sets, one value or one per
# dataset. `release` follows the authors' released code (seanko29/DiffInject), `paper` its text.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "release": {
        # train_classifier.py BaseDataset.__getitem__ reads the label from the synthetic file name:
        # field -2 (the original's) for new-cmnist / cifar10c, field -6 (the content's) otherwise
        "injection.label_from": _by_dataset("original", "content"),
        "bias.scope": "per_class",               # top_k_loss.py: the K highest-loss samples of each class
        "bias.k": 10,                            # top_k_loss.py --K default
        "bias.classifier.select": "valid",       # top_k_loss.py loads best.path.tar, the best-on-valid GCE model
        "injection.mode": "global",              # no released script passes --use_mask
        "injection.calibrate_t_edit": False,     # the synthetic-set scripts pass no t_edit ...
        "injection.t_edit": 400,                 # ... so main.py's user_defined_t_edit default, 400
        "injection.lpips_threshold": 0.33,       # (unused: nothing is calibrated)
        "injection.dt_lambda": 0.9985,           # every released script
        "injection.inversion_steps": 1000,       # the released scripts' step counts
        "injection.generation_steps": 1000,
        "injection.inject_grid": 50,             # main.py content_replace_step: only the 50-step grid's steps inject
        "injection.boost_grid": 50,              # main.py: eta = 1 only at those on-grid steps
    },
    "paper": {
        "injection.label_from": "content",       # paper Sec. 3: a synthetic sample keeps its content's label
        "bias.scope": "global",                  # paper Sec. 3, Eq. 3-4: top-K over the whole training set
        "bias.k": 10,
        "bias.classifier.select": "last",        # the paper names no model selection for f_B
        "injection.mode": {"cmnist": "local", "cifar10c": "global", "bffhq": "local", "dogs_and_cats": "local"},  # paper App. B
        "injection.calibrate_t_edit": True,      # paper App. B: t_edit where LPIPS reaches 0.33
        "injection.t_edit": 500,                 # (used only with calibrate_t_edit=false)
        "injection.lpips_threshold": 0.33,       # paper App. B
        "injection.dt_lambda": 1.0,              # the paper has no direction scaling
        "injection.inversion_steps": 50,         # the paper names no count; at 50 the release's injection
        "injection.generation_steps": 50,        # grid is the generation grid
        "injection.inject_grid": 0,              # every step with t >= t_edit injects (paper Sec. 3)
        "injection.boost_grid": 0,               # every step with t <= t_boost boosts
    },
}


def _set_field(cfg: Any, dotted: str, value: Any) -> None:
    *sections, name = dotted.split(".")
    target = cfg
    for section in sections:
        target = getattr(target, section)
    setattr(target, name, value)


def _protocol_value(table: str, protocol: str, dotted: str, value: Any, dataset: str, ratio: str) -> Any:
    """A protocol table's value for `dataset`'s recipe (and `ratio`, where it has one per ratio)."""
    for key, kind in ((_recipe(dataset), "dataset"), (ratio, "ratio")):
        if not isinstance(value, dict):
            break
        if key not in value:
            raise ConfigError(f"{table}={protocol}: {dotted} has no value for {kind} {key!r} (known: {', '.join(value)})")
        value = value[key]
    return value


def apply_protocol(cfg: ExperimentConfig, protocol: str) -> ExperimentConfig:
    """Set `protocol`'s PROTOCOLS fields for cfg's dataset (in place), then the quick layer again on a quick preset."""
    OneOf(tuple(PROTOCOLS)).check("injection.protocol", protocol)
    for dotted, value in PROTOCOLS[protocol].items():
        _set_field(cfg, dotted, _protocol_value("injection.protocol", protocol, dotted, value, cfg.data.dataset,
                                                cfg.data.ratio))
    cfg.injection.protocol = protocol
    if cfg.quick_preset:
        cfg.injection = dataclasses.replace(cfg.injection, **{**QUICK_INJECTION,
                                                               **QUICK_INJECTION_BY_DATASET.get(cfg.data.dataset, {})})
    return cfg


# The classifier fields a baseline protocol may change: it starts from the dataset's preset.
CLASSIFIER_REGIME = ("lr", "num_steps", "augment", "mlp_divide_by_255")

@dataclass(frozen=True)
class QuickLengths:
    """The quick preset's training lengths on one embedded dataset (docs/table1.md, "Lengths")."""
    steps: int                # classifier.num_steps: Vanilla, LfF + BE, every stage 4 (and DisEnt without its own)
    lff_steps: int            # LfF's own length where the baseline protocol gives one (baselines.lff_num_steps)
    committee_steps: int      # each BiasEnsemble committee model's
    committee_eval_every: int
    eval_every: int           # evaluations: as often as the learning curves need, no more
    disent_steps: int = 0     # DisEnt's and DisEnt + BE's own length (baselines.disent_num_steps); 0: steps
    # DisEnt's curriculum start is scaled by its length over the reference length; its lr decay too, or
    # (False) it stays the reference's distance after the curriculum
    disent_decay_scaled: bool = True
    checkpoint_every: int = 500
    log_every: int = 10


# Colored Digits: 1/50 of every reference length (LfF 23.5k -> 470, DisEnt's curriculum and decay 10k ->
# 200, which follow the classifier's length in the references; the committee 200 steps, evaluated every
# 100), the budget of its 20-minute table.
# Colored MNIST 5k: from its learning curves, cut to the 30-minute budget (docs/table1.md, "Lengths"):
# Vanilla, LfF + BE and the stage-4 rows 2,500, on the first plateau of Vanilla's and LfF + BE's curves
# (both creep up again after 15,000 steps); LfF 5,000, within a point of where its curve flattens (6,000);
# DisEnt 10,000 with its curriculum from step 2,000 (10,000 x 10,000 / 50,000) and no lr decay within the
# run (the references decay 10,000 steps after the curriculum; decayed at the scaled 2,000 its curve stays
# at Vanilla's level); the committee 250 steps, evaluated every 125 (the references' 1,000 / 500, scaled).
QUICK_LENGTHS = {
    "colored_digits": QuickLengths(steps=1_000, lff_steps=470, committee_steps=200, committee_eval_every=100,
                                   eval_every=50),
    "colored_mnist_5k": QuickLengths(steps=2_500, lff_steps=5_000, committee_steps=250, committee_eval_every=125,
                                     eval_every=500, disent_steps=10_000, disent_decay_scaled=False),
}


def quick_lengths(dataset: str) -> QuickLengths:
    """The quick lengths of `dataset` (one without its own: the main job's dataset's)."""
    return QUICK_LENGTHS.get(dataset, QUICK_LENGTHS[QUICK_DATASET])


def apply_baseline_protocol(cfg: ExperimentConfig, protocol: str) -> ExperimentConfig:
    """Set `protocol`'s BASELINE_PROTOCOLS fields for cfg's dataset and ratio (in place), on top of
    the dataset's classifier and baselines presets; then the quick lengths on a quick preset."""
    from .data.registry import get_dataset_spec, normalize_ratio

    OneOf(tuple(BASELINE_PROTOCOLS)).check("baselines.protocol", protocol)
    dataset = cfg.data.dataset
    ratio = normalize_ratio(get_dataset_spec(dataset), cfg.data.ratio)
    base = _classifier_preset(dataset)
    cfg.classifier = dataclasses.replace(cfg.classifier, **{name: getattr(base, name) for name in CLASSIFIER_REGIME})
    cfg.baselines = _baselines_preset(dataset, ratio)
    for dotted, value in BASELINE_PROTOCOLS[protocol].items():
        _set_field(cfg, dotted, _protocol_value("baselines.protocol", protocol, dotted, value, dataset, ratio))
    cfg.baselines.protocol = protocol
    if cfg.quick_preset:
        quick = quick_lengths(dataset)
        own = quick.disent_steps if protocol == "reference" else 0  # uniform: every method at `steps`
        scale = (own or quick.steps) / cfg.classifier.num_steps
        b = cfg.baselines
        cfg.baselines = dataclasses.replace(
            b, lff_num_steps=quick.lff_steps if b.lff_num_steps else 0, disent_num_steps=own,
            curr_step=round(b.curr_step * scale),
            lr_decay_step=round(b.lr_decay_step * scale) if quick.disent_decay_scaled else b.lr_decay_step,
            committee_steps=quick.committee_steps, committee_eval_every=quick.committee_eval_every)
        cfg.classifier = dataclasses.replace(cfg.classifier, num_steps=quick.steps, eval_every=quick.eval_every,
                                             checkpoint_every=quick.checkpoint_every, log_every=quick.log_every)
    return cfg


def method_classifier(cfg: ExperimentConfig, method: str) -> ClassifierConfig:
    """The classifier settings `method` trains with: cfg.classifier, with LfF's own lr and length
    where the baseline protocol gives them (non-zero), and the DisEnt family's own length where a
    quick preset gives one."""
    if method == "lff" and (cfg.baselines.lff_lr or cfg.baselines.lff_num_steps):
        return dataclasses.replace(cfg.classifier, lr=cfg.baselines.lff_lr or cfg.classifier.lr,
                                   num_steps=cfg.baselines.lff_num_steps or cfg.classifier.num_steps)
    if method in ("disent", "disent_be") and cfg.baselines.disent_num_steps:
        return dataclasses.replace(cfg.classifier, num_steps=cfg.baselines.disent_num_steps)
    return cfg.classifier


def stage1_config(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    """The config whose stage 1 serves `method`: AmpliBias takes its own top-K per class
    (fastgan.k_per_class), every other method cfg.bias."""
    if method != "amplibias":
        return cfg
    return dataclasses.replace(cfg, bias=dataclasses.replace(cfg.bias, scope="per_class", k=cfg.fastgan.k_per_class))


def preset(dataset: str = "colored_digits", ratio: str = "1", quick: bool = False,
           protocol: str = "release", baselines: str = "reference") -> ExperimentConfig:
    """The settings for `dataset` under a DiffInject `protocol` (PROTOCOLS) and a `baselines`
    protocol (BASELINE_PROTOCOLS); `quick` is the CPU budget for an embedded dataset, on top of both."""
    from .data.registry import get_dataset_spec, normalize_ratio

    classifier = _classifier_preset(dataset)
    cfg = ExperimentConfig(data=DataConfig(dataset=dataset, ratio=str(ratio)),
                           bias=BiasConfig(classifier=dataclasses.replace(classifier)), classifier=classifier,
                           diffusion=_diffusion_preset(dataset), injection=_injection_preset(dataset),
                           stylegan2=_stylegan2_preset(dataset),
                           fastgan=_fastgan_preset(dataset, normalize_ratio(get_dataset_spec(dataset), str(ratio))))
    if quick:
        cfg.quick_preset = True
        cfg.bias.classifier = dataclasses.replace(classifier, num_steps=300, eval_every=50, checkpoint_every=300,
                                                  log_every=10)
        cfg.diffusion = dataclasses.replace(cfg.diffusion, **quick_diffusion(dataset))
        cfg.stylegan2 = dataclasses.replace(cfg.stylegan2, **QUICK_STYLEGAN2)
        cfg.fastgan = dataclasses.replace(cfg.fastgan, **QUICK_FASTGAN)
        for dotted, value in QUICK_GANS_BY_DATASET.get(dataset, {}).items():
            _set_field(cfg, dotted, value)
    apply_baseline_protocol(cfg, baselines)
    return apply_protocol(cfg, protocol)  # the quick layer of injection settings goes on top of it


# the StyleGAN2Config fields that only train A²'s source (a given source checkpoint makes them moot)
SOURCE_TRAINING = ("preset", "resize", "hflip", "batch_size", "num_steps", "lr", "r1_gamma", "r1_every", "pl_weight",
                   "pl_every", "style_mixing", "ema_half_life", "seed", "bf16")


def without_shipped_generators(cfg: ExperimentConfig) -> ExperimentConfig:
    """cfg with both generative baselines training their generators in the run (--retrain-generators)."""
    return dataclasses.replace(cfg, stylegan2=dataclasses.replace(cfg.stylegan2, source_checkpoint=""),
                               fastgan=dataclasses.replace(cfg.fastgan, init_checkpoint=""))


def check_shipped_generators(configs) -> None:
    """A config that starts A² from the shipped source must keep the quick preset's source-training
    fields: any other value would change nothing, so it is an error that says to retrain."""
    changed = []
    for cfg in configs:
        if cfg.stylegan2.source_checkpoint != "shipped":
            continue
        expected = preset(cfg.data.dataset, cfg.data.ratio, quick=True).stylegan2
        changed += [f"stylegan2.{name}={getattr(cfg.stylegan2, name)}" for name in SOURCE_TRAINING
                    if getattr(cfg.stylegan2, name) != getattr(expected, name)]
    if changed:
        raise ConfigError(f"A² starts from the shipped source StyleGAN2, so {', '.join(dict.fromkeys(changed))} would "
                          f"change nothing; add --retrain-generators to train the source with these settings")


def _coerce(text: str, kind: Any, key: str) -> Any:
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}.<field>=...")
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return lowered in ("1", "true", "yes")
        if kind is int:
            return int(float(text)) if float(text).is_integer() else int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"invalid value {text!r} for {key}; expected {kind.__name__}") from None


# Where inputs and outputs live (never what they are: no stage key reads them).
PATH_FIELDS = ("data.data_root", "data.cache_root", "run.storage_path")


def absolute_path(path: str | os.PathLike) -> str:
    """A local path made absolute against this process's working directory; a URI (s3://...)
    as it is. Ray Train workers run in their trial folder and Ray tasks in the folder Ray was
    started in, so a relative path means something else there."""
    text = os.fspath(path)
    return text if "://" in text else os.path.abspath(os.path.expanduser(text))


def resolve_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Make every PATH_FIELDS path of `cfg` absolute (in place), before it travels to workers."""
    for dotted in PATH_FIELDS:
        section, name = dotted.split(".")
        target = getattr(cfg, section)
        setattr(target, name, absolute_path(getattr(target, name)))
    return cfg


def absolute_args(args: Any, *names: str) -> Any:
    """The command-line path arguments `names` of `args` made absolute in place (lists item by
    item; None and URIs left alone; a Path stays a Path)."""
    def fix(value):
        return type(value)(absolute_path(value)) if isinstance(value, os.PathLike) else absolute_path(value)

    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, list):
            setattr(args, name, [fix(v) for v in value])
        elif value is not None:
            setattr(args, name, fix(value))
    return args


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply `a.b.c=value` overrides in place, with the field's declared type; then make the
    config's paths absolute (resolve_paths) and validate it. Every entry point makes its
    config through here. A `baselines.protocol=X` or `injection.protocol=X` override first sets
    X's fields (apply_baseline_protocol, apply_protocol), so the other overrides change them,
    whatever their order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"invalid override {item!r}; expected section.field=value")
    for field_name, apply in (("baselines.protocol", apply_baseline_protocol), ("injection.protocol", apply_protocol)):
        protocols = [item.split("=", 1)[1].strip() for item in overrides if item.split("=", 1)[0].strip() == field_name]
        if protocols:
            apply(cfg, protocols[-1])
    for item in overrides:
        key, value = item.split("=", 1)
        target = cfg
        parts = key.strip().split(".")
        for depth, name in enumerate(parts):
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"unknown config field {key!r}: {'.'.join(parts[:depth])} is a value, not a section")
            hints = get_type_hints(type(target))
            if name not in hints:
                where = ".".join(parts[:depth]) or "config"
                raise ConfigError(f"unknown config field {key!r}: {where} has "
                                  f"{', '.join(f.name for f in dataclasses.fields(target))}")
            if depth == len(parts) - 1:
                setattr(target, name, _coerce(value, hints[name], key))
            else:
                target = getattr(target, name)
    resolve_paths(cfg)
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Reject values that would fail later, naming the field: every field's type, finiteness and
    FIELD_RULES entry, then the rules that tie fields together. Normalises data.ratio."""
    from .data.registry import get_dataset_spec, normalize_ratio

    _check_section(cfg, "")
    cfg.data.ratio = normalize_ratio(get_dataset_spec(cfg.data.dataset), cfg.data.ratio)
    b = cfg.baselines
    if b.agreement > b.num_bias_models:
        raise ConfigError(f"baselines.agreement must be in [1, num_bias_models={b.num_bias_models}], got {b.agreement}")
    inj = cfg.injection
    check_inject_grid(inj, 0 if inj.calibrate_t_edit else inj.t_edit)
    if inj.conflict_ratio > 1:
        _warn_once(f"injection.conflict_ratio={inj.conflict_ratio:g} queues N_syn = round(conflict_ratio x |train|) "
                   f"= {inj.conflict_ratio:g} x the training split in synthetic pairs, more than the original "
                   f"samples (the paper uses 0.1 to 0.6; at most {MAX_CONFLICT_RATIO} is accepted)")


def check_inject_grid(cfg: InjectionConfig, t_edit: int) -> None:
    """ConfigError when injection.inject_grid leaves no injected generation step below t = 999
    (t = 999 is on every grid) where every-step injection would have some: the grid does not fit
    the generation grid (e.g. 50 at 20 generation steps)."""
    if not cfg.inject_grid:
        return
    from .inject.formulas import on_grid, timestep_grid

    generation = timestep_grid(cfg.generation_steps)
    every = [generation[i] for i in on_grid(generation, 0) if t_edit <= generation[i] < NUM_TIMESTEPS - 1]
    kept = [generation[i] for i in on_grid(generation, cfg.inject_grid) if t_edit <= generation[i] < NUM_TIMESTEPS - 1]
    if every and not kept:
        raise ConfigError(f"injection.inject_grid = {cfg.inject_grid} leaves no injected step below t = 999: none of "
                          f"the {cfg.generation_steps}-step generation grid's timesteps >= t_edit = {t_edit} lies on "
                          f"the {cfg.inject_grid}-step grid; use generation_steps whose grid holds it (e.g. "
                          f"{cfg.inject_grid} or 1000) or inject_grid=0 (every step)")


def _check_section(section: Any, prefix: str) -> None:
    hints = get_type_hints(type(section))
    rules = FIELD_RULES[type(section)]
    for f in dataclasses.fields(section):
        key, value = f"{prefix}{f.name}", getattr(section, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                raise ConfigError(f"{key} must be a {hints[f.name].__name__} section, got {value!r}")
            _check_section(value, key + ".")
            continue
        _check_type(key, value, hints[f.name])
        rules[f.name].check(key, value)


def _check_type(key: str, value: Any, kind: type) -> None:
    """bool fields hold bools, int fields ints (not bools), float fields finite numbers (ints
    too), str fields strings."""
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind):
        raise ConfigError(f"{key} must be {_KIND_NAMES[kind]}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Range:
    """low <= value <= high (an open end excludes the bound); `also` lists values allowed
    outside the range (e.g. -1 for "off"), `noun` names what is counted, `why` says what the
    bounds protect."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    noun: str = ""
    why: str = ""     # what the bounds protect, added to the error

    def contains(self, value: float) -> bool:
        if value in self.also:
            return True
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None and (self.low, self.low_open) in ((0, True), (1, False)):
            text = f"a positive {self.noun}" if self.noun else "positive"
        elif self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.also:
            text += f" (or {' or '.join(str(v) for v in self.also)} to disable)"
        return text

    def check(self, key: str, value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if not self.contains(value):
            raise ConfigError(f"{key} must be {self.describe()}, got {value}" + (f" ({self.why})" if self.why else ""))


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def check(self, key: str, value: Any) -> None:
        if value not in self.choices:
            names = ", ".join(self.choices[:-1]) + f" or {self.choices[-1]}"
            raise ConfigError(f"{key} must be {names}, got {value!r}")


@dataclass(frozen=True)
class Text:
    """Any non-empty string (a name or a path; output paths are checked by `preflight`)."""

    def check(self, key: str, value: Any) -> None:
        if not value.strip():
            raise ConfigError(f"{key} must not be empty")


@dataclass(frozen=True)
class Checked:
    """A value a function checks (a registry name, a parsed format); it raises ConfigError."""

    check_value: Callable[[str, Any], None]

    def check(self, key: str, value: Any) -> None:
        self.check_value(key, value)


@dataclass(frozen=True)
class Flag:
    def check(self, key: str, value: Any) -> None:
        pass  # the type check is all a bool needs


def _known_dataset(key: str, name: str) -> None:
    from .data.registry import get_dataset_spec

    try:
        get_dataset_spec(name)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _known_preset(key: str, name: str) -> None:
    from .diffusion.models import get_preset

    try:
        get_preset(name)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _known_gan_preset(family: str) -> Callable[[str, str], None]:
    def check(key: str, name: str) -> None:
        from .gan.presets import PRESETS

        if name not in PRESETS[family]:
            raise ConfigError(f"{key}: unknown {family} preset {name!r}; expected one of {', '.join(PRESETS[family])}")
    return check


def _diffaugment_policy(key: str, text: str) -> None:
    from .gan.diffaugment import POLICIES

    unknown = [p for p in (q.strip() for q in text.split(",")) if p and p not in POLICIES]
    if unknown:
        raise ConfigError(f"{key}: unknown DiffAugment policy {unknown[0]!r}; expected a comma-separated list of "
                          f"{', '.join(POLICIES)}")


def _gan_checkpoint(key: str, value: str) -> None:
    """"" (train in the run), "shipped" (gan/shipped.py, checked against the dataset when resolved) or a file."""
    if value and value != "shipped" and not Path(value).expanduser().is_file():
        raise ConfigError(f"{key}={value}: no such file; expected a diffinject GAN checkpoint, 'shipped' or empty "
                          f"(train in the run)")


def _train_data(key: str, value: str) -> None:
    if value == "train":
        return
    from .data.registry import get_dataset_spec, normalize_ratio

    dataset, sep, ratio = value.partition("@")
    if not sep:
        raise ConfigError(f"{key} must be 'train' or 'DATASET@RATIO', got {value!r}")
    try:
        normalize_ratio(get_dataset_spec(dataset), ratio)
    except ConfigError as exc:
        raise ConfigError(f"{key}={value}: {exc}") from None


POSITIVE = Range(0, low_open=True)
COUNT = Range(1)                      # an integer >= 1
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
SEED = Range(0, 2**32 - 1)           # numpy seeds are non-negative 32-bit numbers
NUM_TIMESTEPS = 1000                  # diffusion timesteps of every model (t in [0, 999])
TIMESTEP = Range(0, NUM_TIMESTEPS - 1)
DDIM_STEPS = Range(1, NUM_TIMESTEPS)
GRID_STEPS = Range(2, NUM_TIMESTEPS)  # a timestep grid from 0 to 999 has both ends

# N_syn = round(conflict_ratio x |train|) synthetic pairs (docs/design.md 2.3, item 9); the paper uses 0.1
# (CMNIST, Corrupted CIFAR-10) and 0.6 (BFFHQ, Dogs & Cats). Above 1 a set is larger than the
# training split it debiases (a warning); above MAX_CONFLICT_RATIO it is taken for a slip (50 meant as 0.5)
# and refused.
MAX_CONFLICT_RATIO = 10
CONFLICT_RATIO = Range(0, MAX_CONFLICT_RATIO, low_open=True,
                       why="it queues N_syn = round(conflict_ratio x |train|) synthetic pairs; the paper uses 0.1 "
                           "to 0.6")
_warned: set[str] = set()


def _warn_once(text: str) -> None:
    """One `warning:` line on stderr per process for each distinct text (a config is validated
    more than once)."""
    if text not in _warned:
        _warned.add(text)
        print(f"warning: {text}", file=sys.stderr, flush=True)


# What every config field may hold, in one table: validate() looks every field up here (a new
# field without an entry fails the test that walks all fields).
FIELD_RULES: dict[type, dict[str, Any]] = {
    DataConfig: {"dataset": Checked(_known_dataset), "ratio": Text(), "data_root": Text(), "cache_root": Text()},
    ClassifierConfig: {
        "arch": OneOf(("mlp", "resnet18")), "mlp_divide_by_255": Flag(), "num_steps": COUNT, "batch_size": COUNT,
        "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "augment": OneOf(("none", "crop_flip")), "normalize": Flag(),
        "resize": NON_NEGATIVE, "select": OneOf(("valid", "test", "last")), "eval_every": COUNT,
        "checkpoint_every": NON_NEGATIVE, "log_every": COUNT, "bf16": Flag(), "channels_last": Flag(),
    },
    BiasConfig: {"q": Range(0, 1, low_open=True), "k": Range(1, noun="number of samples"),
                 "scope": OneOf(("global", "per_class"))},
    BaselinesConfig: {
        "protocol": OneOf(tuple(BASELINE_PROTOCOLS)), "q": Range(0, 1, low_open=True),
        "ema_alpha": Range(0, 1, high_open=True), "lff_lr": NON_NEGATIVE, "lff_num_steps": NON_NEGATIVE,
        "disent_num_steps": NON_NEGATIVE,
        "lambda_dis_align": NON_NEGATIVE, "lambda_swap_align": NON_NEGATIVE, "lambda_swap": NON_NEGATIVE,
        "curr_step": NON_NEGATIVE, "disent_lr": NON_NEGATIVE, "lr_decay_step": NON_NEGATIVE,
        "lr_gamma": Range(0, 1, low_open=True), "num_bias_models": COUNT, "agreement": COUNT,
        "tau": Range(0, 1, low_open=True, high_open=True), "committee_steps": COUNT,
        "committee_select": OneOf(("valid", "last")), "committee_eval_every": COUNT, "committee_augment": Flag(),
        "a2_loss": OneOf(("ce", "gce")),
    },
    DiffusionConfig: {
        "preset": Checked(_known_preset), "train_data": Checked(_train_data), "resize": Flag(), "hflip": Flag(),
        "gamma": NON_NEGATIVE, "k": POSITIVE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "batch_size": COUNT,
        "num_steps": COUNT, "ema_decay": Range(0, 1, high_open=True), "grad_clip": NON_NEGATIVE, "bf16": Flag(),
        "log_every": COUNT, "checkpoint_every": COUNT, "sample_every": NON_NEGATIVE, "sample_images": COUNT,
        "sample_steps": DDIM_STEPS, "sample_eta": NON_NEGATIVE, "check_sync_every": NON_NEGATIVE, "seed": SEED,
        "channels_last": Flag(), "compile": OneOf(COMPILE_MODES), "fused_adam": Flag(), "keep_checkpoints": Flag(),
    },
    InjectionConfig: {
        "protocol": OneOf(tuple(PROTOCOLS)), "label_from": OneOf(("content", "original")), "gamma": FRACTION, "mode": OneOf(("local", "global")), "mask": Checked(lambda key, text: parse_mask(text)),
        "t_edit": TIMESTEP, "calibrate_t_edit": Flag(), "lpips_threshold": Range(0, 1, low_open=True, high_open=True),
        "calibration_images": COUNT, "t_boost": Range(0, NUM_TIMESTEPS - 1, also=(-1,)),
        "inversion_steps": GRID_STEPS, "generation_steps": GRID_STEPS, "inject_grid": Range(2, NUM_TIMESTEPS, also=(0,)),
        "boost_grid": Range(2, NUM_TIMESTEPS, also=(0,)), "dt_lambda": POSITIVE, "omega": NON_NEGATIVE,
        "conflict_ratio": CONFLICT_RATIO, "originals": OneOf(("non_topk", "aligned")), "batch_size": NON_NEGATIVE,
        "memory_fraction": Range(0, 1, low_open=True), "precision": OneOf(PRECISIONS),
        "compile": OneOf(COMPILE_MODES), "channels_last": Flag(), "attention": OneOf(ATTENTION),
        "noise": OneOf(NOISE),
    },
    StyleGAN2Config: {
        "preset": Checked(_known_gan_preset("stylegan2")), "source_checkpoint": Checked(_gan_checkpoint), "resize": Flag(), "hflip": Flag(), "batch_size": COUNT,
        "num_steps": COUNT, "lr": POSITIVE, "r1_gamma": NON_NEGATIVE, "r1_every": COUNT, "pl_weight": NON_NEGATIVE,
        "pl_every": COUNT, "style_mixing": FRACTION, "ema_half_life": NON_NEGATIVE, "seed": SEED,
        "adapt_steps": COUNT, "adapt_batch_size": COUNT, "adapt_lr": POSITIVE, "cdc_weight": NON_NEGATIVE,
        "cdc_batch_size": Range(3), "anchor_count": COUNT, "anchor_std": NON_NEGATIVE, "image_d_every": COUNT,
        "adapt_ema_half_life": NON_NEGATIVE, "project_steps": COUNT,
        "project_lr": POSITIVE, "noise_reg_weight": NON_NEGATIVE, "project_batch_size": COUNT,
        "decode_noise": OneOf(("random", "projected")),
        "distance": OneOf(("lpips_vgg", "mse")), "log_every": COUNT, "checkpoint_every": COUNT,
        "keep_checkpoints": Flag(), "sample_every": NON_NEGATIVE, "sample_images": COUNT, "bf16": Flag(),
    },
    FastGANConfig: {
        "preset": Checked(_known_gan_preset("fastgan")), "init_checkpoint": Checked(_gan_checkpoint), "k_per_class": COUNT, "batch_size": COUNT,
        "num_steps": COUNT, "lr": POSITIVE, "beta1": Range(0, 1, high_open=True), "beta2": Range(0, 1, high_open=True),
        "ema_decay": Range(0, 1, high_open=True), "policy": Checked(_diffaugment_policy), "hflip": Flag(),
        "distance": OneOf(("lpips_vgg", "mse")), "bf16": Flag(), "log_every": COUNT,
        "checkpoint_every": COUNT, "keep_checkpoints": Flag(), "sample_every": NON_NEGATIVE, "sample_images": COUNT,
    },
    RunConfig: {"seed": SEED, "num_workers": NON_NEGATIVE, "use_gpu": OneOf(("auto", "true", "false")),
                "max_failures": NON_NEGATIVE, "experiment": Text(), "storage_path": Text()},
    ExperimentConfig: {},
}


def check_options(args: Any, rules: dict[str, Range]) -> None:
    """Command-line values (argparse dests, one value or a list) against ranges, named as --option."""
    for dest, rule in rules.items():
        values = getattr(args, dest)
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                rule.check(f"--{dest.replace('_', '-')}", value)


def parse_mask(text: str) -> tuple[float, float, float, float]:
    """'top,left,bottom,right' fractions in [0, 1] with top < bottom and left < right."""
    try:
        top, left, bottom, right = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"injection.mask must be 'top,left,bottom,right' fractions, got {text!r}") from None
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ConfigError(f"injection.mask {text!r} must satisfy 0 <= top < bottom <= 1 and 0 <= left < right <= 1")
    return top, left, bottom, right


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{'classifier.lr': 0.001, ...}: the form logged as MLflow params."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(payload: dict[str, Any]) -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(**payload["data"]),
        bias=BiasConfig(**{**payload["bias"], "classifier": ClassifierConfig(**payload["bias"]["classifier"])}),
        classifier=ClassifierConfig(**payload["classifier"]),
        baselines=BaselinesConfig(**payload.get("baselines", {})),
        diffusion=DiffusionConfig(**payload.get("diffusion", {})),
        injection=InjectionConfig(**payload.get("injection", {})),
        stylegan2=StyleGAN2Config(**payload.get("stylegan2", {})),
        fastgan=FastGANConfig(**payload.get("fastgan", {})),
        run=RunConfig(**payload["run"]),
    )
