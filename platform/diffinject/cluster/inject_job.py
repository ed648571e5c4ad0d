"""Stage 3 on Ray Data: the injection manifest -> actor pool of injection engines -> Parquet.

    manifest (pair_id, original_index, content_index, seed), minus pairs already written
      -> ray.data.from_arrow(one block per batch of pairs)
      -> map_batches(InjectorActor, compute=ActorPoolStrategy(size=n), num_gpus=1 if GPUs)
         (each actor loads the checkpoint and inverts the contents once, in __init__; each
          batch's rows come back to the caller, which writes OUT/_parts/part-<first pair_id>-<uuid>.parquet)
      -> synthetic.finalize(OUT): every pair_id exactly once, train-*.parquet + _SUCCESS.json

Where a CPU cluster would give the job a single actor (and no fault drill or actor count is
asked for), the actor's code runs in the calling process on the same blocks instead: the pool's
start costs seconds that a small job does not repay.

Resume: a re-run with the same manifest, config, t_edit and checkpoint computes only the
pair_ids missing from `OUT/_parts` (parts of a different job there are discarded); a finished
`OUT` of the same job is returned as is. Fault tolerance: Ray Data restarts a dead actor and
retries its batch (Ray 2.60 defaults `max_restarts=-1`, `max_task_retries=-1` for actor
pools); a pair written twice by a retried batch is kept once by `finalize`.

Actors may run on any node: the checkpoint reaches them through cluster.shipping, the arrays through
the object store, and each batch's rows come back to the calling process, which writes the part
files; `out_dir` is on its disk only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from diffinject.cluster.session import fake_gpus, node_cpus, node_id, resolve_use_gpu
from diffinject.cluster.shipping import receive, ship
from diffinject.config.schema import InjectionConfig
from diffinject.core.atomic import read_json
from diffinject.core.errors import ConfigError
from diffinject.data.parquet import MARKER
from diffinject.stages.inject.manifest import MANIFEST_SCHEMA
from diffinject.stages.inject.synthetic import (PARTS, batch_table, checkpoint_hash, finalize, provenance, write_part,
                                                written_pair_ids)

JOB_FILE = "_job.json"
AUTO_BLOCK_PAIRS = 1024  # manifest rows per Ray block when the engine sizes its own passes (batch_size 0)


class InjectorActor:
    """One injection engine per actor; called with batches of manifest rows (numpy format)."""

    def __init__(self, checkpoint_path, cfg: dict, t_edit: int, arrays, prov: dict, device: str = "cpu",
                 fail_once_marker: str | None = None, cpu_threads: int = 1):
        import ray
        import torch

        from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
        from diffinject.stages.inject.engine import InjectionEngine

        if isinstance(arrays, list):  # [ObjectRef], so that Ray does not copy it per task
            arrays = arrays[0]
        if isinstance(arrays, ray.ObjectRef):
            arrays = ray.get(arrays)
        self.arrays = arrays
        self.prov = prov
        self.fail_once_marker = fail_once_marker
        device = actor_device(device)
        # Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this actor reserved (a GPU actor's
        # too: injection.noise=host draws every pair's noise on the CPU)
        torch.set_num_threads(cpu_threads)
        unet, _ = load_unet_checkpoint(receive(checkpoint_path))
        self.engine = InjectionEngine(unet, InjectionConfig(**cfg), arrays["topk_images"], device, t_edit=t_edit)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if self.fail_once_marker and not os.path.exists(self.fail_once_marker):
            # fault injection for tests: die once, mid-job, before writing anything
            Path(self.fail_once_marker).write_text(str(os.getpid()))
            os._exit(1)
        # copies: Ray's zero-copy batches are read-only, which torch.as_tensor warns about
        pair_ids, original_index, content_index, seeds = (
            np.array(batch[name], dtype=np.int64) for name in ("pair_id", "original_index", "content_index", "seed"))
        a = self.arrays
        images = self.engine.generate(a["train_images"][original_index], content_index, seeds)
        return batch_table(pair_ids, original_index, content_index, seeds, images, a["train_ids"], a["train_labels"],
                           a["train_biases"], a["topk_ids"], a["topk_labels"], a["topk_biases"], self.prov)


def actor_device(device: str) -> str:
    """The torch device of an actor given `device`; a GPU actor whose torch sees no CUDA device is
    an error (a silent fall back to the CPU would also change the set's numerics), except on the
    tests' fake GPUs (cluster.session.fake_gpus)."""
    import socket

    import torch

    if device != "cuda" or torch.cuda.is_available():
        return device
    if fake_gpus():
        return "cpu"
    raise ConfigError(f"an actor on {socket.gethostname()} was given a GPU, but torch sees no CUDA device: the GPU "
                      f"nodes need a CUDA build of torch and the NVIDIA driver")


def _manifest_table(manifest) -> pa.Table:
    if isinstance(manifest, dict):
        manifest = pa.table({name: np.asarray(manifest[name], dtype=np.int64) for name in MANIFEST_SCHEMA.names})
    missing = [n for n in MANIFEST_SCHEMA.names if n not in manifest.column_names]
    if missing:
        raise ConfigError(f"the injection manifest lacks columns {missing}")
    table = manifest.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    if len(np.unique(table["pair_id"].to_numpy())) != table.num_rows:
        raise ConfigError("the injection manifest has repeated pair_ids")
    return table


def _job_key(manifest: pa.Table, cfg: InjectionConfig, t_edit: int, digest: str, image_shape) -> str:
    h = hashlib.sha256()
    for name in MANIFEST_SCHEMA.names:
        h.update(np.ascontiguousarray(manifest[name].to_numpy()).tobytes())
    h.update(json.dumps({"cfg": dataclasses.asdict(cfg), "t_edit": int(t_edit), "checkpoint": digest,
                         "shape": list(image_shape)}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def actor_cpus(cluster_cpus: int, num_actors: int, node_cpus: list[int]) -> int:
    """CPUs each CPU actor reserves: an equal share of the cluster's (the driver-side consumer
    needs none), but no more than the largest node has, or the actor could never be placed."""
    return max(1, min(cluster_cpus // num_actors, max(node_cpus, default=1)))


def gpu_actor_cpus(gpu_nodes: list[tuple[int, int]]) -> int:
    """CPUs each GPU actor reserves, for its host-side work, from the (CPUs, GPUs) of each node
    with GPUs: its node's CPUs shared by the node's GPUs, the smallest share over those nodes so
    that the actor fits beside any of their GPUs; never below one CPU."""
    return max(1, min((cpus // gpus for cpus, gpus in gpu_nodes if gpus >= 1), default=1))


def run_injection_job(manifest, train_images: np.ndarray, train_ids, train_labels, train_biases,
                      topk_images: np.ndarray, topk_ids, topk_labels, topk_biases, checkpoint_path: Path,
                      cfg: InjectionConfig, out_dir: Path, t_edit: int | None = None, num_actors: int | None = None,
                      use_gpu="auto", fail_once_marker: str | None = None, finalize_output: bool = True,
                      verbose: bool = True) -> Path:
    """Generate the synthetic set of `manifest` into `out_dir` on the running Ray cluster.

    `manifest`: a pyarrow Table (or dict of arrays) from `inject.manifest.build_manifest`;
    `original_index` rows `train_*`, `content_index` rows `topk_*` (a synthetic row's label and
    bias come from them as cfg.label_from says, see `inject.synthetic`). Returns
    `out_dir`, readable by `load_split(out_dir, "train")`. `fail_once_marker` (tests): the
    first batch that finds no file at that path creates it and kills its actor.
    """
    import ray

    if not ray.is_initialized():
        raise ConfigError("run_injection_job needs a running Ray cluster (ray.init / cluster.session.ensure_ray)")
    t_edit = cfg.t_edit if t_edit is None else int(t_edit)
    checkpoint_path, out_dir = Path(checkpoint_path).resolve(), Path(out_dir).resolve()
    table = _manifest_table(manifest)
    train_images, topk_images = np.asarray(train_images), np.asarray(topk_images)
    if train_images.ndim != 4 or train_images.dtype != np.uint8:
        raise ConfigError(f"train_images must be uint8 N x H x W x 3, got {train_images.dtype} {train_images.shape}")
    if table.num_rows and (pc.max(table["original_index"]).as_py() >= len(train_images)
                           or pc.max(table["content_index"]).as_py() >= len(topk_images)
                           or pc.min(table["original_index"]).as_py() < 0 or pc.min(table["content_index"]).as_py() < 0):
        raise ConfigError("the manifest's original_index / content_index do not fit the given training / top-K sets")
    digest = checkpoint_hash(checkpoint_path)
    key = _job_key(table, cfg, t_edit, digest, train_images.shape[1:])
    meta = {"job": key, **provenance(cfg, t_edit, digest), "checkpoint": str(checkpoint_path),
            "injection": dataclasses.asdict(cfg)}
    arrays = {"train_images": train_images, "train_ids": np.asarray(train_ids),
              "train_labels": np.asarray(train_labels), "train_biases": np.asarray(train_biases),
              "topk_images": topk_images, "topk_ids": np.asarray(topk_ids),
              "topk_labels": np.asarray(topk_labels), "topk_biases": np.asarray(topk_biases)}
    return run_parts_job(table, key, meta, out_dir, InjectorActor, arrays,
                         dict(checkpoint_path=ship(checkpoint_path), cfg=dataclasses.asdict(cfg), t_edit=t_edit,
                              prov=provenance(cfg, t_edit, digest), fail_once_marker=fail_once_marker),
                         cfg.batch_size or AUTO_BLOCK_PAIRS, use_gpu, num_actors, finalize_output, verbose, "inject",
                         local_when_single=fail_once_marker is None and num_actors is None)


def run_parts_job(table: pa.Table, key: str, meta: dict, out_dir: Path, actor, arrays: dict, actor_kwargs: dict,
                  batch_size: int, use_gpu="auto", num_actors: int | None = None, finalize_output: bool = True,
                  verbose: bool = True, label: str = "inject", schema: pa.Schema | None = None,
                  unit: str = "pairs", local_when_single: bool = False) -> Path:
    """Run the rows of `table` (a pair_id column and what `actor` reads) through an actor pool whose
    batches come back here (through the object store: actors may run on nodes that do not see
    this disk) and are written as part files into `out_dir/_parts`; then finalize `out_dir`. A
    job of the same `key` resumes (only missing pair_ids run) and a finished one is returned as
    is. `actor` is constructed with `actor_kwargs` plus arrays=[ObjectRef of `arrays`], device
    and cpu_threads, and returns each batch's rows as a pyarrow Table.

    `local_when_single`: where the job would get a single CPU actor, call `actor` in this process
    instead, on the same blocks (an actor pool's start costs seconds, which a small job does not
    repay), unless this node offers Ray no CPUs (a head kept for drivers)."""
    import ray

    expected = table["pair_id"].to_numpy()
    marker = out_dir / MARKER
    if (read_json(marker) or {}).get("job") == key:
        if verbose:
            print(f"[{label}] {out_dir} already holds this job's {len(expected)} synthetic samples", flush=True)
        return out_dir
    parts = out_dir / PARTS
    job_file = parts / JOB_FILE
    if parts.is_dir() and (read_json(job_file) or {}).get("job") != key:
        if verbose:
            print(f"[{label}] discarding part files of a different job in {parts}", flush=True)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not job_file.is_file():
        (parts / (JOB_FILE + ".tmp")).write_text(json.dumps({"job": key}))
        os.replace(parts / (JOB_FILE + ".tmp"), job_file)

    done = written_pair_ids(parts)
    todo = table.filter(pc.invert(pc.is_in(table["pair_id"], value_set=pa.array(done, type=pa.int64()))))
    total = table.num_rows
    if verbose:
        print(f"[{label}] {total} {unit}, {total - todo.num_rows} already written, {todo.num_rows} to generate",
              flush=True)
    if todo.num_rows:
        gpu = resolve_use_gpu(use_gpu)
        resources = ray.cluster_resources()
        if num_actors is None:
            num_actors = int(resources.get("GPU", 0)) if gpu else max(1, int(resources.get("CPU", 1)) // 2)
        bs = batch_size
        num_actors = max(1, min(num_actors, -(-todo.num_rows // bs)))
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        cpus = (gpu_actor_cpus([(int(r.get("CPU", 0)), int(r.get("GPU", 0))) for r in nodes]) if gpu
                else actor_cpus(int(resources.get("CPU", 1)), num_actors, [int(r.get("CPU", 0)) for r in nodes]))
        # one block per batch: blocks are the unit Ray Data spreads over actors (and retries)
        blocks = [todo.slice(start, bs) for start in range(0, todo.num_rows, bs)]
        started, finished, next_report = time.time(), total - todo.num_rows, 0.1
        if local_when_single and not gpu and num_actors == 1 and node_cpus(node_id()) > 0:
            import torch

            local = actor(**actor_kwargs, arrays=arrays, device="cpu", cpu_threads=torch.get_num_threads())
            batches = (local({name: block[name].to_numpy() for name in block.column_names}) for block in blocks)
        else:
            batches = _pool_batches(blocks, actor, arrays, actor_kwargs, gpu, num_actors, cpus, bs)
        for batch in batches:
            write_part(parts, batch)
            finished += batch.num_rows
            if verbose and (finished / total >= next_report or finished == total):
                print(f"[{label}] {finished}/{total} {unit} ({100 * finished / total:.0f}%), "
                      f"{time.time() - started:.0f} s", flush=True)
                next_report = np.floor(finished / total * 10 + 1) / 10
    if not finalize_output:
        return out_dir
    finalize(out_dir, expected, meta, **({"schema": schema} if schema is not None else {}))
    if verbose:
        print(f"[{label}] wrote {len(expected)} synthetic samples to {out_dir}", flush=True)
    return out_dir


def _pool_batches(blocks: list[pa.Table], actor, arrays: dict, actor_kwargs: dict, gpu: bool, num_actors: int,
                  cpus: int, bs: int):
    """The finished batches (pyarrow Tables) of `blocks` run by a Ray Data pool of `num_actors`
    actors, as they come. A GPU pool starts with one actor and grows as GPUs free up, so that one
    job does not hold every GPU of the cluster while other cells' trainings wait for one."""
    import ray

    ref = ray.put(arrays)  # once; every actor gets it from the object store
    pool = (ray.data.ActorPoolStrategy(min_size=1, max_size=num_actors) if gpu
            else ray.data.ActorPoolStrategy(size=num_actors))
    ds = ray.data.from_arrow(blocks).map_batches(
        actor,
        fn_constructor_kwargs=dict(**actor_kwargs, arrays=[ref], device="cuda" if gpu else "cpu", cpu_threads=cpus),
        compute=pool, batch_size=bs, batch_format="numpy",
        num_gpus=1 if gpu else None, num_cpus=cpus,
    )
    return ds.iter_batches(batch_size=None, batch_format="pyarrow")
