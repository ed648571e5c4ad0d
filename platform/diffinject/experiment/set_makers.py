"""What differs between the stage-3 kinds around the one stage-3 run (stage_runs.run_synthetic_set):
how a kind draws its manifest, makes its set on Ray Data actors, and shows it in a grid.

DiffInject's h-space injection (InjectionSet) and the GAN kinds A² (A2Set) and AmpliBias
(AmpliBiasSet) each name the stage-3 kind they make (stages.kinds); GAN_SETS finds a GAN kind's."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffinject.config.schema import ExperimentConfig
from diffinject.core.errors import CheckpointError
from diffinject.core.plots import triptych
from diffinject.nets.diffusion.models import get_preset
from diffinject.tracking.client import Tracker


def check_checkpoint_resolution(cfg: ExperimentConfig, checkpoint_preset: str, checkpoint: Path) -> None:
    """A diffusion checkpoint serves a dataset only at the resolution its diffusion preset says."""
    want, have = get_preset(cfg.diffusion.preset).image_size, get_preset(checkpoint_preset).image_size
    if want != have:
        raise CheckpointError(f"{checkpoint} is a {have}x{have} model ({checkpoint_preset}), but {cfg.data.dataset} "
                              f"uses {want}x{want} diffusion models (diffusion.preset={cfg.diffusion.preset})")


def resolve_t_edit(cfg: ExperimentConfig, checkpoint: Path, images, tracker: Tracker, run_id: str, folder: Path,
                   random_lpips_backbone: bool = False) -> int:
    """The fixed injection.t_edit, or the LPIPS calibration's choice (curve logged as a plot)."""
    if not cfg.injection.calibrate_t_edit:
        return cfg.injection.t_edit
    import torch

    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
    from diffinject.nets.perceptual import load_lpips
    from diffinject.stages.inject import InjectionEngine
    from diffinject.stages.inject.calibrate import calibrate_t_edit

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    engine = InjectionEngine(load_unet_checkpoint(checkpoint)[0], cfg.injection, contents=None, device=device)
    lpips_model = load_lpips(random_backbone=random_lpips_backbone)
    t_edit, timesteps, curve = calibrate_t_edit(engine, images, cfg.injection, lpips_model,
                                                plot_path=folder / "t_edit_calibration.png")
    for t, value in zip(timesteps, curve):
        tracker.log_metrics(run_id, {"calibration_lpips": float(value)}, step=int(t))
    tracker.log_artifact(run_id, folder / "t_edit_calibration.png")
    return t_edit


@dataclass
class InjectionSet:
    """DiffInject's set: N_syn pairs (original, top-K content) injected in h-space with the
    diffusion `checkpoint`; t_edit fixed or calibrated by LPIPS (paper App. B)."""
    checkpoint: Path
    random_lpips_backbone: bool = False
    kind: str = "h_space_injection"
    seconds_metric: str = "injection_seconds"
    t_edit: int = field(default=0, init=False)

    def run_name(self, label: str) -> str:
        return f"stage3 {label}"

    def folder_name(self, cfg: ExperimentConfig, run_id: str) -> str:
        return f"{cfg.data.dataset}-{cfg.data.ratio}-s{cfg.run.seed}-{run_id[:8]}"

    def check(self, cfg: ExperimentConfig) -> None:
        from diffinject.nets.diffusion.checkpoint import checkpoint_meta

        check_checkpoint_resolution(cfg, checkpoint_meta(self.checkpoint)["preset"], self.checkpoint)

    def manifest(self, cfg: ExperimentConfig, train, topk: dict):
        from diffinject.stages.inject.manifest import build_manifest

        return build_manifest(len(train), topk["indices"], train.labels, train.biases, cfg.injection.conflict_ratio,
                              cfg.injection.originals, cfg.run.seed)

    def make(self, cfg: ExperimentConfig, manifest, train, topk: dict, out_dir: Path, tracker: Tracker, run_id: str,
             folder: Path) -> tuple[dict, float]:
        """Make the set in `out_dir`: its own metrics, and the seconds the Ray job took."""
        from diffinject.cluster.inject_job import run_injection_job

        self.t_edit = resolve_t_edit(cfg, self.checkpoint, train.images[:cfg.injection.calibration_images], tracker,
                                     run_id, folder, self.random_lpips_backbone)
        started = time.perf_counter()
        run_injection_job(manifest, train.images, train.ids, train.labels, train.biases, topk["images"],
                          np.asarray(topk["ids"], dtype=object), np.asarray(topk["labels"]),
                          train.biases[topk["indices"]], self.checkpoint, cfg.injection, out_dir, t_edit=self.t_edit,
                          use_gpu=cfg.run.use_gpu)
        return {"t_edit": self.t_edit}, time.perf_counter() - started

    def grid(self, path: Path, cfg: ExperimentConfig, manifest, train, topk: dict, synthetic) -> Path:
        """The paper's Fig. 2 triptych: original | content | injected."""
        shown = min(10, len(synthetic))
        rows = manifest.slice(0, shown).to_pydict()
        return triptych(path, train.images[rows["original_index"]], topk["images"][rows["content_index"]],
                        synthetic.images[:shown], f"{cfg.data.dataset} @ {cfg.data.ratio}%: gamma "
                        f"{cfg.injection.gamma}, t_edit {self.t_edit}, {cfg.injection.mode}",
                        [f"y={y}" for y in synthetic.labels[:shown]])


@dataclass
class GanSet(ABC):
    """What the GAN kinds' sets share: made on Ray Data actors from the kind's generator files
    (`checkpoints`, by role: stages.kinds.GeneratorJob.role)."""
    checkpoints: dict[str, Path]
    random_lpips_backbone: bool = False
    seconds_metric: str = "synthesis_seconds"
    kind = ""  # the stage-3 kind (stages.kinds) a subclass makes

    def run_name(self, label: str) -> str:
        return f"stage3 {self.kind} {label}"

    def folder_name(self, cfg: ExperimentConfig, run_id: str) -> str:
        return f"{self.kind}-{cfg.data.dataset}-{cfg.data.ratio}-s{cfg.run.seed}-{run_id[:8]}"

    def check(self, cfg: ExperimentConfig) -> None:
        pass  # the generator files were checked when their stages loaded them

    @abstractmethod
    def section(self, cfg: ExperimentConfig) -> tuple[object, int]:
        """The kind's config section, which draws the set, and the actors' batch size."""

    def make(self, cfg: ExperimentConfig, manifest, train, topk: dict, out_dir: Path, tracker: Tracker, run_id: str,
             folder: Path) -> tuple[dict, float]:
        from diffinject.cluster.synthesis_job import run_gan_synthesis_job

        section, batch = self.section(cfg)
        started = time.perf_counter()
        run_gan_synthesis_job(self.kind, manifest, self.checkpoints, section, train.images, train.ids, out_dir, batch,
                              use_gpu=cfg.run.use_gpu, random_lpips_backbone=self.random_lpips_backbone)
        return {}, time.perf_counter() - started


@dataclass
class A2Set(GanSet):
    """A²'s set: each original projected into the source StyleGAN2 and decoded by the adapted one."""
    kind = "stylegan2_adapt"

    def section(self, cfg: ExperimentConfig) -> tuple[object, int]:
        return cfg.stylegan2, cfg.stylegan2.project_batch_size

    def manifest(self, cfg: ExperimentConfig, train, topk: dict):
        from diffinject.stages.synthesis.sets import projection_manifest

        return projection_manifest(train.labels, topk["indices"], train.biases, cfg.injection.conflict_ratio,
                                   cfg.injection.originals, cfg.run.seed)

    def grid(self, path: Path, cfg: ExperimentConfig, manifest, train, topk: dict, synthetic, shown: int = 10) -> Path:
        """original | a top-K image of the original's class (the domain the generator was adapted
        to) | its A² image."""
        labels = np.asarray(topk["labels"])
        rows = manifest.slice(0, min(shown, manifest.num_rows)).to_pydict()
        same_class = [np.flatnonzero(labels == y) for y in rows["label"]]
        target = np.stack([topk["images"][idx[0] if len(idx) else 0] for idx in same_class])
        return triptych(path, train.images[rows["original_index"]], target, synthetic.images[:len(target)],
                        f"A² on {cfg.data.dataset} @ {cfg.data.ratio}%: projected into the source generator, "
                        f"decoded by the adapted one", [f"y={y}" for y in rows["label"]],
                        ("original", "top-K (same class)", "A²"))


@dataclass
class AmpliBiasSet(GanSet):
    """AmpliBias's set: images sampled from each class's FastGAN."""
    kind = "fastgan"

    def section(self, cfg: ExperimentConfig) -> tuple[object, int]:
        return cfg.fastgan, 256

    def manifest(self, cfg: ExperimentConfig, train, topk: dict):
        from diffinject.stages.synthesis.sets import class_manifest

        return class_manifest(topk["labels"], len(train), cfg.injection.conflict_ratio, cfg.run.seed)

    def grid(self, path: Path, cfg: ExperimentConfig, manifest, train, topk: dict, synthetic, shown: int = 10) -> Path:
        """One column per class: two top-K images of the class (its FastGAN's training data) | a
        generated image."""
        labels = np.asarray(topk["labels"])
        classes = [c for c in np.unique(labels) if (synthetic.labels == c).any()][:shown]
        first = [np.flatnonzero(labels == c) for c in classes]
        made = [int(np.flatnonzero(synthetic.labels == c)[0]) for c in classes]
        return triptych(path, topk["images"][[idx[0] for idx in first]], topk["images"][[idx[-1] for idx in first]],
                        synthetic.images[made],
                        f"AmpliBias on {cfg.data.dataset} @ {cfg.data.ratio}%: one FastGAN per class on its "
                        f"top-K images",
                        [f"class {c}" for c in classes], ("top-K", "top-K", "FastGAN"))


GAN_SETS = {maker.kind: maker for maker in (A2Set, AmpliBiasSet)}  # a GAN kind's set maker, by stage-3 kind
