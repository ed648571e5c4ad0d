"""What the cluster can provide (cluster.session) and files handed to workers on other nodes (cluster.shipping)."""
from __future__ import annotations

import os
import time

import pytest
import yaml

from diffinject.cluster import session as ray_cluster, shipping as ray_shipping
from diffinject.config.builder import experiment_config
from diffinject.core.errors import ConfigError


def _bootstrap(tmp_path, monkeypatch, gpu_max: int, cpu_max: int = 0):
    """An autoscaler config as `ray up` leaves it on the head, named by DIFFINJECT_AUTOSCALING_CONFIG."""
    types = {"head": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
             "gpu_worker": {"resources": {"CPU": 4, "GPU": 1}, "node_config": {}, "min_workers": 0,
                            "max_workers": gpu_max},
             "cpu_worker": {"resources": {"CPU": 8}, "node_config": {}, "min_workers": 0, "max_workers": cpu_max}}
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump({"available_node_types": types}))
    monkeypatch.setenv(ray_cluster.AUTOSCALING_CONFIG_ENV, str(path))


def test_gpus_the_autoscaler_may_add_count_as_gpus_the_table_can_use(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv(ray_cluster.AUTOSCALING_CONFIG_ENV, str(tmp_path / "none.yaml"))
    assert ray_cluster.gpu_capacity() == {"alive": 0, "scalable": 0}
    assert ray_cluster.resolve_use_gpu("auto") is False
    _bootstrap(tmp_path, monkeypatch, gpu_max=3)
    capacity = ray_cluster.gpu_capacity()
    assert capacity == {"alive": 0, "scalable": 3}  # 3 nodes of 1 GPU; the CPU type adds none
    assert ray_cluster.resolve_use_gpu("auto") is True and ray_cluster.resolve_use_gpu("true") is True
    assert ray_cluster.resolve_use_gpu("false") is False
    # with GPU nodes possible, "true" is not refused while none is alive (idle nodes scaled down mid-table)
    _bootstrap(tmp_path, monkeypatch, gpu_max=0)
    with pytest.raises(ConfigError, match="no GPUs and no autoscaler node type with GPUs"):
        ray_cluster.resolve_use_gpu("true")


def test_a_table_decides_once_and_writes_the_answer_into_every_config():
    configs = [experiment_config("colored_digits", "1", quick=True) for _ in range(3)]
    on_gpu, line = ray_cluster.decide_gpu_use(configs, {"alive": 0, "scalable": 2})
    assert on_gpu and line == "GPUs: yes (0 alive now, the autoscaler may add 2)"
    assert {cfg.run.use_gpu for cfg in configs} == {"true"}  # jobs read "true": nothing left to re-decide
    # a later resolution on a cluster whose GPU nodes are gone for now keeps the choice
    assert ray_cluster.resolve_use_gpu(configs[0].run.use_gpu, {"alive": 0, "scalable": 2}) is True
    configs = [experiment_config("colored_digits", "1", quick=True) for _ in range(2)]
    assert ray_cluster.decide_gpu_use(configs, {"alive": 0, "scalable": 0}) == \
        (False, "GPUs: no (the cluster has none and no autoscaler node type with GPUs)")
    assert {cfg.run.use_gpu for cfg in configs} == {"false"}
    configs[1].run.use_gpu = "auto"
    configs[0].run.use_gpu = "false"
    with pytest.raises(ConfigError, match="different run.use_gpu"):
        ray_cluster.decide_gpu_use(configs, {"alive": 1, "scalable": 0})


def test_a_tracking_file_is_refused_once_the_cluster_may_have_other_nodes(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv(ray_cluster.AUTOSCALING_CONFIG_ENV, str(tmp_path / "none.yaml"))
    assert ray_cluster.check_shared_services("sqlite:///x/mlflow.db", ["ray_results"]) == []  # one node: fine
    _bootstrap(tmp_path, monkeypatch, gpu_max=0, cpu_max=2)
    for uri in ("sqlite:///x/mlflow.db", "file:///x/mlruns", "mlruns"):
        with pytest.raises(ConfigError, match="is a file on this node"):
            ray_cluster.check_shared_services(uri, [])
    warnings = ray_cluster.check_shared_services("http://10.0.0.1:5000", ["ray_results", "s3://b/r", "ray_results"])
    assert warnings == ["warning: run.storage_path ray_results is a local folder; on several nodes Ray Train needs "
                        "storage every node shares (s3://..., or a folder every node mounts at that path)"]


def test_a_worker_on_another_node_gets_a_copy_through_the_object_store(ray_session, tmp_path, monkeypatch):
    folder = tmp_path / "topk"
    (folder / "sub").mkdir(parents=True)
    (folder / "topk.json").write_text("[1, 2]")
    (folder / "sub" / "images.npy").write_bytes(os.urandom(1000))
    shipment = ray_shipping.ship(folder)
    assert ray_shipping.receive(shipment) == folder.resolve()  # same node: the file itself
    monkeypatch.setattr(ray_shipping, "node_id", lambda: "another-node")
    monkeypatch.setattr(ray_shipping.tempfile, "gettempdir", lambda: str(tmp_path / "other-tmp"))
    copy = ray_shipping.receive(shipment)
    assert copy != folder.resolve() and copy.is_relative_to(tmp_path / "other-tmp")
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == \
        ["sub/images.npy", "topk.json"]
    assert (copy / "sub" / "images.npy").read_bytes() == (folder / "sub" / "images.npy").read_bytes()
    assert ray_shipping.receive(shipment) == copy  # fetched once per node
    # a changed file is another version: fetched again, never served from the old copy
    time.sleep(0.01)
    (folder / "topk.json").write_text("[3]")
    again = ray_shipping.receive(ray_shipping.ship(folder))
    assert again != copy and (again / "topk.json").read_text() == "[3]"


def test_a_fastgan_job_ships_the_lpips_trunk_and_the_worker_installs_it(ray_session, tmp_path, monkeypatch):
    """The driver checks the VGG trunk's weights in its own hub cache; a FastGAN worker on another
    node gets them with the job and puts them into its hub cache, where load_lpips reads them."""
    import torch

    from diffinject.nets.perceptual import backbone_checkpoint
    from diffinject.cluster.train_jobs import LPIPS_TRUNK, TrainJob, received, shipped

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "driver-torch"))
    trunk, _ = backbone_checkpoint("vgg")
    trunk.parent.mkdir(parents=True)
    trunk.write_bytes(b"vgg weights")
    (tmp_path / "parquet").mkdir()
    cfg = experiment_config("colored_digits", "1", quick=True)
    cfg.fastgan.distance = "lpips_vgg"
    job = shipped(TrainJob("fastgan", "", {}, str(tmp_path / "parquet"), inputs={"topk": str(tmp_path / "parquet")}),
                  cfg)
    assert set(job.inputs) == {"topk", LPIPS_TRUNK}
    cfg.fastgan.distance = "mse"
    assert set(shipped(TrainJob("fastgan", "", {}, str(tmp_path / "parquet")), cfg).inputs) == set()
    # the worker: another node, another hub cache
    monkeypatch.setattr(ray_shipping, "node_id", lambda: "another-node")
    monkeypatch.setattr(ray_shipping.tempfile, "gettempdir", lambda: str(tmp_path / "other-tmp"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "worker-torch"))
    local = received(job)
    assert LPIPS_TRUNK not in local.inputs and os.path.isdir(local.parquet)
    installed = tmp_path / "worker-torch" / "hub" / "checkpoints" / trunk.name
    assert torch.hub.get_dir() == str(tmp_path / "worker-torch" / "hub") and installed.read_bytes() == b"vgg weights"
