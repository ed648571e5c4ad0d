"""Table cells on the artifact cache: DiffInject end to end, shared stages built once (also by
cells running in parallel), an interrupted cell resuming with only its unfinished stages,
and a miniature full-mode table1 run with a guided-diffusion checkpoint."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import json

import pytest
import torch

from diffinject.config.builder import experiment_config
from diffinject.config.overrides import apply_overrides
from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.data.layout import write_layout
from diffinject.data.parquet import load_split
from diffinject.data.registry import get_dataset_spec
from diffinject.experiment.cache import ArtifactCache, artifact_key
from diffinject.experiment.cells import CellRunner
from diffinject.experiment.run_context import with_seed
from diffinject.tracking.client import Tracker
from test_guided_diffusion import random_openai_state
from test_layout import make_split

TINY = ["classifier.num_steps=6", "classifier.eval_every=3", "bias.classifier.num_steps=6",
        "bias.classifier.eval_every=3", "diffusion.preset=tiny_32", "diffusion.num_steps=3", "diffusion.batch_size=8",
        "diffusion.sample_every=0", "injection.inversion_steps=3", "injection.generation_steps=3",
        "injection.conflict_ratio=0.01", "injection.batch_size=8"]


@pytest.fixture
def tiny_cfg(digits_root, tmp_path):
    cfg = experiment_config("colored_digits", "1", quick=True)
    cfg.data.data_root, cfg.data.cache_root = str(digits_root / "data"), str(digits_root / "cache")
    cfg.run.storage_path, cfg.run.experiment = str(tmp_path / "ray_results"), "cells"
    return apply_overrides(cfg, TINY)


def _runs(tracker: Tracker, experiment: str, role: str):
    exp = tracker.client.get_experiment_by_name(experiment)
    return tracker.client.search_runs([exp.experiment_id], f"tags.`diffinject.role` = '{role}'")


def _status(tracker: Tracker, run_id: str) -> str:
    return tracker.client.get_run(run_id).info.status


def test_diffinject_cell_builds_every_stage_once_and_nests_them(ray_session, tiny_cfg, tmp_path, mlflow_uri):
    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), Tracker())
    exp = runner.tracker.experiment("cells")
    stage1_key = artifact_key("stage1", runner.stage1_material(tiny_cfg))
    dead = runner.tracker.start_run(exp, "stage1 of a killed process", {"artifact.key": stage1_key})
    first = runner.cell(tiny_cfg, "diffinject")
    assert _status(runner.tracker, dead) == "KILLED"  # its key's rebuild found it RUNNING
    assert first.stages == {"stage1": "built", "stage2": "built", "stage3": "built", "stage4": "built",
                            "cell": "built"}
    # the synthetic set has N_syn = round(0.01 * 1200) samples (labelled by their originals: release protocol)
    s3 = runner.stage3(tiny_cfg, runner.stage1(tiny_cfg), runner.stage2(tiny_cfg))
    synthetic = load_split(s3.path / "synthetic", "train")
    assert len(synthetic) == 12 == s3.meta["metrics"]["n_syn"] and (s3.path / "triptych.png").is_file()
    topk_labels = json.loads((runner.stage1(tiny_cfg).path / "topk.json").read_text())["labels"]
    assert set(synthetic.labels.tolist()) <= set(topk_labels)
    # one parent with the four stage runs nested under it
    tracker = Tracker()
    parent = tracker.client.get_run(first.run_id)
    assert parent.data.tags["diffinject.role"] == "cell" and parent.data.metrics["test_acc"] == first.metrics["test_acc"]
    assert parent.data.tags["protocol"] == parent.data.params["protocol"] == "release"
    algorithms = {"stage1": "gce", "stage2": "p2_diffusion", "stage3": "h_space_injection", "stage4": "diffinject"}
    note = parent.data.tags["mlflow.note.content"]
    for role, algorithm in algorithms.items():
        (run,) = _runs(tracker, "cells", role)
        assert run.data.tags["mlflow.parentRunId"] == first.run_id, role
        # one tag scheme: the cell's method, the stage's own algorithm, the stage's artifact key
        assert run.data.tags["method"] == "diffinject" and run.data.tags["stage.algorithm"] == algorithm, role
        key = parent.data.tags["artifact.key"] if role == "stage4" else parent.data.tags[f"{role}.key"]
        assert run.data.tags["artifact.key"] == key, role
        assert f"[{run.info.run_name}](#/experiments/{exp}/runs/{run.info.run_id})" in note, role
    # a second seed reuses the diffusion model only; a rerun of the first reuses everything
    second = runner.cell(with_seed(tiny_cfg, 1), "diffinject")
    assert second.stages["stage2"] == "reused" and second.stages["stage1"] == "built"
    assert tracker.client.get_run(second.run_id).data.tags["stage2.run_id"] == parent.data.tags["stage2.run_id"]
    second_note = tracker.client.get_run(second.run_id).data.tags["mlflow.note.content"]
    assert f"(#/experiments/{exp}/runs/{parent.data.tags['stage2.run_id']}) | reused" in second_note  # the shared one
    again = runner.cell(tiny_cfg, "diffinject")
    assert again.cached and again.metrics == first.metrics and again.run_id == first.run_id
    assert len(_runs(tracker, "cells", "stage2")) == 1
    # the synthetic set's quality report: in the stage-3 artifact and run, the cell's run and metrics
    quality = {k: v for k, v in s3.meta["metrics"].items() if k.startswith("quality.")}
    assert {"quality.label_fidelity", "quality.conflict_rate", "quality.useful_rate", "quality.shows_original",
            "quality.shows_content", "quality.class_oracle_acc", "quality.bias_oracle_acc"} <= set(quality)
    assert quality["quality.class_oracle_acc"] > 0.9
    stage3_run = tracker.client.get_run(s3.meta["run_id"])
    assert {k: stage3_run.data.metrics[k] for k in quality} == pytest.approx(quality)
    assert "quality_grid.png" in {a.path for a in tracker.list_artifacts(stage3_run.info.run_id)}
    assert {k: first.metrics[k] for k in quality} == quality
    assert {k: parent.data.metrics[k] for k in quality} == pytest.approx(quality)
    oracle = runner.oracles(tiny_cfg)
    assert oracle.reused and len(list((tmp_path / "artifacts" / "oracle").glob("*/ARTIFACT.json"))) == 1
    # a stage-3 artifact and cell from before the quality report: scored when the cell is reused
    for folder in (s3.path, tmp_path / "artifacts" / "cell" / artifact_key("cell", runner.cell_material(tiny_cfg,
                                                                                                         "diffinject"))):
        marker = json.loads((folder / "ARTIFACT.json").read_text())
        marker["meta"]["metrics"] = {k: v for k, v in marker["meta"]["metrics"].items() if not k.startswith("quality.")}
        (folder / "ARTIFACT.json").write_text(json.dumps(marker))
    old = runner.cell(tiny_cfg, "diffinject")
    assert old.cached and {k: old.metrics[k] for k in quality} == pytest.approx(quality)


def test_a_cell_reused_in_another_experiment_gets_a_run_there(ray_session, tiny_cfg, tmp_path, mlflow_uri):
    """Ablations and table1 share the cache: each experiment's cell runs still cover its cells."""
    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), Tracker())
    built = runner.cell(tiny_cfg, "vanilla")
    other = copy.deepcopy(tiny_cfg)
    other.run.experiment = "elsewhere"
    linked = runner.cell(other, "vanilla")
    assert linked.cached and linked.run_id != built.run_id
    tracker = Tracker()
    (run,) = _runs(tracker, "elsewhere", "cell")
    assert run.info.run_id == linked.run_id and run.data.tags["cell.cached_from"] == built.run_id
    assert run.data.metrics["test_acc"] == built.metrics["test_acc"] and run.data.tags["method"] == "vanilla"
    assert run.data.params["method"] == "vanilla" and run.data.metrics["selected_step"] == built.metrics["selected_step"]
    origin = tracker.client.get_run(built.run_id)
    assert f"(#/experiments/{origin.info.experiment_id}/runs/{built.run_id})" in run.data.tags["mlflow.note.content"]
    assert runner.cell(other, "vanilla").run_id == linked.run_id and len(_runs(tracker, "elsewhere", "cell")) == 1
    assert runner.cell(tiny_cfg, "vanilla").run_id == built.run_id and len(_runs(tracker, "cells", "cell")) == 1


def test_an_interrupted_cell_redoes_only_its_unfinished_stages(ray_session, tiny_cfg, tmp_path, mlflow_uri,
                                                              monkeypatch):
    import diffinject.experiment.cells as cells

    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), Tracker())
    real = cells.run_stage3

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C during stage 3

    monkeypatch.setattr(cells, "run_stage3", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.cell(tiny_cfg, "diffinject")
    monkeypatch.setattr(cells, "run_stage3", real)
    resumed = runner.cell(tiny_cfg, "diffinject")
    assert resumed.stages == {"stage1": "reused", "stage2": "reused", "stage3": "built", "stage4": "built",
                              "cell": "built"}
    assert runner.cell(tiny_cfg, "diffinject").cached


def test_two_parallel_cells_train_the_shared_diffusion_model_once(ray_session, tiny_cfg, tmp_path, mlflow_uri):
    from diffinject.experiment.parallel_cells import RunnerSpec, run_cells

    spec = RunnerSpec(str(tmp_path / "artifacts"), mlflow_uri, {})
    Tracker().experiment("cells")  # created on the driver before the cells log (SQLite)
    seen = []
    results = run_cells(spec, [(with_seed(tiny_cfg, 0), "diffinject"), (with_seed(tiny_cfg, 1), "diffinject")], 2,
                        seen.append)
    assert len(results) == len(seen) == 2
    assert sorted(r.stages["stage2"] for r in results) == ["built", "reused"]
    assert all(r.stages["stage1"] == "built" for r in results)
    tracker = Tracker()
    assert len(_runs(tracker, "cells", "stage2")) == 1
    keys = {tracker.client.get_run(r.run_id).data.tags["stage2.key"] for r in results}
    assert len(keys) == 1


def test_a_rerun_marks_killed_the_runs_a_dead_process_left_running_under_its_key(ray_session, tiny_cfg, tmp_path,
                                                                                 mlflow_uri):
    """A SIGKILLed cell leaves its runs RUNNING; rebuilding that cell (under its key's lock) ends
    them KILLED, and leaves alone a RUNNING run of another key (maybe a live process's)."""
    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), Tracker())
    tracker, exp = runner.tracker, runner.tracker.experiment("cells")
    key = artifact_key("cell", runner.cell_material(tiny_cfg, "vanilla"))
    other = artifact_key("cell", runner.cell_material(with_seed(tiny_cfg, 1), "vanilla"))
    dead = tracker.start_run(exp, "vanilla (killed)", {"diffinject.role": "cell", "artifact.key": key})
    dead_stage4 = tracker.start_run(exp, "stage4 (killed)", {"diffinject.role": "stage4", "artifact.key": key},
                                    parent=dead)
    alive = tracker.start_run(exp, "vanilla seed 1 (running)", {"diffinject.role": "cell", "artifact.key": other})
    rerun = runner.cell(tiny_cfg, "vanilla")
    assert [_status(tracker, r) for r in (dead, dead_stage4, rerun.run_id, alive)] == \
        ["KILLED", "KILLED", "FINISHED", "RUNNING"]
    assert tracker.client.get_run(rerun.run_id).data.tags["artifact.key"] == key


def test_diffinject_cells_carry_their_protocol_as_a_tag_and_param():
    from diffinject.experiment.run_context import cell_params, cell_tags

    cfg = experiment_config("colored_digits", "1", quick=True, protocol="paper")
    assert cell_tags(cfg, "diffinject")["protocol"] == cell_params(cfg, "diffinject")["protocol"] == "paper"
    assert cell_params(cfg, "diffinject")["injection.protocol"] == "paper"
    assert "protocol" not in cell_tags(cfg, "vanilla") and "protocol" not in cell_params(cfg, "vanilla")


def test_checkpoint_for_an_unknown_file_or_dataset_is_an_error(tmp_path):
    from diffinject.experiment.cells import check_checkpoint_datasets

    with pytest.raises(CheckpointError, match="no such file"):
        CellRunner(ArtifactCache(tmp_path), Tracker(f"sqlite:///{tmp_path / 'm.db'}"), {"bffhq": str(tmp_path / "x.pt")})
    with pytest.raises(CheckpointError, match="is a folder; expected a checkpoint file"):
        CellRunner(ArtifactCache(tmp_path), Tracker(f"sqlite:///{tmp_path / 'm.db'}"), {"bffhq": str(tmp_path)})
    with pytest.raises(ConfigError, match="bffhq.*not among the datasets"):
        check_checkpoint_datasets({"bffhq": "x.pt"}, ["colored_digits"])


# ---- experiments/table1.py in full mode, miniature ----------------------------------------

@pytest.fixture
def table1():
    script = Path(__file__).resolve().parents[1] / "experiments" / "table1.py"
    spec = importlib.util.spec_from_file_location("table1", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_tiny_bffhq(root: Path) -> None:
    """BFFHQ in the released layout (bffhq/1pct/{align,conflict}/<class>, bffhq/valid, bffhq/test)."""
    spec = get_dataset_spec("bffhq")
    size = (32, 32)
    write_layout(root, spec, "1", make_split(spec, "", 12, 2, 0, size), make_split(spec, "v", 3, 3, 1, size),
                 make_split(spec, "t", 3, 3, 2, size))


def test_miniature_full_run_with_a_guided_diffusion_checkpoint(table1, ray_session, tmp_path, mlflow_uri,
                                                              monkeypatch, capsys):
    from diffinject.nets.diffusion import get_preset

    monkeypatch.chdir(tmp_path)
    _write_tiny_bffhq(tmp_path / "data")
    checkpoint = tmp_path / "bffhq_p2_tiny.pt"
    torch.save(random_openai_state(get_preset("tiny_32")), checkpoint)  # openai key layout
    argv = ["--datasets", "bffhq", "--ratios", "1", "--seeds", "0", "--methods", "vanilla", "diffinject",
            "--data-root", str(tmp_path / "data"), "--cache-root", str(tmp_path / "cache"),
            "--checkpoint", f"bffhq={checkpoint}", "--out", str(tmp_path / "results"),
            "--set", "diffusion.preset=tiny_32", "--set", "classifier.num_steps=2", "--set", "classifier.eval_every=1",
            "--set", "classifier.batch_size=8", "--set", "classifier.resize=32", "--set", "bias.k=4",
            "--set", "bias.classifier.num_steps=2", "--set", "bias.classifier.resize=32",
            "--set", "injection.inversion_steps=3", "--set", "injection.generation_steps=3",
            "--set", "injection.inject_grid=0", "--set", "injection.batch_size=8"]
    assert table1.main(argv) == 0
    out = capsys.readouterr().out
    md = (tmp_path / "results" / "table1.md").read_text()
    assert "BFFHQ 1%" in md and "(81.90)" in md and "(60.68)" in md  # the paper's numbers beside ours
    assert (tmp_path / "results" / "table1.csv").read_text().count("\nbffhq,1,") == 2
    # BFFHQ's column is its bias-conflicting test images' accuracy, under both selections
    assert "BFFHQ 1% (conflicting)" in md and "As the references report" in md
    import csv as csv_module

    for row in csv_module.DictReader((tmp_path / "results" / "table1.csv").open()):
        assert row["unbiased_mean"] == row["conflicting_mean"] and row["whole_test_mean"] and row["best_test_mean"]
    assert (tmp_path / "results" / "table1.png").stat().st_size > 0
    assert "[2/2" in out and "stage2 built" in out
    tracker = Tracker()
    (stage2,) = _runs(tracker, "table1", "stage2")
    assert stage2.data.tags["checkpoint_format"] == "guided-diffusion"
    (stage3,) = _runs(tracker, "table1", "stage3")
    assert stage3.data.metrics["n_syn"] == round(0.6 * 28)  # BFFHQ's conflict ratio 0.6 of 28 training images
    (table_run,) = _runs(tracker, "table1", "table")
    names = {a.path for a in tracker.list_artifacts(table_run.info.run_id)}
    assert {"table1.md", "table1.csv", "table1.png"} <= names
    # the same command again recomputes nothing
    assert table1.main(argv) == 0
    assert "this run built: nothing; 2 of 2 cells came from the cache" in capsys.readouterr().out


def test_missing_dataset_folder_names_the_layout_and_the_source(table1, tmp_path, capsys):
    assert table1.main(["--datasets", "bffhq", "--ratios", "1", "--data-root", str(tmp_path / "nodata"),
                        "--methods", "vanilla"]) == 2
    err = capsys.readouterr().err
    assert "bffhq" in err and "<id>_<label>_<bias>.png" in err and "download the BFFHQ release" in err


def test_bad_checkpoint_argument_is_an_error(table1, capsys):
    assert table1.main(["--quick", "--checkpoint", "colored_digits"]) == 2
    assert "expected DATASET=PATH" in capsys.readouterr().err


def test_train_cli_refuses_diffinject_without_a_synthetic_set(capsys):
    from diffinject.cli.main import main

    assert main(["train", "diffinject"]) != 0
    assert "--synthetic" in capsys.readouterr().err
