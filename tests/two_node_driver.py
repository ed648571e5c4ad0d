"""Run one diffinject job on the two-node test cluster and stop node 2 in the middle of it.

tests/test_two_nodes.py starts the cluster and runs `python tests/two_node_driver.py SPEC`
with RAY_ADDRESS set: a separate process, because pytest's own process may already be joined
to its session Ray. SPEC is a JSON file: {"job": "train" | "inject", "node2_pid": the pid of node
2's `ray start --block`, "head_pid": the head's, "summary": where to write the result, and
the job's arguments}. While the job runs in the main thread, a watcher thread waits until it
is mid-way (train: a checkpoint registered; inject: a part file written and a batch running
on node 2), records the Ray worker processes of each node, SIGKILLs node 2's whole process
tree (raylet, agents, workers) and waits until the cluster marks node 2 dead. The summary it
writes is what the test checks.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray

from diffinject.cluster.session import ensure_ray

TIMEOUT_S = 60


def process_tree(pid: int) -> dict[int, str]:
    """`pid` and its descendants -> their command lines (a Ray worker's is `ray::Class...`)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # exited meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            tree[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and its descendants (Ray workers have process groups of their own)."""
    for p in process_tree(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:  # exited meanwhile
            pass


def ray_workers(pid: int) -> list[str]:
    return sorted(cmd for cmd in process_tree(pid).values() if cmd.startswith("ray::"))


def alive_nodes() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def wait_for(condition, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class NodeKiller(threading.Thread):
    """Once `ready(progress(), node 2's Ray workers)`, SIGKILL node 2's process tree and wait
    until Ray declares the node dead. `report` says what the nodes ran at the kill and when."""

    def __init__(self, spec: dict, node2_id: str, progress, ready):
        super().__init__(daemon=True)
        self.spec, self.node2_id, self.progress, self.ready = spec, node2_id, progress, ready
        self.job_done = threading.Event()
        self.report: dict = {}

    def run(self) -> None:
        try:
            while True:
                progress = self.progress()
                workers = {"head": ray_workers(self.spec["head_pid"]), "node2": ray_workers(self.spec["node2_pid"])}
                if self.ready(progress, workers["node2"]):
                    break
                if self.job_done.wait(0.1):
                    raise RuntimeError(f"the job ended before node 2 was killed (progress {progress})")
            kill_tree(self.spec["node2_pid"])
            self.report.update(progress_at_kill=progress, workers_at_kill=workers, killed_at=time.time())
            print(f"[two-node] killed node 2 at progress {progress}", flush=True)
            wait_for(lambda: self.node2_id not in alive_nodes(), "Ray to mark node 2 dead")
            self.report["node2_dead_at"] = time.time()
            print("[two-node] Ray marked node 2 dead", flush=True)
        except Exception as exc:  # reported in the summary: the test fails on it
            self.report["error"] = repr(exc)


TRAIN_NAME = "two-node-train"


def train_trigger(spec: dict):
    """Kill once Ray Train has registered a checkpoint (it rewrites this snapshot at each one)."""
    snapshot = Path(spec["config"]["run"]["storage_path"]).resolve() / TRAIN_NAME / "checkpoint_manager_snapshot.json"

    def registered_checkpoints() -> int:
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (OSError, ValueError):  # not written yet, or being written
            return 0

    return registered_checkpoints, lambda registered, node2_workers: registered >= 1


def run_train(spec: dict) -> dict:
    """DDP with one worker per node (SPREAD); then, node 2 gone, the same job uninterrupted on the
    head, whose weights the resumed job must end with."""
    import torch

    from diffinject.cluster.train_jobs import TrainJob, run_train_job
    from train_outputs import load_model_state

    job = TrainJob(kind="classifier", method="vanilla", config=spec["config"], parquet=spec["parquet"])
    out = run_train_job(job, name=TRAIN_NAME, placement_strategy="SPREAD")
    reference = run_train_job(job, name=f"{TRAIN_NAME}-uninterrupted")
    mine, theirs = load_model_state(out.checkpoint_dir)["nets"], load_model_state(reference.checkpoint_dir)["nets"]
    different = sorted(f"{net}.{name}" for net in theirs for name in theirs[net]
                       if not torch.equal(mine.get(net, {}).get(name, torch.empty(0)), theirs[net][name]))
    return {"metrics": {k: out.metrics[k] for k in ("step", "resumed_from", "steps_run", "test_acc")},
            "uninterrupted": {k: reference.metrics[k] for k in ("steps_run", "test_acc")},
            "weights_unlike_uninterrupted": different}


def busy_injector(title: str) -> bool:
    """An injection actor running a batch (Ray titles a busy actor's process ray::Class.method)."""
    return "(InjectorActor)" in title and title.endswith(".submit")


def inject_trigger(spec: dict):
    """Kill once a part file exists while node 2's actor computes a batch: that batch is lost."""
    from diffinject.stages.inject.synthetic import PARTS, part_files

    parts = Path(spec["out"]) / PARTS
    return (lambda: len(part_files(parts)) if parts.is_dir() else 0,
            lambda written, node2_workers: written >= 1 and any(map(busy_injector, node2_workers)))


def run_inject(spec: dict) -> dict:
    """The pool is sized from the cluster's CPUs: one actor per node here."""
    import numpy as np
    import pyarrow.parquet as pq

    from ray.data import DataContext

    from diffinject.config.schema import InjectionConfig
    from diffinject.cluster.inject_job import run_injection_job

    # Hand out batches only once every actor is up: otherwise, on a busy machine, the head's
    # actor can finish the job before node 2's has loaded its model.
    DataContext.get_current().wait_for_min_actors_s = TIMEOUT_S
    d = np.load(spec["arrays"])
    ids, t = d["ids"].astype(object), d["topk"]
    run_injection_job(pq.read_table(spec["manifest"]), d["images"], ids, d["labels"], d["biases"], d["images"][t],
                      ids[t], d["labels"][t], d["biases"][t], spec["checkpoint"], InjectionConfig(**spec["injection"]),
                      spec["out"])
    return {}


JOBS = {"train": (train_trigger, run_train), "inject": (inject_trigger, run_inject)}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    trigger, run = JOBS[spec["job"]]
    ensure_ray()
    head_id = ray.get_runtime_context().get_node_id()
    wait_for(lambda: len(alive_nodes()) == 2, "both nodes to join")
    node2_id = next(n for n in alive_nodes() if n != head_id)
    killer = NodeKiller(spec, node2_id, *trigger(spec))
    killer.start()
    started = time.time()
    result = run(spec)
    finished = time.time()
    killer.job_done.set()
    killer.join(timeout=TIMEOUT_S)
    summary = {**result, **killer.report, "started": started, "finished": finished,
               "head_id": head_id, "node2_id": node2_id, "alive_nodes_at_end": alive_nodes()}
    Path(spec["summary"]).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
