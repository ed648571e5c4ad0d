"""An emulated cloud cluster on this machine, for tests and for trying docs/cluster.md without a cloud.

    head    `ray start --head --num-cpus=0` (drivers only, as cluster.yaml's head)
    worker  `ray start --address=...` in a mount namespace of its own, where /tmp and the torch
            hub cache are empty tmpfs mounts: it sees none of the head's working files (the
            driver's data, caches, artifact mirror, run folders), as a second machine would not
    S3      moto's server on loopback, the shared storage (AWS_ENDPOINT_URL points every client at it)
    MLflow  a tracking server on loopback with its artifact root on that S3

`python tests/emulated_cluster.py` starts one and prints the environment to export; Ctrl-C (or
SIGTERM) stops it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from two_node_driver import kill_tree

RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
MLFLOW = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
BUCKET = "diffinject"
WORKER_IP = "127.0.0.2"  # so that a driver, which joins the node of its own IP, lands on the head
STARTUP_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_isolate() -> bool:
    """Whether this machine lets a process have a mount namespace of its own with tmpfs mounts (root)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    return subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                          capture_output=True).returncode == 0


class Services:
    """Processes of a test cluster, each logging to `root/<name>.log`, all killed by `stop()`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.ray_port, self.mlflow_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        self.temps: list[str] = []
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": f"127.0.0.1:{self.ray_port}",
                    "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow_port}"}

    def start_mlflow(self, artifact_root: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._spawn("mlflow", [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
                               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                               "--default-artifact-root", artifact_root, "--no-serve-artifacts", "--workers", "1"])
        self._wait(lambda: _answers(f"http://127.0.0.1:{self.mlflow_port}/health"), "the MLflow server")

    def temp_dir(self, prefix: str) -> str:
        temp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's socket paths have a length limit
        self.temps.append(temp)
        return temp

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:  # not reaped yet, so its pid is still its own
                kill_tree(proc.pid)
                proc.wait()
        for temp in self.temps:
            shutil.rmtree(temp, ignore_errors=True)

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> Path:
        log = self.root / f"{name}.log"
        with log.open("w") as out:
            self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or self.env,
                                               start_new_session=True))
        return log

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + STARTUP_S
        while not ready():
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.root.glob("*.log"))
                self.stop()
                raise RuntimeError(f"{what} did not come up:\n{logs}")
            time.sleep(0.3)


class EmulatedCluster(Services):
    """Start with `start()`, run drivers with `env` (RAY_ADDRESS, MLFLOW_TRACKING_URI, AWS_*), `stop()`."""

    def __init__(self, root: Path, worker_cpus: int = 2):
        super().__init__(root)
        self.worker_cpus, self.s3_port = worker_cpus, free_port()
        self.hub = _torch_hub()
        self.env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                         "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
                         "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}"})
        self.worker: subprocess.Popen | None = None
        self.run_id = uuid.uuid4().hex[:8]

    @property
    def storage(self) -> str:
        """The shared prefix: new with each cluster (its S3 starts empty, while the driver's local
        mirror of an artifact root outlives it)."""
        return f"s3://{BUCKET}/{self.run_id}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)])
        self._wait(lambda: _answers(f"http://127.0.0.1:{self.s3_port}/moto-api/"), "the S3 server")
        import boto3

        boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        self.start_mlflow(f"{self.storage}/mlflow")
        head_temp = self.temp_dir("rh-")
        head_log = self._spawn("head", [RAY, "start", "--head", "--block", "--port", str(self.ray_port),
                                        "--num-cpus", "0", "--include-dashboard=false", "--disable-usage-stats",
                                        "--object-store-memory", str(200 * 2**20), "--temp-dir", head_temp])
        self._wait(lambda: "Ray runtime started" in head_log.read_text(), "the head node")
        # the worker: a private /tmp and torch hub cache, then `ray start` (exec: its pid is the node's)
        hidden = " && ".join(f"mount -t tmpfs tmpfs {path}" for path in ("/tmp", self.hub))
        start = " ".join([RAY, "start", "--block", "--address", self.env["RAY_ADDRESS"], "--node-ip-address",
                          WORKER_IP, "--num-cpus", str(self.worker_cpus), "--disable-usage-stats",
                          "--include-log-monitor=false", "--object-store-memory", str(200 * 2**20),
                          "--temp-dir", "/tmp/rw"])
        worker_log = self._spawn("worker", ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                            f"mkdir -p {self.hub} && {hidden} && exec {start}"])
        self.worker = self.procs[-1]
        self._wait(lambda: "Ray runtime started" in worker_log.read_text(), "the worker node")

    def in_worker(self, command: str) -> str:
        """Run a shell command in the worker's mount namespace (what that node's disk holds)."""
        return subprocess.run(["nsenter", "-t", str(self.worker.pid), "-m", "sh", "-c", command],
                              capture_output=True, text=True).stdout


class FakeAutoscalingCluster(Services):
    """A head with an autoscaler whose node types carry fake GPUs (Ray's fake multi-node provider:
    the autoscaler starts a node as local Ray processes when a demand needs one). Jobs on its GPUs
    compute on the CPU (DIFFINJECT_FAKE_GPUS). `start()` / `stop()`; `env` for drivers."""

    def __init__(self, root: Path, node_types: dict, idle_timeout_minutes: float = 5):
        super().__init__(root)
        self.config = self.root / "autoscaling.json"
        self.node_types, self.idle_timeout_minutes = node_types, idle_timeout_minutes
        self.env.update({"DIFFINJECT_FAKE_GPUS": "1", "DIFFINJECT_AUTOSCALING_CONFIG": str(self.config)})

    def start(self) -> None:
        import json

        self.root.mkdir(parents=True, exist_ok=True)
        self.start_mlflow(str(self.root / "mlartifacts"))
        head = {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0}
        config = {"cluster_name": "fake", "max_workers": sum(t.get("max_workers", 0) for t in self.node_types.values()),
                  "upscaling_speed": 1.0, "idle_timeout_minutes": self.idle_timeout_minutes,
                  "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{self.ray_port}",
                               "disable_launch_config_check": True, "disable_node_updaters": True,
                               "use_node_id_as_ip": True},
                  "auth": {"ssh_user": "ray"}, "head_node_type": "ray.head.default",
                  "available_node_types": {"ray.head.default": head, **self.node_types},
                  **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                                     "setup_commands", "head_setup_commands", "worker_setup_commands",
                                     "head_start_ray_commands", "worker_start_ray_commands")},
                  "file_mounts": {}, "file_mounts_sync_continuously": False}
        self.config.write_text(json.dumps(config))
        env = {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        log = self._spawn("head", [RAY, "start", "--head", "--block", "--port", str(self.ray_port), "--num-cpus", "1",
                                   f"--autoscaling-config={self.config}", "--include-dashboard=false",
                                   "--disable-usage-stats", "--object-store-memory", str(200 * 2**20),
                                   "--temp-dir", self.temp_dir("ra-")], env=env)
        self._wait(lambda: "Ray runtime started" in log.read_text(), "the autoscaling head")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _torch_hub() -> str:
    import torch

    return torch.hub.get_dir()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as Ctrl-C: the cluster's processes go too
    cluster = EmulatedCluster(Path(tempfile.mkdtemp(prefix="emulated-cluster-")))
    cluster.start()
    names = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
             "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
    print("\n".join(f"export {n}={cluster.env[n]}" for n in names))
    print(f"export DIFFINJECT_STORAGE={cluster.storage}\n# logs in {cluster.root}; Ctrl-C stops the cluster", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
