"""The GAN stage-3 kinds on Ray Data: a GAN manifest -> actor pool of generators -> Parquet.

Same job shape as the injection job (cluster.inject_job.run_parts_job: one block per batch, part files,
resume of the missing pair_ids, finalize; where a CPU cluster would give it a single actor, the
actor's code runs in the calling process, sparing the pool's start): each actor loads the generator files once; a batch
of `stylegan2_adapt` rows projects its originals into the source generator's W space and decodes
them with the adapted generator, a batch of `fastgan` rows samples each row's class generator
with the row's seed. Images come out at the dataset's size (synthesis.sets for the rows).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pyarrow as pa

from diffinject.cluster.inject_job import actor_device, run_parts_job
from diffinject.cluster.shipping import receive, ship
from diffinject.cluster.train_jobs import install_hub_file
from diffinject.core.errors import ConfigError
from diffinject.stages.inject.synthetic import checkpoint_hash
from diffinject.stages.synthesis.sets import GAN_MANIFEST_SCHEMA, GAN_SCHEMA, gan_batch_table

class GeneratorActor(ABC):
    """What the GAN kinds' actors share: the training arrays, threads, device and the shipped
    generator files; called with batches of GAN manifest rows (numpy format)."""
    kind = ""  # the stage-3 kind (stages.kinds) a subclass draws
    label_from = ""  # where a row's label comes from (synthesis.sets.gan_batch_table)

    def __init__(self, checkpoints: dict, cfg: dict, arrays, digest: str, out_size: int,
                 random_lpips_backbone: bool = False, lpips_trunk=None, device: str = "cpu", cpu_threads: int = 1):
        import ray
        import torch

        if isinstance(arrays, list):  # [ObjectRef], so that Ray does not copy it per task
            arrays = arrays[0]
        self.arrays = ray.get(arrays) if isinstance(arrays, ray.ObjectRef) else arrays
        torch.set_num_threads(cpu_threads)  # Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this actor reserved
        self.device = torch.device(actor_device(device))
        self.digest, self.out_size = digest, out_size
        if lpips_trunk is not None:
            install_hub_file(receive(lpips_trunk))
        self.load({name: receive(item) for name, item in checkpoints.items()}, cfg, random_lpips_backbone)

    @abstractmethod
    def load(self, checkpoints: dict, cfg: dict, random_lpips_backbone: bool) -> None:
        """Load the kind's generators from its files (by role) onto self.device."""

    @abstractmethod
    def draw(self, original_index: np.ndarray, labels: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, list]:
        """The rows' images and their original ids."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        # copies: Ray's zero-copy batches are read-only, which torch.as_tensor warns about
        pair_ids, original_index, labels, seeds = (np.array(batch[name], dtype=np.int64)
                                                   for name in GAN_MANIFEST_SCHEMA.names)
        images, original_ids = self.draw(original_index, labels, seeds)
        return gan_batch_table(pair_ids, labels, seeds, images, original_ids, self.kind, self.digest, self.label_from)

    @staticmethod
    def lpips_trunk(settings: dict, random_backbone: bool):
        """The VGG trunk's weights when this kind's actors measure with LPIPS, else None."""
        return None


class ProjectionActor(GeneratorActor):
    """A²: each original projected into the source generator's W space, decoded by the adapted one."""
    kind, label_from = "stylegan2_adapt", "original"

    def load(self, checkpoints: dict, cfg: dict, random_lpips_backbone: bool) -> None:
        from diffinject.config.schema import StyleGAN2Config
        from diffinject.nets.perceptual import distance_fn

        self.cfg = StyleGAN2Config(**cfg)
        self.source = _stylegan2(checkpoints["source"]).to(self.device)
        self.adapted = _stylegan2(checkpoints["adapted"]).to(self.device)
        self.distance = distance_fn(self.cfg.distance, random_backbone=random_lpips_backbone, device=self.device)

    def draw(self, original_index: np.ndarray, labels: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, list]:
        from diffinject.stages.synthesis.stylegan2_adapt import project_and_decode

        images = project_and_decode(self.source, self.adapted, self.arrays["train_images"][original_index],
                                     self.cfg, self.distance, seeds, self.out_size)
        return images, np.asarray(self.arrays["train_ids"])[original_index]

    @staticmethod
    def lpips_trunk(settings: dict, random_backbone: bool):
        """Shipped from this node's torch hub cache when the projection measures with LPIPS."""
        if settings.get("distance") != "lpips_vgg" or random_backbone:
            return None
        from diffinject.nets.perceptual import backbone_checkpoint

        return ship(backbone_checkpoint("vgg")[0])


class ClassSamplerActor(GeneratorActor):
    """AmpliBias: each row's image sampled from its class's FastGAN with the row's seed."""
    kind, label_from = "fastgan", "generator"

    def load(self, checkpoints: dict, cfg: dict, random_lpips_backbone: bool) -> None:
        from diffinject.stages.synthesis.fastgan_per_class import load_class_generators

        self.generators = {c: g.to(self.device) for c, g in load_class_generators(Path(checkpoints["classes"])).items()}

    def draw(self, original_index: np.ndarray, labels: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, list]:
        """Each row's image from its class's generator and its seed, in the rows' order."""
        from diffinject.stages.synthesis.fastgan_per_class import sample_class_images

        images = np.zeros((len(labels), self.out_size, self.out_size, 3), dtype=np.uint8)
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            if int(c) not in self.generators:
                raise ConfigError(f"no FastGAN for class {int(c)} (the checkpoint has classes "
                                  f"{sorted(self.generators)})")
            images[rows], _ = sample_class_images(self.generators, {int(c): len(rows)}, seeds[rows], self.out_size)
        return images, [""] * len(labels)


ACTORS = {actor.kind: actor for actor in (ProjectionActor, ClassSamplerActor)}  # by the GAN stage-3 kind


def _stylegan2(path):
    from diffinject.nets.gan.checkpoint import load_net, read_gan_checkpoint
    from diffinject.nets.gan.stylegan2 import build_generator

    payload = read_gan_checkpoint(Path(path), "stylegan2")
    return load_net(build_generator(payload["preset"]), payload, "generator", Path(path))


def _job_key(kind: str, table: pa.Table, cfg: dict, digests: dict[str, str], image_shape) -> str:
    h = hashlib.sha256()
    for name in GAN_MANIFEST_SCHEMA.names:
        h.update(np.ascontiguousarray(table[name].to_numpy()).tobytes())
    h.update(json.dumps({"kind": kind, "cfg": cfg, "checkpoints": digests, "shape": list(image_shape)},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def run_gan_synthesis_job(kind: str, manifest: pa.Table, checkpoints: dict[str, Path], cfg, train_images: np.ndarray,
                          train_ids, out_dir: Path, batch_size: int, use_gpu="auto",
                          random_lpips_backbone: bool = False, num_actors: int | None = None,
                          verbose: bool = True) -> Path:
    """Generate the synthetic set of a GAN `manifest` (synthesis.sets) into `out_dir` on the running
    Ray cluster. `checkpoints`: {"source", "adapted"} (stylegan2_adapt) or {"classes"} (fastgan);
    `cfg`: the kind's config section. Images have the training images' size."""
    import ray

    if kind not in ACTORS:
        raise ConfigError(f"unknown GAN stage-3 kind {kind!r}; expected one of {', '.join(ACTORS)}")
    if not ray.is_initialized():
        raise ConfigError("run_gan_synthesis_job needs a running Ray cluster (ray.init / cluster.session.ensure_ray)")
    table = manifest.select(GAN_MANIFEST_SCHEMA.names).cast(GAN_MANIFEST_SCHEMA)
    train_images = np.asarray(train_images)
    if train_images.ndim != 4 or train_images.dtype != np.uint8 or train_images.shape[1] != train_images.shape[2]:
        raise ConfigError(f"train_images must be uint8 N x S x S x 3, got {train_images.dtype} {train_images.shape}")
    checkpoints = {name: Path(path).resolve() for name, path in checkpoints.items()}
    digests = {name: checkpoint_hash(path) for name, path in checkpoints.items()}
    settings = dataclasses.asdict(cfg)
    key = _job_key(kind, table, settings, digests, train_images.shape[1:])
    digest = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    meta = {"job": key, "generator": kind, "checkpoints": {k: str(v) for k, v in checkpoints.items()},
            "checkpoint_hashes": digests, kind: settings}
    arrays = {"train_images": train_images, "train_ids": np.asarray(train_ids)}
    actor = ACTORS[kind]
    return run_parts_job(table, key, meta, Path(out_dir).resolve(), actor, arrays,
                         dict(checkpoints={k: ship(v) for k, v in checkpoints.items()}, cfg=settings,
                              digest=digest, out_size=int(train_images.shape[1]),
                              random_lpips_backbone=random_lpips_backbone,
                              lpips_trunk=actor.lpips_trunk(settings, random_lpips_backbone)),
                         batch_size, use_gpu, num_actors, True, verbose, kind, GAN_SCHEMA, "images",
                         local_when_single=True)
