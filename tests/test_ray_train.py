"""Trainings through Ray Train's TorchTrainer: local mode, DDP workers, failure and resume, errors."""

import dataclasses
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

from diffinject.cluster.train_jobs import FaultInjection, TrainJob, load_topk, run_train_job
from diffinject.config.schema import from_dict, to_dict
from diffinject.core.errors import TrainingError
from train_outputs import load_model_state


_UNINTERRUPTED: dict[str, object] = {}


def _uninterrupted(job: TrainJob):
    """The same job run without a fault, as the resumed one should have ended (under its own
    name and storage; one run per training config in this module). Not in-process: the loop
    there runs on the test process's torch threads, and a Ray worker's different thread count
    changes float rounding."""
    cfg = from_dict(job.config)
    cfg.run.storage_path, cfg.run.max_failures = "", 0
    key = json.dumps(to_dict(cfg), sort_keys=True)
    if key not in _UNINTERRUPTED:
        cfg.run.storage_path = tempfile.mkdtemp(prefix="uninterrupted-")
        _UNINTERRUPTED[key] = run_train_job(dataclasses.replace(job, config=to_dict(cfg), fault=None))
    return _UNINTERRUPTED[key]


def _assert_resumed_exactly(out, reference) -> None:
    """A resumed job took its checkpoint's state: it ran only the steps after the checkpoint, and
    ended with the uninterrupted job's weights (bit for bit) and final metrics. A worker that
    restarted from scratch ends with the same weights, but runs every step again."""
    assert out.metrics["steps_run"] == out.metrics["step"] - out.metrics["resumed_from"]
    assert reference.metrics["steps_run"] == reference.metrics["step"]
    mine, theirs = load_model_state(out.checkpoint_dir)["nets"], load_model_state(reference.checkpoint_dir)["nets"]
    assert mine.keys() == theirs.keys()
    for net in mine:
        assert mine[net].keys() == theirs[net].keys()
        different = [name for name in mine[net] if not torch.equal(mine[net][name], theirs[net][name])]
        assert not different, f"{net}: {different} differ from the uninterrupted run's"
    ignored = {"resumed_from", "steps_run", "images_per_s"}
    assert ({k: v for k, v in out.metrics.items() if k not in ignored}
            == {k: v for k, v in reference.metrics.items() if k not in ignored})


def test_only_bffhq_reports_its_bias_conflicting_test_images():
    from diffinject.data.registry import DATASETS

    assert {name: spec.reported_test for name, spec in DATASETS.items()} == {
        name: "conflicting_acc" if name == "bffhq" else "acc" for name in DATASETS}


@pytest.mark.parametrize("dataset,reported", [("bffhq", "conflicting_acc"), ("colored_digits", "acc")])
def test_the_train_data_carries_the_accuracy_its_dataset_reports(dataset, reported, monkeypatch):
    import numpy as np

    import diffinject.cluster.train_jobs as ray_train
    from diffinject.config.builder import experiment_config
    from diffinject.data.parquet import ArraySplit

    split = ArraySplit(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), np.array([0, 0]), np.array(["a", "b"]))
    monkeypatch.setattr(ray_train, "load_split", lambda path, name: split)  # no Parquet set needed
    data = ray_train.load_train_data(TrainJob(kind="classifier", method="vanilla", config={}, parquet="unused"),
                                     experiment_config(dataset, "1"))
    assert data.reported == reported


def test_classifier_job_in_process(ray_session, quick_cfg, digits_parquet):
    out = run_train_job(TrainJob(kind="classifier", method="vanilla", config=to_dict(quick_cfg),
                                 parquet=str(digits_parquet)))
    assert out.metrics["step"] == quick_cfg.classifier.num_steps
    assert out.metrics["resumed_from"] == -1
    assert 0.0 <= out.metrics["test_acc"] <= 1.0
    state = load_model_state(out.checkpoint_dir)  # weights_only load
    assert state["nets"]["model"]["classifier.weight"].shape == (10, 16)
    storage = Path(quick_cfg.run.storage_path)
    assert not list(storage.rglob("state.pt")), "a finished job left its step checkpoints behind"
    assert [p.parent for p in storage.rglob("model.pt")] == [out.checkpoint_dir]


def test_the_next_job_deletes_the_run_folder_a_killed_job_left(ray_session, quick_cfg, digits_parquet):
    """A job whose process was killed (SIGKILL) leaves its run folder, in local mode with its staged
    checkpoints, and a rerun starts under a new name. The next job on this host deletes the folder;
    that of a job still running, or of one that ended on an error, stays."""
    import multiprocessing

    from diffinject.cluster.train_jobs import OWNER_FILE, claim_run_folder

    failing = dataclasses.replace(quick_cfg.classifier, lr=1e30)
    with pytest.raises(TrainingError, match="non-finite loss"):
        run_train_job(TrainJob(kind="classifier", method="vanilla", parquet=str(digits_parquet),
                               config=to_dict(dataclasses.replace(quick_cfg, classifier=failing))))
    storage = Path(quick_cfg.run.storage_path)
    killed, running = storage / "classifier-killed", storage / "classifier-running"
    for folder in (killed, running):
        (folder / "staging" / "step000000500").mkdir(parents=True)
        (folder / "staging" / "step000000500" / "state.pt").write_bytes(b"")
    claimer = multiprocessing.get_context("spawn").Process(target=claim_run_folder, args=(killed, None))
    claimer.start()
    claimer.join()  # its process is gone, its claim stays: as after a SIGKILL
    claim = claim_run_folder(running, None)  # this live process's
    out = run_train_job(TrainJob(kind="classifier", method="vanilla", config=to_dict(quick_cfg),
                                 parquet=str(digits_parquet)))
    assert (out.checkpoint_dir / "model.pt").is_file()
    assert not killed.exists()
    assert (running / "staging" / "step000000500").is_dir() and claim.is_file()
    assert list(storage.rglob("error.json")), "the folder of the job that ended on an error went"
    assert [p.parent for p in storage.rglob(OWNER_FILE)] == [running]


def test_the_sweep_deletes_ray_s_copies_of_a_killed_job_under_a_storage_uri(tmp_path):
    import multiprocessing

    from diffinject.cluster.train_jobs import claim_run_folder, sweep_killed_runs

    local, bucket = tmp_path / "local", tmp_path / "bucket"
    (bucket / "job" / "checkpoint_000001").mkdir(parents=True)
    claimer = multiprocessing.get_context("spawn").Process(
        target=claim_run_folder, args=(local / "job", (bucket / "job").as_uri()))
    claimer.start()
    claimer.join()
    sweep_killed_runs(local)
    assert not (local / "job").exists() and not (bucket / "job").exists() and bucket.is_dir()


def test_bias_job_returns_the_topk_set(ray_session, quick_cfg, digits_parquet):
    quick_cfg.bias.k, quick_cfg.bias.scope = 7, "global"
    out = run_train_job(TrainJob(kind="bias", method="gce", config=to_dict(quick_cfg), parquet=str(digits_parquet)))
    topk = load_topk(out.checkpoint_dir)
    assert len(topk["indices"]) == 7 and len(set(topk["indices"].tolist())) == 7
    assert topk["losses"] == sorted(topk["losses"], reverse=True)
    assert out.metrics["step"] == quick_cfg.bias.classifier.num_steps


def test_nan_loss_in_a_worker_is_a_clear_error(ray_session, quick_cfg, digits_parquet):
    quick_cfg.classifier.lr = 1e30
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step \d+"):
        run_train_job(TrainJob(kind="classifier", method="vanilla", config=to_dict(quick_cfg),
                               parquet=str(digits_parquet)))
    assert list(Path(quick_cfg.run.storage_path).rglob("error.json")), "a failed job keeps its run folder"


def test_killed_ddp_worker_resumes_from_its_checkpoint(ray_session, quick_cfg, digits_parquet, tmp_path):
    """Two gloo DDP workers; rank 0 is SIGKILLed at step 25, between the checkpoints of steps
    20 and 30; the run restarts the worker group, resumes from the last checkpoint Ray had
    registered (20, or 10 if the step-20 report was still in flight) and ends at step 40 with
    the weights of a run that was never interrupted."""
    quick_cfg.run.num_workers = 2
    quick_cfg.run.max_failures = 1
    quick_cfg.classifier.select = "last"  # the saved weights are the last step's, not a selection's
    marker = tmp_path / "fault-happened"
    job = TrainJob(kind="classifier", method="vanilla", config=to_dict(quick_cfg), parquet=str(digits_parquet),
                   fault=FaultInjection(step=25, marker=str(marker), mode="kill"))
    out = run_train_job(job)
    assert marker.exists()
    assert out.metrics["resumed_from"] in (10, 20)
    assert out.metrics["step"] == 40
    _assert_resumed_exactly(out, _uninterrupted(job))


def test_storage_uri_holds_the_checkpoints_until_the_job_ends_and_the_final_copy_is_local(
        ray_session, quick_cfg, digits_parquet, tmp_path):
    """run.storage_path as a URI (file:// goes through pyarrow like s3:// would), one real worker
    that fails once at step 25: it resumes from a checkpoint Ray wrote under the URI; once the
    job ends its folder there is emptied, so a rerun under the same name starts afresh."""
    quick_cfg.run.storage_path = (tmp_path / "bucket").as_uri()
    quick_cfg.run.num_workers, quick_cfg.run.max_failures = 1, 1
    quick_cfg.classifier.select = "last"
    marker = tmp_path / "fault-happened"
    job = TrainJob(kind="classifier", method="vanilla", config=to_dict(quick_cfg), parquet=str(digits_parquet),
                   fault=FaultInjection(step=25, marker=str(marker)))
    name = f"uri-run-{uuid.uuid4().hex[:8]}"
    local = Path(tempfile.gettempdir()) / "diffinject-train" / name  # staging, and the final copy by default
    out = run_train_job(job, name=name)
    assert marker.exists() and out.metrics["resumed_from"] in (10, 20)
    assert out.metrics["step"] == quick_cfg.classifier.num_steps
    assert out.checkpoint_dir == local / "final" and (out.checkpoint_dir / "model.pt").is_file()
    _assert_resumed_exactly(out, _uninterrupted(job))
    assert [p.name for p in local.iterdir()] == ["final"], "the staged checkpoints were left behind"
    shutil.rmtree(local)
    assert not list((tmp_path / "bucket" / name).iterdir()), "a finished job left its checkpoints behind"
    again = run_train_job(job, name=name, output_dir=tmp_path / "again")
    assert again.metrics["resumed_from"] == -1 and (tmp_path / "again" / "model.pt").is_file()
    assert not local.exists()


def test_a_job_ray_gave_up_on_resumes_when_rerun_under_its_name(ray_session, quick_cfg, digits_parquet, tmp_path):
    """A worker error with run.max_failures = 0 ends the job with an error but keeps its
    checkpoints; the same job rerun under the same name (as stage 2 is, named by its artifact
    key) resumes from them instead of starting over."""
    quick_cfg.run.num_workers, quick_cfg.run.max_failures = 1, 0
    quick_cfg.classifier.select = "last"
    marker = tmp_path / "fault-happened"
    job = TrainJob(kind="classifier", method="vanilla", config=to_dict(quick_cfg), parquet=str(digits_parquet),
                   fault=FaultInjection(step=25, marker=str(marker)))
    with pytest.raises(Exception, match="injected worker failure at step 25"):
        run_train_job(job, name="given-up")
    out = run_train_job(job, name="given-up")
    assert out.metrics["resumed_from"] in (10, 20) and out.metrics["step"] == quick_cfg.classifier.num_steps
    _assert_resumed_exactly(out, _uninterrupted(job))


def test_a_rerun_under_the_name_of_a_job_that_failed_meets_its_error_again(ray_session, quick_cfg, digits_parquet):
    """The job's last checkpoint is its error report, which holds no training state: the rerun
    starts over and stops on the same error rather than on a missing state file."""
    quick_cfg.classifier.lr = 1e30
    quick_cfg.run.num_workers = 1
    job = TrainJob(kind="classifier", method="vanilla", config=to_dict(quick_cfg), parquet=str(digits_parquet))
    for _ in range(2):
        with pytest.raises(TrainingError, match=r"non-finite loss .* at step \d+"):
            run_train_job(job, name="failed")
