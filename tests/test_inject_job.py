"""Stage 3 job: manifest, synthetic Parquet format, and the Ray Data injection job
(full run, equality with the engine, resume, an actor killed mid-job)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffinject.config.schema import InjectionConfig
from diffinject.core.errors import ConfigError, DataError
from diffinject.data.parquet import concat_splits, conversion_counts, load_split
from diffinject.stages.inject.manifest import build_manifest
from diffinject.stages.inject.synthetic import (PARTS, SYNTHETIC_SCHEMA, batch_table, checkpoint_hash, finalize,
                                                part_files, write_part)

NUM_TRAIN, K, SIZE = 24, 4, 32
CFG = InjectionConfig(inversion_steps=3, generation_steps=3, batch_size=4, t_edit=300, t_boost=400,
                      conflict_ratio=0.5)  # 12 pairs, 3 batches; boosting on, so the seeds matter


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(NUM_TRAIN, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, size=NUM_TRAIN)
    biases = np.where(rng.random(NUM_TRAIN) < 0.7, labels, (labels + 1) % 3)
    ids = np.asarray([f"img-{i:03d}" for i in range(NUM_TRAIN)], dtype=object)
    topk = np.asarray([5, 9, 13, 17])
    return dict(images=images, labels=labels, biases=biases, ids=ids, topk=topk)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from diffinject.nets.diffusion import build_unet, get_preset
    from diffinject.nets.diffusion.checkpoint import unet_checkpoint_bytes

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "unet.pt"
    path.write_bytes(unet_checkpoint_bytes(build_unet("tiny_32").state_dict(), get_preset("tiny_32"), 0, {}))
    return path


def _manifest(d, **kw):
    return build_manifest(NUM_TRAIN, d["topk"], d["labels"], d["biases"], kw.pop("conflict_ratio", CFG.conflict_ratio),
                          **kw)


def _run(d, checkpoint, out, manifest, **kw):
    from diffinject.cluster.inject_job import run_injection_job

    t = d["topk"]
    return run_injection_job(manifest, d["images"], d["ids"], d["labels"], d["biases"], d["images"][t], d["ids"][t],
                             d["labels"][t], d["biases"][t], checkpoint, CFG, out, num_actors=kw.pop("num_actors", 1),
                             **kw)


def _final(out):
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("train-*.parquet"))])


# ---------------------------------------------------------------- manifest (no Ray)

def test_manifest_counts_ranges_determinism(data):
    m = _manifest(data, seed=3)
    assert m.column_names == ["pair_id", "original_index", "content_index", "seed"]
    assert m.num_rows == round(0.5 * NUM_TRAIN)
    assert m["pair_id"].to_pylist() == list(range(m.num_rows))
    orig, cont = m["original_index"].to_numpy(), m["content_index"].to_numpy()
    assert orig.min() >= 0 and orig.max() < NUM_TRAIN and cont.min() >= 0 and cont.max() < K
    assert not np.isin(orig, data["topk"]).any()          # non_topk: never a top-K original
    assert len(np.unique(orig)) == len(orig)              # enough candidates: no repeats
    assert len(np.unique(m["seed"].to_numpy())) == m.num_rows and (m["seed"].to_numpy() >= 0).all()
    assert m.equals(_manifest(data, seed=3))
    other = _manifest(data, seed=4)
    assert not np.array_equal(other["seed"].to_numpy(), m["seed"].to_numpy())
    big = _manifest(data, conflict_ratio=2.0)             # more pairs than candidates: with replacement
    assert big.num_rows == 48 and not np.isin(big["original_index"].to_numpy(), data["topk"]).any()
    # a pair's seed depends on (seed, pair_id) only, not on the manifest's size
    assert np.array_equal(big["seed"].to_numpy()[:12], _manifest(data)["seed"].to_numpy())


def test_manifest_aligned_flag_and_errors(data):
    m = _manifest(data, originals="aligned")
    orig = m["original_index"].to_numpy()
    assert (data["labels"][orig] == data["biases"][orig]).all()
    with pytest.raises(ConfigError, match="top-K set is empty"):
        build_manifest(NUM_TRAIN, [], data["labels"], data["biases"], 0.5)
    with pytest.raises(ConfigError, match="rounds to 0"):
        build_manifest(NUM_TRAIN, data["topk"], data["labels"], data["biases"], 0.01)
    with pytest.raises(ConfigError, match="no candidate originals"):
        build_manifest(4, [0, 1, 2, 3], None, None, 0.5)
    with pytest.raises(ConfigError, match="no candidate originals"):
        build_manifest(3, [0], [0, 1, 2], [1, 2, 0], 1.0, originals="aligned")
    with pytest.raises(ConfigError, match="non_topk or aligned"):
        build_manifest(NUM_TRAIN, data["topk"], data["labels"], data["biases"], 0.5, originals="conflicting")


# ---------------------------------------------------------------- synthetic format (no Ray)

def _fake_part(d, parts, pair_ids, value=7):
    n = len(pair_ids)
    images = np.full((n, SIZE, SIZE, 3), value, dtype=np.uint8)
    prov = dict(gamma=0.9, t_edit=300, inversion_steps=3, generation_steps=3, checkpoint_hash="0" * 16,
                label_from="content")
    t = d["topk"]
    table = batch_table(pair_ids, np.arange(n), np.arange(n) % K, np.arange(n), images, d["ids"], d["labels"],
                        d["biases"], d["ids"][t], d["labels"][t], d["biases"][t], prov)
    return write_part(parts, table)


@pytest.mark.parametrize("label_from", ["content", "original"])
def test_synthetic_rows_take_label_and_bias_as_label_from_says(data, label_from):
    d, t, n = data, data["topk"], 8
    original_index, content_index = np.arange(n) + 2, np.arange(n) % K
    prov = dict(gamma=0.9, t_edit=300, inversion_steps=3, generation_steps=3, checkpoint_hash="0" * 16,
                label_from=label_from)
    table = batch_table(np.arange(n), original_index, content_index, np.arange(n),
                        np.zeros((n, SIZE, SIZE, 3), np.uint8), d["ids"], d["labels"], d["biases"], d["ids"][t],
                        d["labels"][t], d["biases"][t], prov)
    orig_label, orig_bias = d["labels"][original_index], d["biases"][original_index]
    cont_label, cont_bias = d["labels"][t][content_index], d["biases"][t][content_index]
    label, bias = (orig_label, cont_bias) if label_from == "original" else (cont_label, orig_bias)
    assert not np.array_equal(orig_label, cont_label) and not np.array_equal(orig_bias, cont_bias)  # the test can tell
    assert table["label"].to_numpy().tolist() == label.tolist()
    assert table["bias"].to_numpy().tolist() == bias.tolist()
    assert table["aligned"].to_pylist() == (label == bias).tolist()
    assert table["label_from"].to_pylist() == [label_from] * n and table.schema == SYNTHETIC_SCHEMA


def test_finalize_dedupes_and_checks(data, tmp_path):
    out = tmp_path / "syn"
    _fake_part(data, out / PARTS, [0, 1, 2])
    _fake_part(data, out / PARTS, [2, 3])                  # pair 2 written twice (a retried batch)
    with pytest.raises(DataError, match="1 of 5 synthetic pairs are missing"):
        finalize(out, range(5))
    finalize(out, range(4))
    split = load_split(out, "train")
    assert list(split.ids) == [f"syn-{i:07d}" for i in range(4)]
    assert conversion_counts(out) == {"train": 4, "valid": 0, "test": 0}
    assert len(load_split(out, "valid")) == 0 and not (out / PARTS).exists()


# ---------------------------------------------------------------- the Ray job

def test_job_writes_every_pair_once_and_matches_engine(ray_session, data, checkpoint, tmp_path, capsys):
    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
    from diffinject.stages.inject.engine import InjectionEngine

    m = _manifest(data)
    out = _run(data, checkpoint, tmp_path / "syn", m)
    assert "[inject] 12/12 pairs (100%)" in capsys.readouterr().out
    split = load_split(out, "train")
    table = _final(out)
    n = m.num_rows
    assert conversion_counts(out)["train"] == n == len(split)
    assert table["pair_id"].to_pylist() == list(range(n))  # each pair exactly once, sorted
    cont, orig = m["content_index"].to_numpy(), m["original_index"].to_numpy()
    t = data["topk"]
    assert np.array_equal(split.labels, data["labels"][t][cont])
    assert np.array_equal(split.biases, data["biases"][orig])
    assert table["original_id"].to_pylist() == list(data["ids"][orig])
    assert table["content_id"].to_pylist() == list(data["ids"][t][cont])
    assert set(table["checkpoint_hash"].to_pylist()) == {checkpoint_hash(checkpoint)}
    assert set(table["label_from"].to_pylist()) == {"content"}
    assert split.images.shape == (n, SIZE, SIZE, 3)
    # the job's images are the engine's, pair by pair
    unet, _ = load_unet_checkpoint(checkpoint)
    engine = InjectionEngine(unet, CFG, data["images"][t], "cpu", t_edit=CFG.t_edit)
    expected = engine.generate(data["images"][orig], cont.copy(), m["seed"].to_numpy().copy())
    assert np.array_equal(split.images, expected)
    # stage 4 can train on original + synthetic together
    assert len(concat_splits(split, split)) == 2 * n
    # a finished job is not recomputed
    _run(data, checkpoint, out, m)
    assert "already holds this job" in capsys.readouterr().out


def test_job_resumes_only_missing_pairs(ray_session, data, checkpoint, tmp_path):
    m = _manifest(data)
    out = tmp_path / "syn"
    _run(data, checkpoint, out, m, finalize_output=False)
    parts = part_files(out / PARTS)
    assert len(parts) == 3
    ids_of = {p: pq.read_table(p)["pair_id"].to_pylist() for p in parts}
    deleted = ids_of[parts[1]]
    parts[1].unlink()
    # mark the pairs of another part: if they were recomputed, the marks would disappear
    marked = pq.read_table(parts[0])
    sentinel = bytes(SIZE * SIZE * 3)
    marked = marked.set_column(marked.schema.get_field_index("pixels"), "pixels",
                               pa.array([sentinel] * marked.num_rows, type=pa.binary()))
    pq.write_table(marked, parts[0])
    _run(data, checkpoint, out, m, finalize_output=False)
    new = [p for p in part_files(out / PARTS) if p not in parts]
    assert sorted(sum((pq.read_table(p)["pair_id"].to_pylist() for p in new), [])) == sorted(deleted)
    _run(data, checkpoint, out, m)                        # nothing left to compute: finalize only
    table = _final(out)
    assert table["pair_id"].to_pylist() == list(range(m.num_rows))
    pixels = dict(zip(table["pair_id"].to_pylist(), table["pixels"].to_pylist()))
    assert all(pixels[p] == sentinel for p in ids_of[parts[0]])
    assert all(pixels[p] != sentinel for p in deleted + ids_of[parts[2]])


def test_job_survives_an_actor_killed_mid_job(ray_session, data, checkpoint, tmp_path):
    m = _manifest(data)
    marker = tmp_path / "actor-died"
    out = _run(data, checkpoint, tmp_path / "syn", m, fail_once_marker=str(marker))
    assert marker.is_file()                               # an actor did die in a batch
    table = _final(out)
    assert table["pair_id"].to_pylist() == list(range(m.num_rows))
    assert len(load_split(out, "train")) == m.num_rows


def test_cpu_actors_share_the_cluster_but_fit_on_a_node():
    from diffinject.cluster.inject_job import actor_cpus

    assert actor_cpus(4, 2, [2, 2]) == 2        # one actor per 2-CPU node
    assert actor_cpus(3, 1, [2, 1]) == 2        # a 3-CPU share fits no node: the largest node's 2
    assert actor_cpus(16, 2, [8, 4, 4]) == 8
    assert actor_cpus(1, 4, [1]) == 1           # never below one CPU


def test_gpu_actors_take_their_nodes_cpu_share_per_gpu():
    from diffinject.cluster.inject_job import gpu_actor_cpus

    assert gpu_actor_cpus([(16, 1)]) == 16                # one GPU: the node's CPUs, for host noise
    assert gpu_actor_cpus([(16, 8), (0, 0), (32, 0)]) == 2  # CPU-only nodes hold no GPU actor
    assert gpu_actor_cpus([(16, 2), (8, 4)]) == 2           # the smallest share fits on either GPU node
    assert gpu_actor_cpus([(2, 4)]) == 1                    # never below one CPU
