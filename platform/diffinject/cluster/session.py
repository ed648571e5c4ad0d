"""What the Ray cluster can provide, decided once per table or sweep (docs/cluster.md).

GPU use is resolved from what the cluster *can* provide, not only from the nodes alive at the
moment: an autoscaling cluster with `min_workers: 0` has no GPU node until something asks for
one. The GPU node types come from the autoscaler's config (the GCS copy that autoscaler v2
reports, else the file `ray up` leaves on the head, `~/ray_bootstrap_config.yaml`, or the one
DIFFINJECT_AUTOSCALING_CONFIG names). A driver resolves run.use_gpu once, writes the answer
("true" or "false") into every config of its table, asks the autoscaler for the GPU nodes its
cells will use, and withdraws that request when it ends; jobs then never re-decide, so a table
does not drift to the CPU when idle GPU nodes are scaled down between its jobs.

Tests only: DIFFINJECT_FAKE_GPUS=1 lets jobs scheduled on (fake) GPU resources compute on the
CPU, with the gloo backend, for autoscaling tests whose GPUs are resource labels.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from diffinject.core.errors import ConfigError

AUTOSCALING_CONFIG_ENV = "DIFFINJECT_AUTOSCALING_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the autoscaler's config on the head
FAKE_GPUS_ENV = "DIFFINJECT_FAKE_GPUS"


def fake_gpus() -> bool:
    """Tests only: GPU resources are labels, computing happens on the CPU."""
    return os.environ.get(FAKE_GPUS_ENV) == "1"


def _autoscaler_node_types() -> dict[str, dict] | None:
    """{node type: its resources} of the autoscaler's config, or None when there is no autoscaler."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()  # reported by autoscaler v2
    if config is not None and config.node_group_configs:
        return {g.name: {**dict(g.resources), "max_workers": g.max_count} for g in config.node_group_configs}
    path = Path(os.environ.get(AUTOSCALING_CONFIG_ENV) or BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return None
    import yaml

    try:
        types = (yaml.safe_load(path.read_text()) or {}).get("available_node_types") or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the autoscaler's config is not YAML ({exc})") from None
    return {name: {**(spec.get("resources") or {}), "max_workers": spec.get("max_workers", 0)}
            for name, spec in types.items() if isinstance(spec, dict)}


def gpu_capacity() -> dict:
    """The GPUs of the running cluster: {"alive": GPUs on live nodes, "scalable": the most the
    autoscaler may add (node types with GPUs x their max_workers, an unlimited type counting
    one node; 0 without an autoscaler)}."""
    import ray

    if not ray.is_initialized():
        return {"alive": 0, "scalable": 0}
    scalable = 0
    for spec in (_autoscaler_node_types() or {}).values():
        count = int(spec.get("max_workers", 0) or 0)
        scalable += int(spec.get("GPU", 0) or 0) * (1 if count < 0 else count)
    return {"alive": int(ray.cluster_resources().get("GPU", 0)), "scalable": scalable}


def resolve_use_gpu(use_gpu: str | bool, capacity: dict | None = None) -> bool:
    """Whether jobs run on GPUs, from run.use_gpu ("auto" | "true" | "false", or a bool): auto
    when the cluster has GPUs or its autoscaler can add GPU nodes; true is refused on a cluster
    that can have none, where a GPU request would wait forever."""
    if use_gpu in (False, "false"):
        return False
    capacity = capacity or gpu_capacity()
    possible = capacity["alive"] + capacity["scalable"] > 0
    if use_gpu == "auto":
        return possible
    if not possible:
        raise ConfigError("run.use_gpu=true, but the Ray cluster has no GPUs and no autoscaler node type with GPUs "
                          "(a GPU request would wait forever); use run.use_gpu=auto or false, or join a cluster "
                          "with GPUs (RAY_ADDRESS)")
    return True


def decide_gpu_use(configs: list, capacity: dict | None = None) -> tuple[bool, str]:
    """Resolve run.use_gpu of every config once, write it back as "true" / "false" (so no job
    decides again), and say why in one line."""
    capacity = capacity or gpu_capacity()
    asked = {str(cfg.run.use_gpu).lower() for cfg in configs}
    choices = {resolve_use_gpu(cfg.run.use_gpu, capacity) for cfg in configs}
    if len(choices) > 1:
        raise ConfigError("the configs of one table ask for different run.use_gpu; give one value for all")
    on_gpu = choices.pop() if choices else False
    for cfg in configs:
        cfg.run.use_gpu = "true" if on_gpu else "false"
    if on_gpu:
        why = f"{capacity['alive']} alive now, the autoscaler may add {capacity['scalable']}"
    elif asked == {"false"}:
        why = "run.use_gpu=false"
    else:
        why = "the cluster has none and no autoscaler node type with GPUs"
    return on_gpu, f"GPUs: {'yes' if on_gpu else 'no'} ({why})"


def request_gpu_nodes(count: int) -> None:
    """Ask the autoscaler for room for `count` one-GPU jobs at once (persistent until withdrawn:
    request_gpu_nodes(0)). No effect on a cluster without an autoscaler."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}] * max(0, count))


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def on_node(node: str):
    """A scheduling strategy that runs a task on `node` and nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node, soft=False)


def node_cpus(node: str) -> int:
    """The CPUs that node `node` offers to Ray (0 on a head started with --num-cpus=0)."""
    import ray

    return next((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["NodeID"] == node and n["Alive"]), 0)


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"])


def several_nodes() -> bool:
    """Whether the cluster has, or its autoscaler may add, a node besides this one."""
    return alive_nodes() > 1 or any(int(spec.get("max_workers", 0) or 0) != 0
                                    for spec in (_autoscaler_node_types() or {}).values())


def check_shared_services(tracking_uri: str, storage_paths: list[str]) -> list[str]:
    """On a cluster of several nodes: refuse an MLflow store in a file of this node (the workers
    of other nodes would log into files of their own), and return a warning for each
    run.storage_path that is a local folder (Ray Train needs storage every node shares: fine if
    it is a mount every node has at that path)."""
    if not several_nodes():
        return []
    scheme = tracking_uri.split(":", 1)[0] if "://" in tracking_uri else ""
    if scheme in ("", "file", "sqlite"):
        raise ConfigError(f"MLflow tracking store {tracking_uri} is a file on this node, but the Ray cluster has "
                          f"several nodes whose workers log to it: set MLFLOW_TRACKING_URI to a server every node "
                          f"reaches (cluster.yaml starts one on the head, http://<head's private address>:5000)")
    return [f"warning: run.storage_path {path} is a local folder; on several nodes Ray Train needs storage every node "
            f"shares (s3://..., or a folder every node mounts at that path)" for path in dict.fromkeys(storage_paths)
            if "://" not in path]


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS's cluster, or start a local one without the dashboard."""
    import ray

    # Ray Train V2 answers each ray.train.report only at its controller's poll interval
    # (2 s by default): far too slow for the frequent evaluations of small runs.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the injection job prints its own progress
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
