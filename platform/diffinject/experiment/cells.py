"""Table cells on the artifact cache: what a (dataset, ratio, method, seed) cell needs, each
stage's key, and building or reusing every stage (docs/design.md 2 and 5). Knows nothing of Ray
scheduling; `parallel_cells` runs many cells at once.

Key material of each stage (nothing else in the config changes its output):

    stage1  dataset fingerprint, cfg.bias, seed
    stage2  fingerprint of its training data and cfg.diffusion (minus logging and sample-grid
            fields), or the SHA-256 of a given checkpoint file and the preset it is read as
    stage3  the stage-1 and stage-2 keys, dataset fingerprint, cfg.injection, seed (DiffInject's
            h-space injection); for the GAN kinds (A², AmpliBias) the keys of the generator
            stages below, dataset fingerprint, the kind, the fields that draw the set
            (injection.conflict_ratio, and for A² injection.originals and the projection
            fields of cfg.stylegan2), seed
    stylegan2_source   A²'s source generator: fingerprint of the training data and cfg.stylegan2's
            source-training fields (its own seed: one per dataset serves every seed)
    stylegan2_adapted  its CDC adaptation: the stage-1 and source keys, the adaptation fields, seed
    fastgan_classes    AmpliBias's FastGANs: the stage-1 key (its own top-K per class:
            fastgan.k_per_class), cfg.fastgan, seed
    cell    method, dataset fingerprint, cfg.classifier, cfg.baselines, seed, and for
            methods trained on synthetic data the stage-3 key
    oracle  dataset fingerprint, the quality oracles' settings, seed 0 (one pair of scoring
            oracles per dataset, shared by all its stage-3 builds)

Every stage but the oracles (always on a CPU) and an imported checkpoint also has a `numerics`
entry (numerics.py): the device it runs on (run.use_gpu resolved against the cluster; for
run.num_workers=0, whether this process sees a GPU) and the levers that act only there (bf16
autocast as resolved from injection.precision=auto or the stage's bf16 flag, TF32 in training
jobs), so that a set made or a model trained in bf16 on a GPU is never served to a CPU run in
float32, or the other way round.

A stage-3 artifact's metrics hold its quality report (`quality.*`); one built before the
report existed is scored when a cell uses it (cheap, with the cached oracles), and the
cell's metrics carry the report either way.

A dataset fingerprint is the content fingerprint of its Parquet conversion (ids, labels,
biases, pixels), so where the data lies and its files' mtimes change no key.

MLflow: each cell is one parent run (role "cell") with its stage runs nested under it: the
stage-4 run always, and the stage 1-3 runs this cell built. A stage built earlier or by
another cell (the dataset's diffusion model serves every cell) is linked from the parent's
description, and by tags: `<stage>.key`, `<stage>.run_id`, `<stage>.reused`. A whole cell
reused in another experiment (ablations and table1 share the cache) gets a cell run there
too, tagged `cell.cached_from`. Every stage and cell run is tagged `artifact.key`: a build
runs under its key's lock, so a RUNNING run of that key found then is one whose process died
(SIGKILL, a lost node), and is marked KILLED.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffinject.config.overrides import absolute_path
from diffinject.config.schema import ExperimentConfig
from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.experiment.cache import Artifact, ArtifactCache, artifact_key
from diffinject.experiment.keys import StageKeys, given_fastgan_init, given_source
from diffinject.experiment.run_context import (RESUME_KEYS, cell_name, cell_params, cell_tags, dataset_folder,
                                               selected_metrics)
from diffinject.experiment.set_makers import GAN_SETS
from diffinject.experiment.stage_runs import (run_cell, run_stage1, run_stage2, run_stage3, run_synthetic_set,
                                              synthetic_quality)
from diffinject.methods import get_method, stage1_config
from diffinject.stages.kinds import GENERATOR_FILE, GENERATOR_JOBS, get_stage3_kind
from diffinject.stages.quality.metrics import PREFIX as QUALITY_PREFIX
from diffinject.stages.stage2 import DIFFUSION_FILE
from diffinject.tracking.client import Tracker
from diffinject.tracking.descriptions import cell_note, linked_run


@dataclass
class CellResult:
    dataset: str
    ratio: str
    method: str
    seed: int
    metrics: dict
    run_id: str
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "built" | "reused"
    seconds: float = 0.0

    @property
    def cached(self) -> bool:
        return self.stages.get("cell") == "reused"


class CellRunner(StageKeys):
    """Builds or reuses the stages of table cells in one artifact cache and MLflow experiment.

    `checkpoints`: dataset -> a diffusion checkpoint file (a released guided-diffusion / P2
    file, or the project's format) used instead of training stage 2 for that dataset.
    """

    def __init__(self, cache: ArtifactCache, tracker: Tracker | None = None,
                 checkpoints: dict[str, str] | None = None, random_lpips_backbone: bool = False):
        self.cache = cache
        self.tracker = tracker or Tracker()
        self.checkpoints = dict(checkpoints or {})
        self.random_lpips_backbone = random_lpips_backbone
        self._cluster_gpus: dict[str, bool] = {}  # run.use_gpu -> resolved, once per runner
        for dataset, path in self.checkpoints.items():
            if Path(path).is_dir():
                raise CheckpointError(f"--checkpoint {dataset}={path} is a folder; expected a checkpoint file")
            if not Path(path).is_file():
                raise CheckpointError(f"--checkpoint {dataset}={path}: no such file")

    # ---- stages ------------------------------------------------------------------------
    def _stage_tags(self, cfg: ExperimentConfig, key: str, method: str | None) -> dict:
        """Tags of a run built under `key`'s lock (the cell's `method` when a cell builds it), after
        marking KILLED the runs of that key left RUNNING by a process that died."""
        self.tracker.kill_running(self.tracker.experiment(cfg.run.experiment), f"tags.`artifact.key` = '{key}'")
        return {"artifact.key": key, **({"method": method} if method else {})}

    def stage1(self, cfg: ExperimentConfig, parent: str | None = None, method: str | None = None) -> Artifact:
        """The GCE bias classifier and its top-K set (topk.json, topk_images.npy, model.pt, grid)."""
        material = self.stage1_material(cfg)

        def build(work: Path) -> dict:
            tags = self._stage_tags(cfg, artifact_key("stage1", material), method)
            out = run_stage1(cfg, self.tracker, parent=parent, output_dir=work, tags=tags)
            return {"run_id": out.run_id, "metrics": out.metrics}

        return self.cache.get_or_build("stage1", material, build)

    def stage2(self, cfg: ExperimentConfig, parent: str | None = None, method: str | None = None) -> Artifact:
        """The dataset's diffusion model as `diffusion.pt` (trained, or imported from --checkpoint)."""
        material = self.stage2_material(cfg)
        key = artifact_key("stage2", material)
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=cfg.diffusion.seed))

        def build(work: Path) -> dict:
            tags = self._stage_tags(cfg, key, method)
            given = self.checkpoints.get(cfg.data.dataset)
            if given:
                return self._import_checkpoint(cfg, Path(given), work, parent, tags)
            out = run_stage2(cfg, self.tracker, parent=parent, output_dir=work, name=f"stage2-{key}", tags=tags)
            return {"run_id": out.run_id, "metrics": {k: v for k, v in out.metrics.items() if k not in RESUME_KEYS}}

        return self.cache.get_or_build("stage2", material, build)

    def _import_checkpoint(self, cfg: ExperimentConfig, path: Path, work: Path, parent: str | None,
                           tags: dict) -> dict:
        """A given checkpoint, loaded strictly (keys and shapes) and converted once into the
        project's format, so that one that does not fit its preset is never cached."""
        from diffinject.nets.diffusion.checkpoint import load_given_checkpoint, unet_checkpoint_bytes
        from diffinject.nets.diffusion.models import get_preset

        preset = get_preset(cfg.diffusion.preset)
        unet, source = load_given_checkpoint(path, preset.name, cfg.data.dataset)
        if source == "diffinject":
            shutil.copyfile(path, work / DIFFUSION_FILE)
        else:
            (work / DIFFUSION_FILE).write_bytes(unet_checkpoint_bytes(
                unet.state_dict(), preset, step=0, config={"source": str(path), "format": "guided-diffusion"}))
        exp = self.tracker.experiment(cfg.run.experiment)
        run_id = self.tracker.start_run(exp, f"stage2 {preset.name} imported {cfg.data.dataset}",
                                        {"dataset": cfg.data.dataset, "diffinject.role": "stage2",
                                         "stage.algorithm": "imported_checkpoint", "preset": preset.name,
                                         "checkpoint": str(path), "checkpoint_format": source, **tags},
                                        parent=parent)
        self.tracker.finish(run_id)
        return {"run_id": run_id, "metrics": {}, "source": str(path), "format": source}

    def stage3(self, cfg: ExperimentConfig, stage1: Artifact, stage2: Artifact, parent: str | None = None,
               method: str | None = None) -> Artifact:
        """The synthetic set (`synthetic/`, Parquet split train) and its triptych. A build that
        was interrupted continues in its work folder, writing only the missing pairs."""
        material = self.stage3_material(cfg)

        def build(work: Path) -> dict:
            tags = self._stage_tags(cfg, artifact_key("stage3", material), method)
            out = run_stage3(cfg, stage1.path, stage2.path / DIFFUSION_FILE, self.tracker, out_dir=work / "synthetic",
                             random_lpips_backbone=self.random_lpips_backbone, parent=parent, figures_dir=work,
                             tags=tags, oracles_dir=self.oracles(cfg).path)
            return {"run_id": out.run_id, "metrics": out.metrics}

        return self.cache.get_or_build("stage3", material, build)

    def synthetic_stages(self, cfg: ExperimentConfig, method: str, parent: str | None) -> list[Artifact]:
        """Every stage that `method`'s synthetic set needs, built or reused, the set (stage3) last."""
        kind = get_stage3_kind(get_method(method).synthesis)
        s1 = self.stage1(stage1_config(cfg, method), parent, method)
        if not kind.generators:  # h-space injection: stage 2's diffusion model injects stage 1's top-K
            s2 = self.stage2(cfg, parent, method)
            return [s1, s2, self.stage3(cfg, s1, s2, parent, method)]
        init = given_fastgan_init(cfg) if any("init" in job.reads for job in kind.generators) else None
        files = {"topk": s1.path, **({"init": init} if init is not None else {})}  # what generators may read
        generators = []
        for job in kind.generators:  # each reads the top-K, a given file or an earlier one's generator
            inputs = {name: str(files[name]) for name in job.reads if name in files}
            generators.append(self.generator(job.job, cfg, inputs, parent, method))
            files[job.role] = generators[-1].path / GENERATOR_FILE
        checkpoints = {job.role: files[job.role] for job in kind.generators}
        return [s1, *generators, self.gan_stage3(cfg, method, s1, checkpoints, parent)]

    def generator(self, job: str, cfg: ExperimentConfig, inputs: dict[str, str], parent: str | None,
                  method: str | None) -> Artifact:
        """A GAN job's generator file (`generator.pt`): A²'s source StyleGAN2 (stage `stylegan2_source`)
        or its adaptation (`stylegan2_adapted`), AmpliBias's FastGANs (`fastgan_classes`)."""
        from diffinject.experiment.generator_runs import run_generator_training

        stage, material = GENERATOR_JOBS[job].stage, self.generator_material(job, cfg)
        key = artifact_key(stage, material)
        if job == "fastgan":
            cfg = stage1_config(cfg, "amplibias")

        def build(work: Path) -> dict:
            tags = self._stage_tags(cfg, key, method)
            given = given_source(cfg) if job == "stylegan2_source" else None
            if given is not None:
                return self._import_gan_checkpoint(cfg, given, work, parent, tags)
            out = run_generator_training(cfg, job, self.tracker, inputs, parent=parent, output_dir=work,
                                         name=f"{stage}-{key}", tags=tags,
                                         random_lpips_backbone=self.random_lpips_backbone)
            return {"run_id": out.run_id, "metrics": out.metrics}

        return self.cache.get_or_build(stage, material, build)

    def _import_gan_checkpoint(self, cfg: ExperimentConfig, path: Path, work: Path, parent: str | None,
                               tags: dict) -> dict:
        """A given source StyleGAN2 (stylegan2.source_checkpoint), loaded strictly (both networks of
        its preset, which must be cfg's) before it is cached as the stage's generator file."""
        from diffinject.nets.gan.checkpoint import load_net, read_gan_checkpoint
        from diffinject.nets.gan.stylegan2 import Discriminator, Generator, get_gan_preset

        payload = read_gan_checkpoint(path, "stylegan2")
        if payload["preset"] != cfg.stylegan2.preset:
            raise CheckpointError(f"stylegan2.source_checkpoint {path} holds a {payload['preset']} StyleGAN2; the "
                                  f"config's preset is {cfg.stylegan2.preset}")
        preset = get_gan_preset("stylegan2", payload["preset"])
        load_net(Generator(preset), payload, "generator", path)
        load_net(Discriminator(preset), payload, "discriminator", path)
        shutil.copyfile(path, work / GENERATOR_FILE)
        exp = self.tracker.experiment(cfg.run.experiment)
        run_id = self.tracker.start_run(exp, f"generator stylegan2 imported {cfg.data.dataset}",
                                        {"dataset": cfg.data.dataset, "diffinject.role": "generator",
                                         "stage.algorithm": "imported_checkpoint", "preset": preset.name,
                                         "checkpoint": str(path), **tags}, parent=parent)
        self.tracker.finish(run_id)
        return {"run_id": run_id, "metrics": {"final_step": payload["step"]}, "source": str(path)}

    def gan_stage3(self, cfg: ExperimentConfig, method: str, stage1: Artifact, checkpoints: dict[str, Path],
                   parent: str | None) -> Artifact:
        """A GAN kind's synthetic set (`synthetic/`, Parquet split train), its grid and quality report."""
        material = self.stage3_material(cfg, method)
        maker = GAN_SETS[get_method(method).synthesis](checkpoints, self.random_lpips_backbone)

        def build(work: Path) -> dict:
            tags = self._stage_tags(cfg, artifact_key("stage3", material), method)
            out = run_synthetic_set(cfg, maker, stage1.path, self.tracker, out_dir=work / "synthetic", parent=parent,
                                    figures_dir=work, tags=tags, oracles_dir=self.oracles(cfg).path)
            return {"run_id": out.run_id, "metrics": out.metrics}

        return self.cache.get_or_build("stage3", material, build)

    def oracles(self, cfg: ExperimentConfig) -> Artifact:
        """The dataset's two scoring oracles (`oracles.pt`), trained on its real training split;
        their held-out accuracy is the artifact's metrics."""
        from diffinject.data.parquet import load_split
        from diffinject.stages.quality.oracles import ORACLE_FILE, dataset_oracles

        def build(work: Path) -> dict:
            parquet = dataset_folder(cfg)
            oracles = dataset_oracles(cfg.data.dataset, load_split(parquet, "train"), load_split(parquet, "valid"))
            oracles.save(work / ORACLE_FILE)
            return {"kind": oracles.kind, "metrics": oracles.accuracy}

        return self.cache.get_or_build("oracle", self.oracle_material(cfg), build)

    def stage3_quality(self, cfg: ExperimentConfig, stage3: Artifact) -> dict[str, float]:
        """The `quality.*` metrics of a synthetic set: from its artifact, or, for one built before
        the quality report existed, scored now (its grid beside the cell's files is not kept)."""
        import tempfile

        from diffinject.data.parquet import load_split

        found = {k: v for k, v in stage3.meta.get("metrics", {}).items() if k.startswith(QUALITY_PREFIX)}
        if found:
            return found
        parquet = dataset_folder(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            return synthetic_quality(cfg, parquet, load_split(parquet, "train"), stage3.path / "synthetic",
                                     self.oracles(cfg).path, Path(tmp) / "quality_grid.png")

    # ---- cells -------------------------------------------------------------------------
    def cell(self, cfg: ExperimentConfig, method: str) -> CellResult:
        """Run (or reuse) one table cell; a method trained on synthetic data runs stages 1-3 first."""
        cls = get_method(method)
        started = time.perf_counter()
        material = self.cell_material(cfg, method)

        def build(work: Path) -> dict:
            exp = self.tracker.experiment(cfg.run.experiment)
            tags = self._stage_tags(cfg, artifact_key("cell", material), None)
            parent = self.tracker.start_run(exp, cell_name(cfg, method), {**cell_tags(cfg, method), **tags},
                                            cell_params(cfg, method))
            stages, links = {}, []
            with self.tracker.ending(parent):
                extra, quality = [], {}
                if cls.needs_synthetic:
                    built = self.synthetic_stages(cfg, method, parent)
                    s3 = built[-1]
                    for art in built:
                        stages[art.stage] = "reused" if art.reused else "built"
                        self.tracker.set_tags(parent, {f"{art.stage}.key": art.key, f"{art.stage}.run_id":
                                                       art.meta.get("run_id", ""), f"{art.stage}.reused": art.reused})
                        links.append((art.stage, art.meta.get("run_id", ""), "reused: built earlier, by another cell"
                                      if art.reused else "built by this cell"))
                    extra = [s3.path / "synthetic"]
                    quality = self.stage3_quality(cfg, s3)
                    self.tracker.log_metrics(parent, quality)
                out = run_cell(cfg, method, self.tracker, extra, parent=parent, output_dir=work, tags=tags)
                stages["stage4"] = "built"
                links.append(("stage4", out.stage_run_id, "built by this cell"))
                self.tracker.describe(parent, cell_note(self.tracker, cfg, method, out.metrics, links))
                return {"run_id": parent, "metrics": {**out.metrics, **quality}, "stages": stages}

        art = self.cache.get_or_build("cell", material, build)
        stages = {"cell": "reused"} if art.reused else {**art.meta["stages"], "cell": "built"}
        metrics = {**art.meta["metrics"], **self._missing_quality(cfg, cls, art.meta["metrics"])}
        run_id = self._run_in_experiment(cfg, method, art, metrics) if art.reused else art.meta["run_id"]
        return CellResult(cfg.data.dataset, cfg.data.ratio, method, cfg.run.seed, metrics,
                          run_id, stages, time.perf_counter() - started)

    def _missing_quality(self, cfg: ExperimentConfig, cls, metrics: dict) -> dict[str, float]:
        """The quality report of a cell on synthetic data built before the report existed, from
        its stage-3 artifact when that is still in the cache (else none)."""
        if not cls.needs_synthetic or any(k.startswith(QUALITY_PREFIX) for k in metrics):
            return {}
        stage3 = self.cache.lookup("stage3", artifact_key("stage3", self.stage3_material(cfg, cls.name)))
        return self.stage3_quality(cfg, stage3) if stage3 is not None else {}

    def _run_in_experiment(self, cfg: ExperimentConfig, method: str, art: Artifact, metrics: dict) -> str:
        """The cell's run in this run's MLflow experiment: the run that built it when it is there,
        else a new cell run with its metrics and a `cell.cached_from` tag naming the run that
        built it (a cell reused from another experiment, or from before a new MLflow database),
        so that every experiment's cell runs cover all of its cells."""
        from mlflow.exceptions import MlflowException

        exp = self.tracker.experiment(cfg.run.experiment)
        try:
            if self.tracker.client.get_run(art.meta["run_id"]).info.experiment_id == exp:
                return art.meta["run_id"]
        except MlflowException:  # not in this tracking store
            pass
        found = self.tracker.client.search_runs([exp], f"tags.`cell.key` = '{art.key}' and "
                                                "attributes.status = 'FINISHED'", max_results=1)
        if found:
            return found[0].info.run_id
        run_id = self.tracker.start_run(exp, cell_name(cfg, method), {
            **cell_tags(cfg, method), "artifact.key": art.key, "cell.key": art.key,
            "cell.cached_from": art.meta["run_id"]}, cell_params(cfg, method))
        self.tracker.log_metrics(run_id, {**metrics, **selected_metrics(metrics, headline=True)})
        origin = linked_run(self.tracker, art.meta["run_id"])
        self.tracker.describe(run_id, cell_note(self.tracker, cfg, method, metrics, []) +
                              f"\nThis cell came from the artifact cache: built by {origin}, whose description "
                              f"links its stage runs.\n")
        self.tracker.finish(run_id)
        return run_id


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    """--checkpoint DATASET=PATH arguments -> {dataset: absolute path}."""
    out = {}
    for item in items:
        dataset, sep, path = item.partition("=")
        if not sep or not dataset or not path:
            raise ConfigError(f"--checkpoint {item!r}: expected DATASET=PATH, e.g. bffhq=ffhq_p2.pt")
        out[dataset] = absolute_path(path)
    return out


def check_checkpoint_datasets(checkpoints: dict[str, str], datasets: list[str]) -> None:
    """--checkpoint names a dataset of the grid."""
    unknown = sorted(set(checkpoints) - set(datasets))
    if unknown:
        raise ConfigError(f"--checkpoint given for {', '.join(unknown)}, which is not among the datasets "
                          f"of this run ({', '.join(datasets)})")
