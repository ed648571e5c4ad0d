"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`):
a DDP training and an injection job run across both nodes, node 2 is SIGKILLed in the middle
of each, and each job still finishes with nothing lost or duplicated.

The jobs run in tests/two_node_driver.py, a subprocess joined to this cluster (pytest's own
process may be joined to its session Ray). Node 2 registers as 127.0.0.2 so that the
driver, which joins the node of its own IP, always lands on the head.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_inject_job import CFG, _final, _manifest, checkpoint, data  # noqa: F401 (module fixtures)
from two_node_driver import busy_injector, kill_tree

from diffinject.config.schema import to_dict
from diffinject.data.parquet import load_split
from diffinject.stages.inject.synthetic import PARTS

DRIVER = Path(__file__).with_name("two_node_driver.py")
RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"  # the CLI of this Python's Ray
# logical CPUs: one DDP worker and one 2-CPU injection actor per node; the head alone fits
# the restarted DDP group
HEAD_CPUS, NODE2_CPUS = 2, 2
STARTUP_S, JOB_S = 60, 210
# GCS declares a raylet dead after 4 failed health checks 0.5 s apart (default: 5 x 3 s)
HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                 "RAY_health_check_failure_threshold": "4"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """This test's own Ray processes: each node is a `ray start --block` and its process tree."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # `ray start` turns token auth on when ~/.ray/auth_token exists; keep it off for every machine
        self.env = {**os.environ, **HEALTH_CHECKS, "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[tuple[subprocess.Popen, str]] = []  # (ray start, its temp dir)
        self.head: subprocess.Popen | None = None

    def start_head(self) -> None:
        self.head = self._start("head", "--head", "--port", str(self.port), "--num-cpus", str(HEAD_CPUS),
                                "--include-dashboard=false", "--dashboard-port", str(_free_port()))

    def start_node2(self) -> subprocess.Popen:
        return self._start(f"node2-{len(self.nodes)}", "--address", self.address, "--node-ip-address", "127.0.0.2",
                           "--num-cpus", str(NODE2_CPUS), "--include-log-monitor=false")

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        temp = tempfile.mkdtemp(prefix="r2n-", dir="/tmp")  # short: Ray's socket paths have a length limit
        with log.open("w") as out:
            node = subprocess.Popen([RAY, "start", "--block", *args, "--object-store-memory", str(100 * 2**20),
                                     "--disable-usage-stats", "--temp-dir", temp],
                                    stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.nodes.append((node, temp))
        deadline = time.monotonic() + STARTUP_S
        while "Ray runtime started" not in log.read_text():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`ray start` for {name} did not come up:\n{log.read_text()}")
            time.sleep(0.2)
        return node

    def drive(self, job: str, folder: Path, node2: subprocess.Popen, **args) -> dict:
        """Run the driver on this cluster; return its summary."""
        spec = {"job": job, "head_pid": self.head.pid, "node2_pid": node2.pid,
                "summary": str(folder / "summary.json"), **args}
        (folder / "spec.json").write_text(json.dumps(spec))
        log = folder / "driver.log"
        try:
            with log.open("w") as out:
                rc = subprocess.run([sys.executable, str(DRIVER), str(folder / "spec.json")], stdout=out,
                                    stderr=subprocess.STDOUT, env={**self.env, "RAY_ADDRESS": self.address},
                                    timeout=JOB_S).returncode
        except subprocess.TimeoutExpired:
            pytest.fail(f"the {job} job did not finish in {JOB_S} s:\n{log.read_text()[-6000:]}")
        assert rc == 0, f"the driver failed (rc {rc}):\n{log.read_text()[-6000:]}"
        summary = json.loads((folder / "summary.json").read_text())
        assert "error" not in summary, f"{summary['error']}\n{log.read_text()[-6000:]}"
        assert node2.wait(timeout=10) == -signal.SIGKILL  # node 2 was killed, it did not stop by itself
        return summary

    def stop(self) -> None:
        for node, temp in self.nodes:
            if node.poll() is None:  # not reaped yet, so its pid is still this node's
                kill_tree(node.pid)
                node.wait()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_head()
        yield c
    finally:
        c.stop()


def _check_node_loss(summary: dict, worker_name: str) -> None:
    """Both nodes ran the job's workers, node 2 died mid-job, and the job finished without it."""
    workers = summary["workers_at_kill"]
    assert any(worker_name in w for w in workers["head"]), workers
    assert any(worker_name in w for w in workers["node2"]), workers
    assert summary["started"] < summary["killed_at"] < summary["node2_dead_at"] < summary["finished"]
    assert summary["alive_nodes_at_end"] == [summary["head_id"]]


@pytest.mark.slow
def test_ddp_training_survives_losing_a_node(cluster, quick_cfg, digits_parquet, tmp_path):
    """One gloo DDP worker per node; node 2 dies once Ray Train registered a checkpoint; the
    restarted group (both workers on the head) resumes from that checkpoint, runs only the steps
    after it and ends at the last step with the weights of the same job run uninterrupted."""
    node2 = cluster.start_node2()
    quick_cfg.run.num_workers, quick_cfg.run.max_failures = 2, 1
    quick_cfg.classifier.select = "last"  # the saved weights are the last step's
    # a checkpoint every 10 steps, each report answered at the controller's next 0.2 s poll:
    # after the first checkpoint, the run still has seconds to go when node 2 is killed
    quick_cfg.classifier.num_steps = 100
    summary = cluster.drive("train", tmp_path, node2, config=to_dict(quick_cfg), parquet=str(digits_parquet))
    _check_node_loss(summary, "RayTrainWorker")
    assert summary["progress_at_kill"] >= 1                     # a checkpoint was registered before the kill
    metrics = summary["metrics"]
    assert metrics["step"] == quick_cfg.classifier.num_steps
    assert 0 < metrics["resumed_from"] < quick_cfg.classifier.num_steps  # resumed, not restarted from 0
    assert metrics["steps_run"] == metrics["step"] - metrics["resumed_from"]
    assert summary["uninterrupted"] == {"steps_run": metrics["step"], "test_acc": metrics["test_acc"]}
    assert summary["weights_unlike_uninterrupted"] == []


@pytest.mark.slow
def test_injection_survives_losing_a_node(cluster, data, checkpoint, tmp_path):  # noqa: F811
    """One injection actor per node; node 2 dies in the middle of a batch; every pair_id of
    the manifest ends up in the output exactly once."""
    node2 = cluster.start_node2()
    manifest = _manifest(data, conflict_ratio=2.0)  # 48 pairs, 12 batches
    cfg = dataclasses.replace(CFG, inversion_steps=10, generation_steps=10)  # ~0.3 s a batch: a job of seconds
    pq.write_table(manifest, tmp_path / "manifest.parquet")
    np.savez(tmp_path / "arrays.npz", images=data["images"], labels=data["labels"], biases=data["biases"],
             ids=data["ids"].astype(str), topk=data["topk"])
    out = tmp_path / "syn"
    summary = cluster.drive("inject", tmp_path, node2, manifest=str(tmp_path / "manifest.parquet"),
                            arrays=str(tmp_path / "arrays.npz"), checkpoint=str(checkpoint),
                            injection=dataclasses.asdict(cfg), out=str(out))
    _check_node_loss(summary, "(InjectorActor)")
    assert any(map(busy_injector, summary["workers_at_kill"]["node2"]))  # a batch was lost with node 2
    batches = -(-manifest.num_rows // cfg.batch_size)
    assert 1 <= summary["progress_at_kill"] < batches           # some part files, not all
    pair_ids = _final(out)["pair_id"].to_pylist()
    assert pair_ids == list(range(manifest.num_rows))           # none lost, none duplicated
    assert len(load_split(out, "train")) == manifest.num_rows and not (out / PARTS).exists()
