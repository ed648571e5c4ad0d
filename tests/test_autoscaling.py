"""GPU use on an autoscaling cluster (tests/emulated_cluster.FakeAutoscalingCluster): its only GPU
node type starts at min_workers 0, so when a table starts no GPU is alive. The table must
decide for GPUs from the autoscaler's node types, ask for a GPU node, get it, run every stage on
it and withdraw its request at the end. (Fake GPUs: the jobs compute on the CPU.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from emulated_cluster import FakeAutoscalingCluster

from diffinject.experiment.cache import MARKER

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "table1.py"
GPU_NODE = {"gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}}
SHORT = ["classifier.num_steps=20", "bias.classifier.num_steps=20", "baselines.lff_num_steps=20"]
STATE = """
import json, ray
from ray.experimental.internal_kv import _internal_kv_get
ray.init()
request = _internal_kv_get(b"autoscaler_resource_request")
print(json.dumps({"gpus": ray.cluster_resources().get("GPU", 0), "request": json.loads(request) if request else None}))
"""

pytestmark = pytest.mark.slow


def _state(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", STATE], env=env, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_table_asks_for_gpu_nodes_from_zero_and_keeps_its_choice(tmp_path):
    cluster = FakeAutoscalingCluster(tmp_path / "cluster", GPU_NODE)
    cluster.start()
    try:
        assert _state(cluster.env)["gpus"] == 0  # min_workers 0: nothing alive yet
        cmd = [sys.executable, str(SCRIPT), "--quick", "--methods", "vanilla", "lff", "--seeds", "0", "--parallel", "1",
               "--data-root", str(tmp_path / "data"), "--cache-root", str(tmp_path / "cache"),
               "--artifact-root", str(tmp_path / "artifacts"), "--out", str(tmp_path / "out"),
               "--set", f"run.storage_path={tmp_path / 'ray'}", *[a for s in SHORT for a in ("--set", s)]]
        run = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
        # decided from the node types, once, before anything ran; the GPU node came
        assert "GPUs: yes (0 alive now, the autoscaler may add 1); 1 Ray Train worker(s) per training" in run.stdout
        after = _state(cluster.env)
        assert after["gpus"] == 1
        assert after["request"] == []  # the request for GPU nodes, withdrawn at the end
    finally:
        cluster.stop()
    # every stage of both cells ran as decided: on the GPU
    markers = [json.loads(p.read_text()) for p in (tmp_path / "artifacts").glob(f"*/*/{MARKER}")]
    devices = {(m["stage"], m["material"]["numerics"]["device"]) for m in markers if "numerics" in m["material"]}
    assert {stage for stage, _ in devices} >= {"cell"} and {device for _, device in devices} == {"cuda"}, devices
