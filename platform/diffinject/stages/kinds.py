"""The registry of stage-3 kinds: how a method's synthetic set is made (Method.synthesis names one).

Each kind names the generator stages below its set (each trained by one Ray Train job and cached
as one artifact stage), the `stage.algorithm` its set's run is tagged with, and the config fields
that draw its set (part of the set's key). DiffInject's `h_space_injection` has no generator stage
of its own: its set is injected from stage 1's top-K with stage 2's diffusion model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from diffinject.config.schema import ExperimentConfig
from diffinject.core.errors import ConfigError

GENERATOR_FILE = "generator.pt"  # what a generator job makes: a GAN checkpoint (nets.gan.checkpoint)


@dataclass(frozen=True)
class GeneratorJob:
    """A generator trained by a Ray Train job (cluster.train_jobs) and cached as `stage`.

    Its file goes by `role` among the files of the set it serves (and among the inputs of the
    generators trained after it); `reads` names the inputs its training takes: "topk" (stage 1's
    top-K folder), an earlier generator's role, or "init" (a given starting point, only when
    fastgan.init_checkpoint names one)."""
    job: str
    stage: str        # the artifact cache's stage (and MLflow run name prefix)
    algorithm: str    # the run's `stage.algorithm` tag
    role: str
    reads: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage3Kind:
    name: str
    generators: tuple[GeneratorJob, ...]  # trained before the set, in this order
    algorithm: str                          # the set's run's `stage.algorithm` tag
    drawn: Callable[[ExperimentConfig], dict]  # the fields that draw the set from its inputs


# A²'s projection of the originals (StyleGAN2Config fields read when its set is drawn)
STYLEGAN2_PROJECT = ("project_steps", "project_lr", "noise_reg_weight", "project_batch_size", "distance",
                     "decode_noise")

GENERATOR_JOBS = {job.job: job for job in (
    # A²'s source StyleGAN2, and its CDC adaptation to the top-K
    GeneratorJob("stylegan2_source", "stylegan2_source", "stylegan2", "source"),
    GeneratorJob("stylegan2_adapt", "stylegan2_adapted", "cdc_adaptation", "adapted", ("topk", "source")),
    # AmpliBias's per-class FastGANs, and their shipped starting points (trained on their own)
    GeneratorJob("fastgan", "fastgan_classes", "fastgan", "classes", ("topk", "init")),
    GeneratorJob("fastgan_init", "fastgan_init", "fastgan_starting_points", "init"),
)}


def _a2_drawn(cfg: ExperimentConfig) -> dict:
    projection = {name: getattr(cfg.stylegan2, name) for name in STYLEGAN2_PROJECT}
    return {"conflict_ratio": cfg.injection.conflict_ratio, "originals": cfg.injection.originals, **projection}


STAGE3_KINDS = {kind.name: kind for kind in (
    # the whole injection section draws DiffInject's set (its key holds cfg.injection itself)
    Stage3Kind("h_space_injection", (), "h_space_injection", lambda cfg: {}),
    Stage3Kind("stylegan2_adapt", (GENERATOR_JOBS["stylegan2_source"], GENERATOR_JOBS["stylegan2_adapt"]),
               "a2_projection", _a2_drawn),
    Stage3Kind("fastgan", (GENERATOR_JOBS["fastgan"],), "fastgan_sampling",
               lambda cfg: {"conflict_ratio": cfg.injection.conflict_ratio}),
)}


def get_stage3_kind(name: str) -> Stage3Kind:
    try:
        return STAGE3_KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown stage-3 kind {name!r}; expected one of {', '.join(STAGE3_KINDS)}") from None
