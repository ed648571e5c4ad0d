"""Building an experiment config: a dataset's presets under both protocols, with the quick layer
on top; and the checks of configs that start from shipped generators."""
from __future__ import annotations

import dataclasses

from diffinject.config.presets import (classifier_preset, diffusion_preset, fastgan_preset, injection_preset,
                                       stylegan2_preset)
from diffinject.config.protocols import apply_baseline_protocol, apply_protocol, set_field
from diffinject.config.quick import QUICK_FASTGAN, QUICK_GANS_BY_DATASET, QUICK_STYLEGAN2, quick_diffusion
from diffinject.config.schema import BiasConfig, DataConfig, ExperimentConfig
from diffinject.core.errors import ConfigError


def experiment_config(dataset: str = "colored_digits", ratio: str = "1", quick: bool = False,
           protocol: str = "release", baselines: str = "reference") -> ExperimentConfig:
    """The settings for `dataset` under a DiffInject `protocol` (PROTOCOLS) and a `baselines`
    protocol (BASELINE_PROTOCOLS); `quick` is the CPU budget for an embedded dataset, on top of both."""
    from diffinject.data.registry import get_dataset_spec, normalize_ratio

    classifier = classifier_preset(dataset)
    cfg = ExperimentConfig(data=DataConfig(dataset=dataset, ratio=str(ratio)),
                           bias=BiasConfig(classifier=dataclasses.replace(classifier)), classifier=classifier,
                           diffusion=diffusion_preset(dataset), injection=injection_preset(dataset),
                           stylegan2=stylegan2_preset(dataset),
                           fastgan=fastgan_preset(dataset, normalize_ratio(get_dataset_spec(dataset), str(ratio))))
    if quick:
        cfg.quick_preset = True
        cfg.bias.classifier = dataclasses.replace(classifier, num_steps=300, eval_every=50, checkpoint_every=300,
                                                  log_every=10)
        cfg.diffusion = dataclasses.replace(cfg.diffusion, **quick_diffusion(dataset))
        cfg.stylegan2 = dataclasses.replace(cfg.stylegan2, **QUICK_STYLEGAN2)
        cfg.fastgan = dataclasses.replace(cfg.fastgan, **QUICK_FASTGAN)
        for dotted, value in QUICK_GANS_BY_DATASET.get(dataset, {}).items():
            set_field(cfg, dotted, value)
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
        expected = experiment_config(cfg.data.dataset, cfg.data.ratio, quick=True).stylegan2
        changed += [f"stylegan2.{name}={getattr(cfg.stylegan2, name)}" for name in SOURCE_TRAINING
                    if getattr(cfg.stylegan2, name) != getattr(expected, name)]
    if changed:
        raise ConfigError(f"A² starts from the shipped source StyleGAN2, so {', '.join(dict.fromkeys(changed))} would "
                          f"change nothing; add --retrain-generators to train the source with these settings")

