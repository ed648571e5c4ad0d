"""A² and AmpliBias cells end to end on the artifact cache, at toy sizes: every stage built once,
nested MLflow runs, synthetic sets of N_syn images with the right labels, and stage 1 shared
with DiffInject where the top-K sets are the same."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffinject.cluster.train_jobs import load_topk
from diffinject.config.builder import experiment_config
from diffinject.config.overrides import apply_overrides
from diffinject.data.parquet import load_split
from diffinject.experiment.cache import ArtifactCache
from diffinject.experiment.cells import CellRunner
from diffinject.experiment.run_context import dataset_folder
from diffinject.tracking.client import Tracker

TINY = ["classifier.num_steps=6", "classifier.eval_every=3", "bias.classifier.num_steps=6",
        "bias.classifier.eval_every=3", "injection.conflict_ratio=0.01",
        "stylegan2.num_steps=2", "stylegan2.batch_size=4", "stylegan2.adapt_steps=2", "stylegan2.adapt_batch_size=3",
        "stylegan2.project_steps=2", "stylegan2.project_batch_size=8", "stylegan2.sample_every=0",
        "stylegan2.checkpoint_every=2", "stylegan2.log_every=1",
        "fastgan.num_steps=2", "fastgan.batch_size=4", "fastgan.sample_every=0", "fastgan.checkpoint_every=2",
        "fastgan.log_every=1"]


@pytest.fixture
def tiny_cfg(digits_root, tmp_path):
    cfg = experiment_config("colored_digits", "1", quick=True)
    cfg.data.data_root, cfg.data.cache_root = str(digits_root / "data"), str(digits_root / "cache")
    cfg.run.storage_path, cfg.run.experiment = str(tmp_path / "ray_results"), "gan-cells"
    return apply_overrides(cfg, TINY)


def _synthetic(runner: CellRunner, cfg, method: str):
    from diffinject.experiment.cache import artifact_key

    art = runner.cache.lookup("stage3", artifact_key("stage3", runner.stage3_material(cfg, method)))
    folder = art.path / "synthetic"
    table = pq.read_table(sorted(folder.glob("train-*.parquet"))[0])
    return load_split(folder, "train"), table, art


def test_a2_and_amplibias_cells_build_their_stages_once(ray_session, tiny_cfg, tmp_path, mlflow_uri):
    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), Tracker())
    a2 = runner.cell(tiny_cfg, "a2")
    assert a2.stages == {"stage1": "built", "stylegan2_source": "built", "stylegan2_adapted": "built",
                         "stage3": "built", "stage4": "built", "cell": "built"}
    # stage 1 is DiffInject's top-10 per class (release protocol), which AmpliBias's quick preset shares
    amplibias = runner.cell(tiny_cfg, "amplibias")
    assert amplibias.stages == {"stage1": "reused", "fastgan_classes": "built", "stage3": "built",
                                "stage4": "built", "cell": "built"}
    assert runner.cell(tiny_cfg, "a2").cached and runner.cell(tiny_cfg, "amplibias").cached

    train = load_split(dataset_folder(tiny_cfg), "train")
    n_syn = round(0.01 * len(train))
    synthetic, table, art = _synthetic(runner, tiny_cfg, "a2")
    assert len(synthetic) == n_syn and synthetic.images.shape[1:] == train.images.shape[1:]
    originals = {i: k for k, i in enumerate(train.ids)}
    rows = [originals[o] for o in table["original_id"].to_pylist()]
    assert (synthetic.labels == train.labels[rows]).all()  # A² keeps the original's label
    assert set(table["generator"].to_pylist()) == {"stylegan2_adapt"}
    assert (art.path / "triptych.png").is_file() and (art.path / "quality_grid.png").is_file()
    assert "quality.label_fidelity" in a2.metrics and "quality.label_fidelity" in amplibias.metrics

    synthetic, table, _ = _synthetic(runner, tiny_cfg, "amplibias")
    topk_classes = np.unique(load_topk(runner.stage1(tiny_cfg).path)["labels"])
    counts = np.bincount(synthetic.labels, minlength=len(topk_classes))
    assert len(synthetic) == n_syn and set(np.unique(synthetic.labels)) <= set(topk_classes)
    assert counts.max() - counts[counts > 0].min() <= 1  # spread evenly over the classes

    exp = runner.tracker.client.get_experiment_by_name("gan-cells").experiment_id
    generators = runner.tracker.client.search_runs([exp], "tags.`diffinject.role` = 'generator'")
    assert sorted(r.data.tags["stage.algorithm"] for r in generators) == ["cdc_adaptation", "fastgan", "stylegan2"]
    assert all(r.data.tags.get("mlflow.parentRunId") for r in generators)


def test_starting_generators_from_the_gan_train_command_start_the_cells(ray_session, digits_root, tiny_cfg, tmp_path,
                                                                        mlflow_uri, monkeypatch, capsys):
    """`diffinject gan train` makes A²'s source and AmpliBias's per-class starting points; a cell
    given them (stylegan2.source_checkpoint, fastgan.init_checkpoint) imports the source strictly,
    keyed by its hash, instead of training one, and starts each class's FastGAN from the file."""
    from diffinject.experiment.keys import given_source
    from diffinject.cli.main import main
    from diffinject.config.builder import check_shipped_generators, without_shipped_generators
    from diffinject.core.errors import CheckpointError, ConfigError
    from diffinject.nets.gan.checkpoint import read_gan_checkpoint
    from diffinject.core.integrity import file_digest

    monkeypatch.chdir(tmp_path)
    argv = ["--quick", "--dataset", "colored_digits", "--data-root", str(digits_root / "data"), "--cache-root",
            str(digits_root / "cache"), "--experiment", "t-gan-cli"]
    argv += [arg for item in TINY if item.startswith(("stylegan2.", "fastgan.")) for arg in ("--set", item)]
    assert main(["gan", "train", "--job", "stylegan2_source", "--out", str(tmp_path / "source"), *argv,
                 "--set", "stylegan2.keep_checkpoints=true"]) == 0
    assert main(["gan", "train", "--job", "fastgan_init", "--out", str(tmp_path / "init"), *argv]) == 0
    source, init = tmp_path / "source" / "generator.pt", tmp_path / "init" / "generator.pt"
    assert sorted(read_gan_checkpoint(source, "stylegan2")["nets"]) == ["discriminator", "generator"]
    classes = sorted(set(load_split(dataset_folder(tiny_cfg), "train").labels.tolist()))
    assert sorted(read_gan_checkpoint(init, "fastgan")["nets"]) == sorted(
        name for c in classes for name in (f"class_{c}", f"class_{c}_discriminator"))
    assert "generator file:" in capsys.readouterr().out

    cfg = apply_overrides(tiny_cfg, [f"stylegan2.source_checkpoint={source}", f"fastgan.init_checkpoint={init}"])
    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), Tracker())
    assert runner.stylegan2_source_material(cfg) == {"checkpoint_sha256": file_digest(source), "preset": "quick_32"}
    assert runner.fastgan_material(cfg)["init_sha256"] == file_digest(init)
    assert runner.cell(cfg, "a2").stages["stylegan2_source"] == "built"
    assert runner.cell(cfg, "amplibias").stages["fastgan_classes"] == "built"
    exp = runner.tracker.client.get_experiment_by_name("gan-cells").experiment_id
    generators = runner.tracker.client.search_runs([exp], "tags.`diffinject.role` = 'generator'")
    # the source was imported, not trained
    assert sorted(r.data.tags["stage.algorithm"] for r in generators) == ["cdc_adaptation", "fastgan",
                                                                         "imported_checkpoint"]

    with pytest.raises(CheckpointError, match="holds 'fastgan' generators"):  # read as a source: refused
        runner.cell(apply_overrides(tiny_cfg, [f"stylegan2.source_checkpoint={init}"]), "a2")
    with pytest.raises(ConfigError, match="no such file"):
        apply_overrides(tiny_cfg, [f"stylegan2.source_checkpoint={tmp_path / 'nope.pt'}"])
    with pytest.raises(ConfigError, match="ships no stylegan2_source checkpoint for colored_digits"):
        given_source(apply_overrides(tiny_cfg, ["stylegan2.source_checkpoint=shipped"]))
    shipped = apply_overrides(tiny_cfg, ["stylegan2.source_checkpoint=shipped"])
    with pytest.raises(ConfigError, match="so stylegan2.batch_size=4, stylegan2.num_steps=2 would change nothing; add --retrain-generators"):
        check_shipped_generators([shipped])
    cleared = without_shipped_generators(shipped)
    assert cleared.stylegan2.source_checkpoint == cleared.fastgan.init_checkpoint == ""
    check_shipped_generators([cleared])
