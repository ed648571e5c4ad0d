"""The key of every stage a cell builds: what goes into it (its material), read from the config,
the keys of the stages below, the prepared dataset's fingerprint and the numerics of the device it
runs on (cells.py's docstring lists each stage's material). One method per stage; a stage-3 set's
material comes from its kind (stages.kinds)."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from diffinject.cluster.session import resolve_use_gpu
from diffinject.config.schema import ExperimentConfig, to_dict
from diffinject.core.integrity import file_digest
from diffinject.core.numerics import injection_numerics, synthesis_numerics, training_numerics, training_on_gpu
from diffinject.data.parquet import conversion_fingerprint
from diffinject.experiment.cache import artifact_key
from diffinject.experiment.run_context import dataset_folder, diffusion_data, diffusion_training_data
from diffinject.methods import get_method, stage1_config
from diffinject.stages.kinds import STYLEGAN2_PROJECT, get_stage3_kind
from diffinject.stages.quality.oracles import QualityConfig

# DiffusionConfig fields that change what is logged, never the weights
DIFFUSION_LOGGING = ("log_every", "checkpoint_every", "sample_every", "sample_images", "sample_steps",
                     "sample_eta", "check_sync_every", "keep_checkpoints")
# the GAN sections' fields that change what is logged, never the weights
GAN_LOGGING = ("log_every", "checkpoint_every", "keep_checkpoints", "sample_every", "sample_images")
# StyleGAN2Config fields by the A² stage that reads them (the rest train the source generator)
# (the adaptation also reads the regularisers and style mixing: the source's key holds them)
STYLEGAN2_ADAPT = ("adapt_steps", "adapt_batch_size", "adapt_lr", "cdc_weight", "cdc_batch_size", "anchor_count",
                   "anchor_std", "image_d_every", "adapt_ema_half_life")


@functools.lru_cache(maxsize=16)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    """SHA-256 of a given checkpoint file (diffusion or GAN), once per version of it (every key of a cell reads it)."""
    return file_digest(path)


def given_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(path, stat.st_size, stat.st_mtime_ns)


def given_source(cfg: ExperimentConfig) -> Path | None:
    """The verified file stylegan2.source_checkpoint names, or None (train the source in the run)."""
    from diffinject.experiment.shipped_gans import resolve_gan_checkpoint

    return resolve_gan_checkpoint(cfg.stylegan2.source_checkpoint, cfg.data.dataset, "stylegan2_source",
                                  "stylegan2.source_checkpoint")


def given_fastgan_init(cfg: ExperimentConfig) -> Path | None:
    """The verified file fastgan.init_checkpoint names, or None (every class's FastGAN from scratch)."""
    from diffinject.experiment.shipped_gans import resolve_gan_checkpoint

    return resolve_gan_checkpoint(cfg.fastgan.init_checkpoint, cfg.data.dataset, "fastgan_init",
                                  "fastgan.init_checkpoint")


def _fields(section, names=None, drop=()) -> dict:
    values = to_dict(section)
    return {k: v for k, v in values.items() if (names is None or k in names) and k not in drop}


def cuda_here() -> bool:
    """Whether this process sees a GPU: where run.num_workers=0 trainings and the t_edit
    calibration run."""
    import torch

    return torch.cuda.is_available()


class StageKeys:
    """The key material of each stage, for a runner that holds `checkpoints` (dataset -> a given
    diffusion checkpoint) and resolves run.use_gpu against the cluster once per value.

    Keys read data only through `data_fingerprint`, one method per stage builds its material."""

    checkpoints: dict[str, str]
    _cluster_gpus: dict[str, bool]

    # ---- the data a key names -----------------------------------------------------------
    def data_fingerprint(self, cfg: ExperimentConfig, diffusion: bool = False) -> str:
        """The content fingerprint of the Parquet conversion of cfg's dataset at its ratio (with
        `diffusion`: of stage 2's training data, diffusion.train_data), the one place keys read data
        from. The conversion is made on first use; after that this only checks it against the data
        (its files' paths, sizes and mtimes, and their content when those changed), so a key follows
        the data's content, wherever it lies, even while a runner lives."""
        return conversion_fingerprint(diffusion_training_data(cfg)[2] if diffusion else dataset_folder(cfg))

    # ---- key material ------------------------------------------------------------------
    def stage1_material(self, cfg: ExperimentConfig) -> dict:
        return {"data": self.data_fingerprint(cfg), "bias": to_dict(cfg.bias), "seed": cfg.run.seed,
                "numerics": self._training_numerics(cfg, cfg.bias.classifier.bf16)}

    def stage2_material(self, cfg: ExperimentConfig) -> dict:
        given = self.checkpoints.get(cfg.data.dataset)
        if given:
            return {"checkpoint_sha256": given_digest(Path(given)), "preset": cfg.diffusion.preset}
        dataset, ratio = diffusion_data(cfg)
        settings = {k: v for k, v in to_dict(cfg.diffusion).items() if k not in DIFFUSION_LOGGING}
        return {"data": self.data_fingerprint(cfg, diffusion=True), "dataset": dataset, "ratio": ratio,
                "diffusion": settings,
                "numerics": self._training_numerics(cfg, cfg.diffusion.bf16)}

    def stylegan2_source_material(self, cfg: ExperimentConfig) -> dict:
        given = given_source(cfg)
        if given is not None:
            return {"checkpoint_sha256": given_digest(given), "preset": cfg.stylegan2.preset}
        return {"data": self.data_fingerprint(cfg), "dataset": cfg.data.dataset, "ratio": cfg.data.ratio,
                "stylegan2": _fields(cfg.stylegan2, drop=GAN_LOGGING + STYLEGAN2_ADAPT + STYLEGAN2_PROJECT
                                     + ("source_checkpoint",)),
                "numerics": self._training_numerics(cfg, cfg.stylegan2.bf16)}

    def stylegan2_adapted_material(self, cfg: ExperimentConfig) -> dict:
        return {"stage1": artifact_key("stage1", self.stage1_material(cfg)),
                "source": artifact_key("stylegan2_source", self.stylegan2_source_material(cfg)),
                "adapt": _fields(cfg.stylegan2, STYLEGAN2_ADAPT), "seed": cfg.run.seed,
                "numerics": self._training_numerics(cfg, cfg.stylegan2.bf16)}

    def fastgan_material(self, cfg: ExperimentConfig) -> dict:
        cfg = stage1_config(cfg, "amplibias")
        init = given_fastgan_init(cfg)
        return {"stage1": artifact_key("stage1", self.stage1_material(cfg)),
                "fastgan": _fields(cfg.fastgan, drop=GAN_LOGGING + ("k_per_class", "init_checkpoint")),
                "init_sha256": given_digest(init) if init is not None else "", "seed": cfg.run.seed,
                "numerics": self._training_numerics(cfg, cfg.fastgan.bf16)}

    def stage3_material(self, cfg: ExperimentConfig, method: str = "diffinject") -> dict:
        kind = get_stage3_kind(get_method(method).synthesis)
        if not kind.generators:  # h-space injection: from stage 1's top-K with stage 2's model
            return {"stage1": artifact_key("stage1", self.stage1_material(cfg)),
                    "stage2": artifact_key("stage2", self.stage2_material(cfg)),
                    "data": self.data_fingerprint(cfg), "injection": to_dict(cfg.injection), "seed": cfg.run.seed,
                    "numerics": self._injection_numerics(cfg)}
        inputs = {job.stage: artifact_key(job.stage, self.generator_material(job.job, cfg)) for job in kind.generators}
        return {"kind": kind.name, **inputs,
                "stage1": artifact_key("stage1", self.stage1_material(stage1_config(cfg, method))),
                "data": self.data_fingerprint(cfg), "synthesis": kind.drawn(cfg), "seed": cfg.run.seed,
                "numerics": synthesis_numerics(self._cluster_gpus_for(cfg))}

    def generator_material(self, job: str, cfg: ExperimentConfig) -> dict:
        """The material of a GAN job's generator (a stages.kinds.GENERATOR_JOBS job a stage-3 kind trains)."""
        return {"stylegan2_source": self.stylegan2_source_material, "stylegan2_adapt": self.stylegan2_adapted_material,
                "fastgan": self.fastgan_material}[job](cfg)

    def oracle_material(self, cfg: ExperimentConfig) -> dict:
        return {"data": self.data_fingerprint(cfg), "quality": dataclasses.asdict(QualityConfig()), "seed": 0}

    def cell_material(self, cfg: ExperimentConfig, method: str) -> dict:
        material = {"method": method, "data": self.data_fingerprint(cfg), "classifier": to_dict(cfg.classifier),
                    "baselines": to_dict(cfg.baselines), "seed": cfg.run.seed,
                    "numerics": self._training_numerics(cfg, cfg.classifier.bf16)}
        if get_method(method).needs_synthetic:
            material["stage3"] = artifact_key("stage3", self.stage3_material(cfg, method))
        return material

    # ---- the device each stage runs on, and so its numerics (numerics.py) ---------------
    def _cluster_gpus_for(self, cfg: ExperimentConfig) -> bool:
        """run.use_gpu resolved against the Ray cluster, as the jobs resolve it (Ray Data
        actors run there; once per value, so that every key of this runner agrees)."""
        if cfg.run.use_gpu not in self._cluster_gpus:
            self._cluster_gpus[cfg.run.use_gpu] = resolve_use_gpu(cfg.run.use_gpu)
        return self._cluster_gpus[cfg.run.use_gpu]

    def _training_numerics(self, cfg: ExperimentConfig, bf16: bool) -> dict:
        """The numerics of a Ray Train job of `cfg` whose bf16 flag is `bf16`."""
        gpus = self._cluster_gpus_for(cfg)
        return training_numerics(bf16, training_on_gpu(gpus, cfg.run.num_workers, gpus and cuda_here()))

    def _injection_numerics(self, cfg: ExperimentConfig) -> dict:
        """The numerics of the injection actors, and of the t_edit calibration (in this process)
        when injection.calibrate_t_edit picks t_edit."""
        numerics = injection_numerics(cfg.injection.precision, self._cluster_gpus_for(cfg))
        if cfg.injection.calibrate_t_edit:
            numerics["calibration"] = injection_numerics(cfg.injection.precision, cuda_here())
        return numerics

