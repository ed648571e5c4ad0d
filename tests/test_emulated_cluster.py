"""`table1.py --quick` on an emulated cloud cluster (tests/emulated_cluster.py): a head with no CPUs
for jobs, a worker node that cannot see the head's files, S3 on loopback as the shared storage,
an MLflow server with its artifacts there. Every method, one seed, small lengths: the table
must come out with the numbers of the same command on one node, every artifact in the shared
store, every MLflow run FINISHED, and the worker must have got its inputs through Ray."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from emulated_cluster import EmulatedCluster, can_isolate

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "table1.py"
# every method, short: the point is where things run and what they read, not the accuracies
SHORT = ["classifier.num_steps=30", "bias.classifier.num_steps=30", "baselines.lff_num_steps=30",
         "baselines.disent_num_steps=30", "baselines.committee_steps=20", "baselines.committee_eval_every=10",
         "injection.conflict_ratio=0.01", "stylegan2.adapt_steps=4", "stylegan2.project_steps=4", "fastgan.num_steps=4"]
TABLE_S = 900

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not can_isolate(), reason="needs root and unshare/nsenter to give the worker node a "
                                                           "mount namespace of its own")]


def _table(env: dict, root: Path, artifact_root: str, storage_path: str, *extra: str) -> str:
    cmd = [sys.executable, str(SCRIPT), "--quick", "--seeds", "0", "--data-root", str(root / "data"),
           "--cache-root", str(root / "cache"), "--artifact-root", artifact_root, "--out", str(root / "out"),
           "--set", f"run.storage_path={storage_path}", *[a for s in SHORT for a in ("--set", s)], *extra]
    root.mkdir(parents=True, exist_ok=True)
    log = root / "driver.log"
    with log.open("w") as out:
        rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root, timeout=TABLE_S).returncode
    text = log.read_text()
    assert rc == 0, f"table1.py failed (rc {rc}) in {root}:\n{text[-8000:]}"
    return text


def _numbers(root: Path) -> dict:
    with (root / "out" / "table1-quick.csv").open() as handle:
        return {row["method"]: {k: v for k, v in row.items() if k.endswith(("_mean", "_std"))}
                for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmulatedCluster(tmp_path_factory.mktemp("cluster"))
    c.start()
    yield c
    c.stop()


def test_quick_table_on_two_nodes_that_share_no_files(cluster, tmp_path):
    import pyarrow.fs

    from diffinject.experiment.cache import MARKER

    # the same command on one node: a local Ray of its own (the driver starts it), local folders
    single = {k: v for k, v in cluster.env.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    single["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'single' / 'mlflow.db'}"
    _table(single, tmp_path / "single", str(tmp_path / "single" / "artifacts"), str(tmp_path / "single" / "ray"),
           "--num-workers", "1")  # as the cluster's default: a Ray Train worker per training

    prefix = cluster.storage  # new with each cluster: no local mirror of an earlier run
    log = _table(cluster.env, tmp_path / "cluster", f"{prefix}/artifacts", f"{prefix}/ray_results")
    assert "GPUs: no" in log and "1 Ray Train worker(s) per training" in log

    # the same numbers as on one node
    assert _numbers(tmp_path / "cluster") == _numbers(tmp_path / "single")

    # the worker saw none of the driver's files, and got the inputs it read through Ray
    assert cluster.in_worker(f"test -e {tmp_path} && echo visible").strip() == ""
    fetched = cluster.in_worker("ls /tmp/diffinject-inputs").split()
    assert fetched, "the worker node fetched no input: its jobs did not run there"

    # every artifact the driver uses is in the shared store, complete
    fs = pyarrow.fs.S3FileSystem(endpoint_override=cluster.env["AWS_ENDPOINT_URL"], region="us-east-1",
                                 access_key="testing", secret_key="testing")
    base = f"{prefix.removeprefix('s3://')}/artifacts"
    stored = {Path(info.path).relative_to(base).parent.as_posix()
              for info in fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
              if info.path.endswith("/" + MARKER)}
    assert {"stage1", "stage2", "stage3", "stylegan2_adapted", "fastgan_classes", "cell"} <= \
        {key.split("/")[0] for key in stored}
    cells = {key for key in stored if key.startswith("cell/")}
    assert len(cells) == 8, cells  # one per method

    # every MLflow run of the table ended FINISHED on the server
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("table1-quick")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert runs and {r.info.status for r in runs} == {"FINISHED"}, {r.info.run_name: r.info.status for r in runs}
    (table,) = [r for r in runs if r.data.tags.get("diffinject.role") == "table"]
    assert table.data.tags["run.use_gpu"] == "false"
    logged = fs.get_file_info(pyarrow.fs.FileSelector(f"{prefix.removeprefix('s3://')}/mlflow", recursive=True))
    assert any(info.path.endswith("table1-quick.csv") for info in logged)  # the runs' artifacts: on S3 too
