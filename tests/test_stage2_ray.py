"""Stage 2 through Ray Train and MLflow: the stage2 run, DDP across two workers, kill and resume."""
import pytest
import torch
from mlflow.tracking import MlflowClient

from diffinject.cluster.train_jobs import FaultInjection
from diffinject.experiment.stage_runs import diffusion_checkpoint, run_stage2
from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
from diffinject.tracking.client import Tracker


def _tiny(cfg, **overrides):
    d = cfg.diffusion
    d.preset, d.batch_size, d.num_steps, d.log_every, d.checkpoint_every = "tiny_32", 8, 6, 2, 3
    d.sample_every, d.sample_images, d.sample_steps = 3, 4, 2
    for key, value in overrides.items():
        setattr(d, key, value)
    return cfg


def test_stage2_run_logs_loss_curve_sample_grids_and_checkpoint(ray_session, quick_cfg, mlflow_uri):
    cfg = _tiny(quick_cfg, train_data="colored_digits@5")
    out = run_stage2(cfg)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["diffinject.role"] == "stage2" and run.data.tags["ratio"] == "5"
    assert [m.step for m in client.get_metric_history(out.run_id, "loss")] == [2, 4, 6]
    assert [a.path for a in Tracker(mlflow_uri).list_artifacts(out.run_id, "samples")] == [
        "samples/step_0000003.png", "samples/step_0000006.png"]
    assert [a.path for a in Tracker(mlflow_uri).list_artifacts(out.run_id, "checkpoint")] == ["checkpoint/diffusion.pt"]
    assert "loss_curve.png" in [a.path for a in Tracker(mlflow_uri).list_artifacts(out.run_id)]
    unet, meta = load_unet_checkpoint(diffusion_checkpoint(out), expect_preset="tiny_32")
    assert meta["step"] == 6 and out.metrics == {"final_loss": pytest.approx(out.metrics["final_loss"]),
                                                 "final_step": 6, "resumed_from": -1, "steps_run": 6}


@pytest.mark.slow
def test_ddp_keeps_ranks_identical_and_a_killed_worker_resumes(ray_session, quick_cfg, mlflow_uri, tmp_path):
    """Two gloo DDP workers compare their parameters after every step; rank 0 is SIGKILLed at
    step 10, the group restarts from the last registered checkpoint (8, or 4 if the step-8
    report was in flight), runs only the steps after it, and ends at the requested step 12 with
    the EMA weights and loss of a run that was never interrupted."""
    cfg = _tiny(quick_cfg, num_steps=12, checkpoint_every=4, check_sync_every=1, sample_every=0)
    cfg.run.num_workers, cfg.run.max_failures = 2, 1
    marker = tmp_path / "fault-happened"
    out = run_stage2(cfg, fault=FaultInjection(step=10, marker=str(marker), mode="kill"))
    assert marker.exists()
    assert out.metrics["resumed_from"] in (4, 8) and out.metrics["final_step"] == 12
    spread = MlflowClient(mlflow_uri).get_metric_history(out.run_id, "param_rank_spread")
    assert {m.step for m in spread} == set(range(1, 13))
    assert all(m.value == 0.0 for m in spread)
    resumed, meta = load_unet_checkpoint(diffusion_checkpoint(out))
    assert meta["step"] == 12
    assert out.metrics["steps_run"] == 12 - out.metrics["resumed_from"]
    reference = run_stage2(cfg, output_dir=tmp_path / "uninterrupted")
    assert reference.metrics["steps_run"] == 12 and reference.metrics["final_loss"] == out.metrics["final_loss"]
    uninterrupted, _ = load_unet_checkpoint(diffusion_checkpoint(reference))
    different = [name for name, value in resumed.state_dict().items()
                 if not torch.equal(value, uninterrupted.state_dict()[name])]
    assert not different, f"EMA weights {different[:3]}... differ from the uninterrupted run's"


def test_progress_lines_report_what_rank_zero_logged(mlflow_uri, capsys):
    import time

    from diffinject.experiment.run_context import progress_lines
    from diffinject.tracking.client import Tracker

    tracker = Tracker()
    run_id = tracker.start_run(tracker.experiment("t-progress"), "r", {})
    with progress_lines(tracker, run_id, 800, "stage 2 (small_32)", every_s=0.05):
        tracker.log_metrics(run_id, {"loss": 0.25, "images_per_s": 140.0}, step=200)
        time.sleep(0.5)
    out = capsys.readouterr().out.splitlines()
    assert out == ["stage 2 (small_32): step 200/800, loss 0.2500, 140 img/s"]
