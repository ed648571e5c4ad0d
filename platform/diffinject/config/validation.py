"""Validation of a whole config: every field's type and rule (FIELD_RULES, one table), then the
rules that tie fields together."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, get_type_hints

from diffinject.config.protocols import BASELINE_PROTOCOLS, PROTOCOLS
from diffinject.config.rules import (CONFLICT_RATIO, COUNT, Checked, DDIM_STEPS, FRACTION, Flag, GRID_STEPS,
                                     MAX_CONFLICT_RATIO, NON_NEGATIVE, NUM_TIMESTEPS, OneOf, POSITIVE, Range, SEED,
                                     TIMESTEP, Text, diffaugment_policy, gan_checkpoint, known_dataset,
                                     known_gan_preset, known_preset, parse_mask, train_data, warn_once)
from diffinject.config.schema import (BaselinesConfig, BiasConfig, ClassifierConfig, DataConfig, DiffusionConfig,
                                      ExperimentConfig, FastGANConfig, InjectionConfig, RunConfig, StyleGAN2Config)
from diffinject.core.errors import ConfigError
from diffinject.core.vocabulary import ATTENTION, COMPILE_MODES, NOISE, PRECISIONS


def validate(cfg: ExperimentConfig) -> None:
    """Reject values that would fail later, naming the field: every field's type, finiteness and
    FIELD_RULES entry, then the rules that tie fields together. Normalises data.ratio."""
    from diffinject.data.registry import get_dataset_spec, normalize_ratio

    _check_section(cfg, "")
    cfg.data.ratio = normalize_ratio(get_dataset_spec(cfg.data.dataset), cfg.data.ratio)
    b = cfg.baselines
    if b.agreement > b.num_bias_models:
        raise ConfigError(f"baselines.agreement must be in [1, num_bias_models={b.num_bias_models}], got {b.agreement}")
    inj = cfg.injection
    check_inject_grid(inj, 0 if inj.calibrate_t_edit else inj.t_edit)
    if inj.conflict_ratio > 1:
        warn_once(f"injection.conflict_ratio={inj.conflict_ratio:g} queues N_syn = round(conflict_ratio x |train|) "
                   f"= {inj.conflict_ratio:g} x the training split in synthetic pairs, more than the original "
                   f"samples (the paper uses 0.1 to 0.6; at most {MAX_CONFLICT_RATIO} is accepted)")


def check_inject_grid(cfg: InjectionConfig, t_edit: int) -> None:
    """ConfigError when injection.inject_grid leaves no injected generation step below t = 999
    (t = 999 is on every grid) where every-step injection would have some: the grid does not fit
    the generation grid (e.g. 50 at 20 generation steps)."""
    if not cfg.inject_grid:
        return
    from diffinject.nets.injection import on_grid, timestep_grid

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


# What every config field may hold, in one table: validate() looks every field up here (a new
# field without an entry fails the test that walks all fields).
FIELD_RULES: dict[type, dict[str, Any]] = {
    DataConfig: {"dataset": Checked(known_dataset), "ratio": Text(), "data_root": Text(), "cache_root": Text()},
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
        "preset": Checked(known_preset), "train_data": Checked(train_data), "resize": Flag(), "hflip": Flag(),
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
        "preset": Checked(known_gan_preset("stylegan2")), "source_checkpoint": Checked(gan_checkpoint), "resize": Flag(), "hflip": Flag(), "batch_size": COUNT,
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
        "preset": Checked(known_gan_preset("fastgan")), "init_checkpoint": Checked(gan_checkpoint), "k_per_class": COUNT, "batch_size": COUNT,
        "num_steps": COUNT, "lr": POSITIVE, "beta1": Range(0, 1, high_open=True), "beta2": Range(0, 1, high_open=True),
        "ema_decay": Range(0, 1, high_open=True), "policy": Checked(diffaugment_policy), "hflip": Flag(),
        "distance": OneOf(("lpips_vgg", "mse")), "bf16": Flag(), "log_every": COUNT,
        "checkpoint_every": COUNT, "keep_checkpoints": Flag(), "sample_every": NON_NEGATIVE, "sample_images": COUNT,
    },
    RunConfig: {"seed": SEED, "num_workers": NON_NEGATIVE, "use_gpu": OneOf(("auto", "true", "false")),
                "max_failures": NON_NEGATIVE, "experiment": Text(), "storage_path": Text()},
    ExperimentConfig: {},
}


