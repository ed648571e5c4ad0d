"""Stage runs end to end on Colored Digits, as MLflow records them."""
import pytest
from mlflow.tracking import MlflowClient

from diffinject.core.errors import ConfigError, TrainingError
from diffinject.experiment.stage_runs import run_cell, run_stage1
from diffinject.reporting.results import collect, format_table
from diffinject.tracking.client import Tracker


def test_stage1_and_vanilla_are_logged(ray_session, quick_cfg, mlflow_uri):
    quick_cfg.run.experiment = "t-pipeline"
    stage1 = run_stage1(quick_cfg)
    cell = run_cell(quick_cfg, "vanilla")
    tracker = Tracker(mlflow_uri)
    client = tracker.client

    s1 = client.get_run(stage1.run_id)
    assert s1.info.status == "FINISHED"
    assert s1.data.tags["diffinject.role"] == "stage1" and s1.data.tags["dataset"] == "colored_digits"
    assert 0.0 <= s1.data.metrics["precision_at_10"] <= 1.0
    assert s1.data.params["bias.q"] == "0.7" and s1.data.params["bias.classifier.lr"] == "0.001"
    assert s1.data.params["classifier.lr"] == "0.01" and s1.data.params["baselines.protocol"] == "reference"
    assert {"topk.json", "model.pt", "topk_grid.png"} <= {a.path for a in tracker.list_artifacts(stage1.run_id)}

    parent = client.get_run(cell.run_id)
    assert parent.data.tags["method"] == "vanilla" and parent.data.tags["seed"] == "0"
    assert parent.data.tags["ratio"] == "1" and "diffinject.code_version" in parent.data.tags
    assert parent.data.metrics["step"] == quick_cfg.classifier.num_steps
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{cell.run_id}'")
    assert len(children) == 1
    child = children[0]
    history = client.get_metric_history(child.info.run_id, "test_acc")
    assert [m.step for m in history] == [10, 20, 30, 40]
    assert [a.path for a in tracker.list_artifacts(child.info.run_id)] == ["model.pt"]
    # what the UI needs: names with ratio and seed up front, the tag scheme, params to split by,
    # the selected weights' numbers under their own names, Source/User, a description
    assert parent.info.run_name == "vanilla 1% s0 colored_digits" and s1.info.run_name == "stage1 gce 1% s0 colored_digits"
    assert child.info.run_name == "stage4 vanilla 1% s0 colored_digits"
    assert s1.data.tags["stage.algorithm"] == "gce" and "method" not in s1.data.tags  # built outside any cell
    assert child.data.tags["stage.algorithm"] == child.data.tags["method"] == "vanilla"
    assert {k: parent.data.params[k] for k in ("method", "dataset", "ratio", "seed")} == {
        "method": "vanilla", "dataset": "colored_digits", "ratio": "1", "seed": "0"}
    valid = sorted(client.get_metric_history(child.info.run_id, "valid_acc"), key=lambda m: m.step)
    best = next(m for m in valid if m.value == max(v.value for v in valid))  # selection keeps the first best
    test_at_best = next(m.value for m in history if m.step == best.step)
    for run in (parent, child):
        assert run.data.metrics["selected_step"] == best.step
        assert run.data.metrics["selected_test_acc"] == pytest.approx(test_at_best)
        assert run.data.metrics["selected_valid_acc"] == pytest.approx(best.value)
        assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["mlflow.user"]
        assert run.data.tags["mlflow.source.name"]
    assert parent.data.metrics["test_acc"] == pytest.approx(test_at_best)
    assert parent.data.metrics["unbiased_acc_pct"] == round(100 * test_at_best, 2)
    note = parent.data.tags["mlflow.note.content"]
    assert f"**{100 * test_at_best:.2f}%**" in note and f"step {best.step} of 40" in note
    assert f"(#/experiments/{parent.info.experiment_id}/runs/{child.info.run_id})" in note
    # the release protocol's f_B is its best-on-valid model (bias.classifier.select=valid)
    assert quick_cfg.bias.classifier.select == "valid"
    s1_valid = sorted(client.get_metric_history(s1.info.run_id, "valid_acc"), key=lambda m: m.step)
    assert s1.data.metrics["selected_step"] == next(m.step for m in s1_valid if m.value == max(v.value for v in s1_valid))

    table = format_table(collect("t-pipeline", Tracker(mlflow_uri)))
    assert "vanilla" in table and "stage-1 bias classifier" in table and "colored_digits @ 1%" in table


def test_failed_training_marks_the_run_failed(ray_session, quick_cfg, mlflow_uri):
    quick_cfg.run.experiment = "t-failed"
    quick_cfg.classifier.lr = 1e30
    with pytest.raises(TrainingError):
        run_cell(quick_cfg, "vanilla")
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("t-failed").experiment_id])
    assert runs and all(r.info.status == "FAILED" for r in runs)
    assert collect("t-failed", Tracker(mlflow_uri)) == {}


def test_k_larger_than_the_training_set_fails_before_training(quick_cfg, mlflow_uri):
    quick_cfg.bias.k, quick_cfg.bias.scope = 5000, "global"
    with pytest.raises(ConfigError, match=r"bias.k = 5000 is larger than the training set .* \(1200 samples\)"):
        run_stage1(quick_cfg)
