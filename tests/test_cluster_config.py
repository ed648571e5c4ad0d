"""cluster.yaml (AWS) and cluster-local.yaml (own machines) against the schema shipped in Ray."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import validate_config

ROOT = Path(__file__).resolve().parents[1]
FILES = ["cluster.yaml", "cluster-local.yaml"]


def _load(name):
    config = yaml.safe_load((ROOT / name).read_text())
    config.setdefault("cluster_synced_files", [])  # filled in by `ray up` before Ray validates
    return config


@pytest.mark.parametrize("name", FILES)
def test_validates_against_rays_schema(name):
    config = _load(name)
    validate_config(config)
    broken = copy.deepcopy(config)
    broken["no_such_field"] = 1  # the schema forbids unknown fields: validation is not vacuous
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


@pytest.mark.parametrize("name", FILES)
def test_services_bind_privately_and_no_credentials(name):
    text = (ROOT / name).read_text()
    config = _load(name)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "mlflow server --host $(hostname -I" in head and "0.0.0.0" not in text
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|password", text, re.IGNORECASE)
    assert "pip install -q -e" in " ".join(config["setup_commands"])  # the synced checkout is what runs
    assert {"data/", "artifacts/", "ray_results/"} <= set(config["rsync_exclude"])


def test_aws_workers_are_gpus_that_scale_from_zero_and_storage_is_shared():
    config = _load("cluster.yaml")
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    text = (ROOT / "cluster.yaml").read_text()
    assert "DIFFINJECT_STORAGE=s3://" in text and "--default-artifact-root $DIFFINJECT_STORAGE/mlflow" in text
