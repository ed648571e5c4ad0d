"""Stage runs end to end on Colored Digits, as MLflow records them."""
import pytest
from mlflow.tracking import MlflowClient

from diffinject.errors import ConfigError, TrainingError
from diffinject.pipeline import run_cell, run_stage1
from diffinject.results import collect, format_table
from diffinject.tracking import Tracker


def test_stage1_and_vanilla_are_logged(ray_session, quick_cfg, mlflow_uri):
    quick_cfg.run.experiment = "t-pipeline"
    stage1 = run_stage1(quick_cfg)
    cell = run_cell(quick_cfg, "vanilla")
    client = MlflowClient(mlflow_uri)

    s1 = client.get_run(stage1.run_id)
    assert s1.info.status == "FINISHED"
    assert s1.data.tags["diffinject.role"] == "stage1" and s1.data.tags["dataset"] == "colored_digits"
    assert 0.0 <= s1.data.metrics["precision_at_10"] <= 1.0
    assert s1.data.params["bias.q"] == "0.7" and s1.data.params["classifier.lr"] == "0.001"
    assert {"topk.json", "model.pt", "topk_grid.png"} <= {a.path for a in client.list_artifacts(stage1.run_id)}

    parent = client.get_run(cell.run_id)
    assert parent.data.tags["method"] == "vanilla" and parent.data.tags["seed"] == "0"
    assert parent.data.tags["ratio"] == "1" and "diffinject.code_version" in parent.data.tags
    assert parent.data.metrics["step"] == quick_cfg.classifier.num_steps
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{cell.run_id}'")
    assert len(children) == 1
    child = children[0]
    history = client.get_metric_history(child.info.run_id, "test_acc")
    assert [m.step for m in history] == [10, 20, 30, 40]
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["model.pt"]

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
    quick_cfg.bias.k = 5000
    with pytest.raises(ConfigError, match=r"bias.k = 5000 is larger than the training set .* \(1200 samples\)"):
        run_stage1(quick_cfg)
