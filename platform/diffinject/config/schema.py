"""The typed experiment config: one dataclass per section, and its serialisation (flattened
MLflow params, dicts). Presets fill it in (config.presets, config.builder); config.validation
checks it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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

    `protocol` names the BASELINE_PROTOCOLS row experiment_config() filled in: `reference` trains each
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

    preset: str = "adm_32"            # U-Net preset (diffinject.nets.diffusion.PRESETS)
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

    protocol: str = "release"         # release | paper: whose PROTOCOLS fields experiment_config() filled in
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
    # Speed levers (diffinject.core.accel; the first value of each is the eager reference path):
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
    source_checkpoint: str = ""       # "": train the source in the run | "shipped" (experiment/shipped_gans.py) | a GAN file
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
