"""Which synthetic pairs stage 3 makes: the injection manifest (docs/design.md 2.3, item 9).

`N_syn = round(conflict_ratio * num_train)` pairs. Each pair has a content drawn uniformly
from the top-K set and an original drawn uniformly from the training rows not in the top-K
(`originals="non_topk"`, the default) or, as a comparison flag only, from the rows whose
label equals their bias (`originals="aligned"`: the released code's choice, which uses the
ground-truth bias labels). A pair is identified by its `pair_id` (0..N_syn-1), never by row
order; its `seed` (boosting noise) is a fixed function of (seed, pair_id).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from diffinject.core.errors import ConfigError

MANIFEST_SCHEMA = pa.schema([
    ("pair_id", pa.int64()), ("original_index", pa.int64()), ("content_index", pa.int64()), ("seed", pa.int64()),
])

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def pair_seeds(seed: int, pair_ids: np.ndarray) -> np.ndarray:
    """Per-pair noise seeds (non-negative int64) derived from (seed, pair_id) only."""
    base = _splitmix64(np.asarray([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        mixed = _splitmix64(np.asarray(pair_ids, dtype=np.uint64) ^ base)
    return (mixed >> np.uint64(1)).astype(np.int64)


def synthetic_count(num_train: int, conflict_ratio: float) -> int:
    return int(round(conflict_ratio * num_train))


def build_manifest(num_train: int, topk_indices, labels=None, biases=None, conflict_ratio: float = 0.1,
                   originals: str = "non_topk", seed: int = 0) -> pa.Table:
    """The pairs (pair_id, original_index, content_index, seed) as a pyarrow Table.

    `original_index` is a row of the training split, `content_index` a position in
    `topk_indices` (the engine's content set). Originals are drawn without replacement while
    there are enough candidates, with replacement otherwise. Deterministic for a given seed.
    """
    topk = np.asarray(topk_indices, dtype=np.int64).reshape(-1)
    if num_train <= 0:
        raise ConfigError(f"the training split is empty (num_train={num_train}); nothing to inject into")
    if len(topk) == 0:
        raise ConfigError("the top-K set is empty; stage 3 needs at least one content image (check bias.k)")
    if topk.min() < 0 or topk.max() >= num_train:
        raise ConfigError(f"top-K indices must be rows of the training split (0..{num_train - 1})")
    if conflict_ratio <= 0:
        raise ConfigError(f"injection.conflict_ratio must be positive, got {conflict_ratio}")
    n_syn = synthetic_count(num_train, conflict_ratio)
    if n_syn == 0:
        raise ConfigError(f"injection.conflict_ratio={conflict_ratio} of {num_train} training samples rounds to 0 "
                          f"synthetic samples; raise the ratio")
    if originals == "non_topk":
        keep = np.ones(num_train, dtype=bool)
        keep[topk] = False
        candidates = np.flatnonzero(keep)
        where = "the training rows outside the top-K set"
    elif originals == "aligned":
        if labels is None or biases is None:
            raise ConfigError("injection.originals=aligned needs the training labels and bias labels")
        labels, biases = np.asarray(labels).reshape(-1), np.asarray(biases).reshape(-1)
        if len(labels) != num_train or len(biases) != num_train:
            raise ConfigError(f"labels ({len(labels)}) and biases ({len(biases)}) must have num_train={num_train} entries")
        candidates = np.flatnonzero(labels == biases)
        where = "the bias-aligned training rows (label == bias)"
    else:
        raise ConfigError(f"injection.originals must be non_topk or aligned, got {originals!r}")
    if len(candidates) == 0:
        raise ConfigError(f"no candidate originals: {where} are empty")

    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5EED]))
    content_index = rng.integers(0, len(topk), size=n_syn, dtype=np.int64)
    original_index = rng.choice(candidates, size=n_syn, replace=n_syn > len(candidates)).astype(np.int64)
    pair_id = np.arange(n_syn, dtype=np.int64)
    return pa.Table.from_arrays([pa.array(pair_id), pa.array(original_index), pa.array(content_index),
                                 pa.array(pair_seeds(seed, pair_id))], schema=MANIFEST_SCHEMA)
