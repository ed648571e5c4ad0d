"""What the GAN stage-3 kinds generate (counts, labels, seeds), their rows, and the keys of their
stages in the artifact cache."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

from diffinject.config.builder import experiment_config
from diffinject.config.overrides import apply_overrides
from diffinject.core.errors import ConfigError
from diffinject.data.parquet import load_split
from diffinject.experiment.cache import ArtifactCache, artifact_key
from diffinject.experiment.cells import CellRunner
from diffinject.methods import stage1_config
from diffinject.stages.inject.manifest import build_manifest, pair_seeds
from diffinject.stages.inject.synthetic import PARTS, finalize, write_part
from diffinject.stages.synthesis.sets import GAN_SCHEMA, class_manifest, gan_batch_table, projection_manifest


def test_class_manifest_spreads_n_syn_evenly_over_the_classes_in_order():
    table = class_manifest([3, 1, 1, 7, 3], num_train=1000, conflict_ratio=0.011, seed=5)  # N_syn = 11
    labels = table["label"].to_numpy()
    assert table.num_rows == 11 and list(table["pair_id"].to_numpy()) == list(range(11))
    assert [int((labels == c).sum()) for c in (1, 3, 7)] == [4, 4, 3]  # the first 11 mod 3 classes get one more
    assert list(labels) == sorted(labels)
    assert (table["original_index"].to_numpy() == -1).all()
    assert (table["seed"].to_numpy() == pair_seeds(5, np.arange(11))).all()
    with pytest.raises(ConfigError, match="rounds to 0"):
        class_manifest([0, 1], num_train=10, conflict_ratio=0.01, seed=0)


def test_projection_manifest_draws_the_injection_originals_with_their_own_labels():
    rng = np.random.default_rng(0)
    labels, biases = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    topk = np.arange(0, 500, 25)
    table = projection_manifest(labels, topk, biases, 0.1, "non_topk", seed=3)
    pairs = build_manifest(500, topk, labels, biases, 0.1, "non_topk", 3)
    original = table["original_index"].to_numpy()
    assert (original == pairs["original_index"].to_numpy()).all()
    assert (table["label"].to_numpy() == labels[original]).all()
    assert not np.isin(original, topk).any()


def test_gan_rows_finalize_into_a_readable_set_with_unknown_bias(tmp_path):
    out = tmp_path / "set"
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    for rows in (slice(0, 2), slice(2, 4)):
        ids = np.arange(4)[rows]
        write_part(out / PARTS, gan_batch_table(ids, [1, 2, 3, 4][rows], ids * 10, images[rows],
                                                ["", ""], "fastgan", "ab" * 8, "generator"))
    finalize(out, np.arange(4), schema=GAN_SCHEMA)
    split = load_split(out, "train")
    assert (split.images == images).all() and list(split.labels) == [1, 2, 3, 4]
    assert (split.biases == -1).all() and not split.aligned.any()
    with pytest.raises(ValueError, match="uint8"):
        gan_batch_table([0], [0], [0], images[:1].astype(np.float32), [""], "fastgan", "", "generator")


@pytest.fixture
def runner(tmp_path, monkeypatch):
    """A runner whose data fingerprints are a constant (keys here differ by config only) and that
    never tracks anything."""
    import diffinject.experiment.keys as keys

    monkeypatch.setattr(keys.StageKeys, "data_fingerprint", lambda self, cfg, diffusion=False: "data")
    return CellRunner(ArtifactCache(tmp_path / "artifacts"), tracker=SimpleNamespace())


@pytest.fixture
def cfg(digits_root, tmp_path):
    cfg = experiment_config("colored_digits", "1", quick=True)
    cfg.data.data_root, cfg.data.cache_root = str(digits_root / "data"), str(digits_root / "cache")
    return cfg


def _keys(runner: CellRunner, cfg) -> dict[str, str]:
    return {"source": artifact_key("stylegan2_source", runner.stylegan2_source_material(cfg)),
            "adapted": artifact_key("stylegan2_adapted", runner.stylegan2_adapted_material(cfg)),
            "fastgan": artifact_key("fastgan_classes", runner.fastgan_material(cfg)),
            "a2": artifact_key("stage3", runner.stage3_material(cfg, "a2")),
            "amplibias": artifact_key("stage3", runner.stage3_material(cfg, "amplibias")),
            "diffinject": artifact_key("stage3", runner.stage3_material(cfg, "diffinject"))}


@pytest.mark.parametrize("override, changed", [
    ("stylegan2.num_steps=7", {"source", "adapted", "a2"}),
    ("stylegan2.seed=1", {"source", "adapted", "a2"}),
    ("stylegan2.adapt_steps=7", {"adapted", "a2"}),
    ("stylegan2.project_steps=7", {"a2"}),
    ("stylegan2.sample_every=7", set()),
    ("fastgan.num_steps=7", {"fastgan", "amplibias"}),
    ("fastgan.k_per_class=5", {"fastgan", "amplibias"}),
    ("fastgan.log_every=7", set()),
    ("bias.k=5", {"adapted", "a2", "diffinject"}),          # AmpliBias keeps its own top-K per class
    ("injection.conflict_ratio=0.2", {"a2", "amplibias", "diffinject"}),
    ("injection.gamma=0.5", {"diffinject"}),
    ("run.seed=1", {"adapted", "fastgan", "a2", "amplibias", "diffinject"}),
])
def test_each_gan_stage_key_follows_exactly_the_fields_it_reads(runner, cfg, override, changed):
    before = _keys(runner, cfg)
    after = _keys(runner, apply_overrides(copy.deepcopy(cfg), [override]))
    assert {name for name in before if before[name] != after[name]} == changed


def test_amplibias_stage1_is_its_own_top_k_per_class(cfg):
    cfg.fastgan.k_per_class = 7
    s1 = stage1_config(cfg, "amplibias")
    assert (s1.bias.scope, s1.bias.k) == ("per_class", 7) and s1.bias.classifier == cfg.bias.classifier
    assert stage1_config(cfg, "a2") is cfg and cfg.bias.k == 10


def test_a_missing_vgg16_file_is_an_error_before_anything_trains(cfg, tmp_path, monkeypatch):
    from diffinject.core.errors import CheckpointError
    from diffinject.experiment.run_context import check_against_data

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    check_against_data(cfg, ("a2", "amplibias"))  # the quick preset measures with the mean squared error
    cfg.fastgan.distance = "lpips_vgg"
    check_against_data(cfg, ("a2",))  # only AmpliBias would use it
    with pytest.raises(CheckpointError, match=r"fastgan.distance=lpips_vgg needs .*vgg16-.*\.pth.*empty-hub"):
        check_against_data(cfg, ("a2", "amplibias"))
