"""What a GAN stage-3 kind generates, and the rows it writes.

Both kinds make N_syn = round(injection.conflict_ratio * |train|) images, like h-space injection,
each identified by a `pair_id` with a per-image seed from (seed, pair_id) (inject.manifest):

- `stylegan2_adapt` (A²): one image per original drawn by the injection manifest's rule
  (injection.originals), labelled with the original's class;
- `fastgan` (AmpliBias): N_syn spread evenly over the classes (the first N_syn mod C classes get
  one more), labelled with their generator's class.

Rows have `data.parquet.SCHEMA`'s columns plus provenance: pair_id, original_id (A²: the projected
original; AmpliBias: empty), content_id (empty: no single content image), seed, generator (the
kind), checkpoint_hash (first 16 hex digits of the generator file's SHA-256) and label_from. The
bias column is -1: the generator, not a known image, sets the bias attribute (the quality report
reads it with its oracle).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from diffinject.core.errors import ConfigError
from diffinject.data.parquet import SCHEMA
from diffinject.stages.inject.manifest import build_manifest, pair_seeds, synthetic_count

GAN_MANIFEST_SCHEMA = pa.schema([
    ("pair_id", pa.int64()), ("original_index", pa.int64()), ("label", pa.int64()), ("seed", pa.int64()),
])
GAN_SCHEMA = pa.schema(list(SCHEMA) + [
    ("pair_id", pa.int64()), ("original_id", pa.string()), ("content_id", pa.string()), ("seed", pa.int64()),
    ("generator", pa.string()), ("checkpoint_hash", pa.string()), ("label_from", pa.string()),
])
UNKNOWN_BIAS = -1


def projection_manifest(train_labels, topk_indices, train_biases, conflict_ratio: float, originals: str,
                        seed: int) -> pa.Table:
    """A²: the originals the injection manifest would draw (same rule, same seed), each labelled
    with its own class; original_index is a row of the training split."""
    labels = np.asarray(train_labels, dtype=np.int64)
    pairs = build_manifest(len(labels), topk_indices, labels, train_biases, conflict_ratio, originals, seed)
    original = pairs["original_index"].to_numpy()
    return pa.Table.from_arrays([pairs["pair_id"], pa.array(original), pa.array(labels[original]), pairs["seed"]],
                                schema=GAN_MANIFEST_SCHEMA)


def class_manifest(classes, num_train: int, conflict_ratio: float, seed: int) -> pa.Table:
    """AmpliBias: N_syn images spread evenly over `classes` (sorted), pair_ids in class order."""
    classes = np.unique(np.asarray(classes, dtype=np.int64))
    if len(classes) == 0:
        raise ConfigError("no classes to generate for: the top-K set is empty")
    n_syn = synthetic_count(num_train, conflict_ratio)
    if n_syn == 0:
        raise ConfigError(f"injection.conflict_ratio={conflict_ratio} of {num_train} training samples rounds to 0 "
                          f"synthetic samples; raise the ratio")
    per_class = np.full(len(classes), n_syn // len(classes)) + (np.arange(len(classes)) < n_syn % len(classes))
    labels = np.repeat(classes, per_class)
    pair_id = np.arange(n_syn, dtype=np.int64)
    return pa.Table.from_arrays([pa.array(pair_id), pa.array(np.full(n_syn, -1, dtype=np.int64)), pa.array(labels),
                                 pa.array(pair_seeds(seed, pair_id))], schema=GAN_MANIFEST_SCHEMA)


def gan_batch_table(pair_ids, labels, seeds, images: np.ndarray, original_ids, generator: str,
                    checkpoint_digest: str, label_from: str) -> pa.Table:
    """Rows of a GAN synthetic set for one batch (uint8 N x H x W x 3 images in the batch's order)."""
    pair_ids = np.asarray(pair_ids, dtype=np.int64)
    n = len(pair_ids)
    if images.shape[0] != n or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected {n} uint8 H x W x 3 images, got {images.dtype} {images.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    columns = {
        "id": [f"syn-{int(p):07d}" for p in pair_ids], "label": labels,
        "bias": np.full(n, UNKNOWN_BIAS), "aligned": np.zeros(n, dtype=bool), "split": ["train"] * n,
        "height": np.full(n, images.shape[1]), "width": np.full(n, images.shape[2]),
        "pixels": [np.ascontiguousarray(img).tobytes() for img in images], "source_path": [""] * n,
        "pair_id": pair_ids, "original_id": [str(v) for v in original_ids], "content_id": [""] * n,
        "seed": np.asarray(seeds, dtype=np.int64), "generator": [generator] * n,
        "checkpoint_hash": [checkpoint_digest] * n, "label_from": [label_from] * n,
    }
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in GAN_SCHEMA], schema=GAN_SCHEMA)
