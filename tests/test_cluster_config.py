"""cluster.yaml (AWS) and cluster-local.yaml (own machines), checked the way `ray up` would
read them, without a cloud: Ray's own prepare_config + validate_config (the schema forbids
unknown fields), the commands Ray would run (in order, valid bash, the env file they write
reaching a login shell), the Docker image and host AMI, the MLflow server and its relay, the
checkout sync, and the user guide docs/cluster.md."""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.command_runner import _with_interactive
from ray.autoscaler._private.docker import docker_start_cmds
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
FILES = ["cluster.yaml", "cluster-local.yaml"]
RAY_VERSION = ray.__version__
SSM_DLAMI = re.compile(
    r"^resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
    r"base-oss-nvidia-driver-gpu-ubuntu-(22|24)\.04/latest/ami-id$"
)
COMMAND_LISTS = [
    "initialization_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
]


def _raw(name):
    return yaml.safe_load((ROOT / name).read_text())


def _prepared(name):
    """The config as `ray up` holds it before the provider's bootstrap: defaults merged,
    setup_commands prepended to head_/worker_setup_commands, node types filled in."""
    return prepare_config(copy.deepcopy(_raw(name)))


def _index(commands, predicate, what):
    hits = [i for i, cmd in enumerate(commands) if predicate(cmd)]
    assert hits, f"no command {what} in {commands}"
    return hits[0]


# ------------------------------------------------------------------ Ray's own validation


@pytest.mark.parametrize("name", FILES)
def test_validates_against_rays_schema(name):
    config = _prepared(name)
    validate_config(config)
    broken = copy.deepcopy(config)
    broken["no_such_field"] = 1  # the schema forbids unknown fields: validation is not vacuous
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


@pytest.mark.parametrize("name", FILES)
def test_commands_are_valid_bash(name):
    config = _prepared(name)
    for key in COMMAND_LISTS:
        for cmd in config.get(key, []):
            result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert result.returncode == 0, f"{key}: {cmd}\n{result.stderr}"


# ------------------------------------------------------------------ image and host AMI


def test_docker_image_pins_installed_ray_and_the_projects_python():
    config = _prepared("cluster.yaml")
    docker = config["docker"]
    image = docker["image"]
    # the same image on every node: no head or worker override, globally or per node type
    assert not {"head_image", "worker_image"} & set(docker)
    for node_type in config["available_node_types"].values():
        assert "worker_image" not in node_type.get("docker", {})
    match = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<minor>\d+)-gpu", image)
    assert match, image
    assert match["ray"] == RAY_VERSION
    assert (match["py"], match["minor"]) == ("3", "11")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains("3.11"), requires


def test_host_ami_is_the_ubuntu_dlami_with_the_nvidia_driver_and_ray_passes_it_through():
    from ray.autoscaler._private.aws.config import DEFAULT_AMI, _check_ami

    config = _prepared("cluster.yaml")
    assert "latest_dlami" not in (ROOT / "cluster.yaml").read_text()
    for name, node_type in config["available_node_types"].items():
        assert SSM_DLAMI.match(node_type["node_config"]["ImageId"]), name
    # The bootstrap step that resolves `latest_dlami` leaves an SSM parameter as it is, and
    # the node provider hands node_config to EC2's create_instances, which resolves it.
    checked = copy.deepcopy(config)
    _check_ami(checked)
    assert checked["available_node_types"] == config["available_node_types"]
    # ... while it does replace Ray's old default (what the file used to say)
    old = copy.deepcopy(config)
    old["available_node_types"]["gpu_worker"]["node_config"]["ImageId"] = "latest_dlami"
    _check_ami(old)
    replaced = old["available_node_types"]["gpu_worker"]["node_config"]["ImageId"]
    assert replaced == DEFAULT_AMI[config["provider"]["region"]]


def test_aws_docker_runs_gpus_on_workers_and_keeps_mlflow_on_the_head_disk():
    config = _prepared("cluster.yaml")
    docker = config["docker"]

    def run_command(options):  # the `docker run` Ray issues on a node
        return docker_start_cmds(
            "ubuntu", docker["image"], {"~/diffinject": "."}, docker["container_name"],
            options, config["cluster_name"], "/home/ray", "docker",
        )

    head = run_command(docker.get("run_options", []) + docker.get("head_run_options", []))
    worker_docker = dict(docker)  # as the autoscaler merges a node type's docker section
    worker_docker.update(config["available_node_types"]["gpu_worker"].get("docker", {}))
    worker = run_command(worker_docker.get("run_options", []) + worker_docker.get("worker_run_options", []))
    assert "--gpus all" in worker and "--gpus" not in head
    assert "--net=host" in head and "-v /home/ubuntu/mlflow:/home/ray/mlflow" in head
    assert "NVIDIA_VISIBLE_DEVICES=void" in head
    assert "mkdir -p /home/ubuntu/mlflow" in config["initialization_commands"]  # on the host, before Docker
    assert "sqlite:///$HOME/mlflow/" in " ".join(config["head_start_ray_commands"])  # /home/ray in the image


def test_aws_workers_are_gpus_that_scale_from_zero_and_storage_is_shared():
    config = _prepared("cluster.yaml")
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))
    assert worker["resources"].get("GPU", 0) >= 1  # in ~/ray_bootstrap_config.yaml, where the platform looks
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    text = (ROOT / "cluster.yaml").read_text()
    assert "DIFFINJECT_STORAGE=s3://" in text and "--default-artifact-root $DIFFINJECT_STORAGE/mlflow" in text


# ------------------------------------------------------------------ setup and start commands


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("kind", ["head_setup_commands", "worker_setup_commands"])
def test_setup_commands_install_then_write_the_env_file(name, kind):
    commands = _prepared(name)[kind]
    install = _index(
        commands,
        lambda c: "pip install" in c and "boto3" in c and f'"ray[default]=={RAY_VERSION}"' in c,
        "installing boto3 and ray[default] at the installed version",
    )
    editable = _index(commands, lambda c: re.search(r"pip install (-q )?-e ~/diffinject\b", c), "pip install -e")
    env_file = _index(commands, lambda c: re.search(r"DIFFINJECT_STORAGE=\S+' > ~/diffinject.env", c), "writing ~/diffinject.env")
    bashrc = _index(commands, lambda c: "source ~/diffinject.env' >> ~/.bashrc" in c, "sourcing it from ~/.bashrc")
    assert install < editable < env_file < bashrc
    tracking = [i for i, c in enumerate(commands) if "MLFLOW_TRACKING_URI" in c]
    if kind == "head_setup_commands":
        assert tracking and min(tracking) > env_file
        assert "socat" in " ".join(commands[min(tracking):])  # the relay's tool, on the head only
    else:
        assert not tracking and "socat" not in " ".join(commands)


@pytest.mark.parametrize("name", FILES)
def test_env_file_reaches_the_shells_ray_runs(name, tmp_path):
    """Run the head's env-file commands in a scratch HOME, then read the settings back the way
    Ray runs `ray start` (`bash --login -c -i 'source ~/.bashrc; ...'`)."""
    home = tmp_path / "home"
    bindir = tmp_path / "bin"
    home.mkdir()
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)  # `python` as on the nodes: this one, with Ray
    (home / ".bashrc").write_text(f"export PATH={bindir}:$PATH\n")  # the image's .bashrc sets its PATH so
    env = {"HOME": str(home), "PATH": f"{bindir}:{os.environ['PATH']}", "LANG": "C.UTF-8"}
    for cmd in _prepared(name)["head_setup_commands"]:
        if "diffinject.env" in cmd:
            subprocess.run(["bash", "-c", cmd], env=env, check=True, timeout=120)
    probe = " ".join(_with_interactive('echo "$DIFFINJECT_STORAGE|$MLFLOW_TRACKING_URI"'))
    out = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    storage, tracking = out.stdout.strip().splitlines()[-1].split("|")
    assert storage.startswith("s3://" if name == "cluster.yaml" else "/"), out
    assert tracking == f"http://{ray.util.get_node_ip_address()}:5000", out


@pytest.mark.parametrize("name", FILES)
def test_head_starts_ray_then_mlflow_on_the_private_address_then_the_relay(name):
    config = _prepared(name)
    commands = config["head_start_ray_commands"]
    start = _index(commands, lambda c: c.startswith("ray start --head"), "ray start --head")
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in commands[start]
    assert "--dashboard-host=127.0.0.1" in commands[start]
    server = _index(commands, lambda c: "mlflow server" in c, "starting the MLflow server")
    mlflow = commands[server]
    assert "--host $DIFFINJECT_HEAD_IP " in mlflow and "--port 5000" in mlflow
    assert "--backend-store-uri sqlite:///" in mlflow and ".db " not in mlflow  # *.db is rsync-excluded
    assert "--default-artifact-root $DIFFINJECT_STORAGE/mlflow" in mlflow and "--no-serve-artifacts" in mlflow
    relay = _index(commands, lambda c: "socat" in c, "the relay")
    assert "TCP-LISTEN:5000,bind=127.0.0.1," in commands[relay] and "TCP:$DIFFINJECT_HEAD_IP:5000" in commands[relay]
    assert start < server < relay
    assert all(commands[i].rstrip().endswith("&") for i in (server, relay))  # do not block `ray up`
    # the address both use is the one Ray itself picks for the head, written by head setup
    assert "ray.util.get_node_ip_address()" in " ".join(config["head_setup_commands"])
    assert config["worker_start_ray_commands"][-1] == "ray start --address=$RAY_HEAD_IP:6379"


@pytest.mark.parametrize("name", FILES)
def test_nothing_binds_all_interfaces_and_no_credentials(name):
    text = (ROOT / name).read_text()
    prepared = json.dumps(_prepared(name))  # also what Ray's defaults would add
    assert "0.0.0.0" not in text and "0.0.0.0" not in prepared
    assert not re.search(
        r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_session_token|password|BEGIN [A-Z ]*PRIVATE KEY",
        text, re.IGNORECASE,
    )


# ------------------------------------------------------------------ the checkout sync


def _rsync_excluded(parts, is_dir, patterns):
    """rsync's exclude rules for the pattern forms used here (man rsync, "INCLUDE/EXCLUDE
    PATTERN RULES"): a trailing / matches directories only; a leading / anchors the pattern
    at the transfer's root; a pattern without / matches the last component only; `*` stays
    within a component; an excluded directory takes everything below it along."""
    for depth in range(1, len(parts) + 1):
        path, path_is_dir = parts[:depth], depth < len(parts) or is_dir
        for pattern in patterns:
            dir_only = pattern.endswith("/")
            pat = pattern.rstrip("/")
            if dir_only and not path_is_dir:
                continue
            if pat.startswith("/"):
                pat_parts = pat.lstrip("/").split("/")
                hit = len(pat_parts) == len(path) and all(map(fnmatch.fnmatchcase, path, pat_parts))
            elif "/" in pat:
                pat_parts = pat.split("/")
                hit = len(path) >= len(pat_parts) and all(
                    map(fnmatch.fnmatchcase, path[-len(pat_parts):], pat_parts)
                )
            else:
                hit = fnmatch.fnmatchcase(path[-1], pat)
            if hit:
                return True
    return False


@pytest.mark.parametrize("name", FILES)
def test_checkout_sync_keeps_the_package_and_skips_local_outputs(name):
    patterns = _prepared(name)["rsync_exclude"]
    assert dict(_raw(name)["file_mounts"]) == {"~/diffinject": "."}
    for top in ["data", "cache", "artifacts", "ray_results", "results", "mlartifacts"]:
        assert _rsync_excluded([top], True, patterns), top
    assert _rsync_excluded(["mlflow.db"], False, patterns)
    package = ROOT / "platform"
    shipped = [p for p in package.rglob("*") if "__pycache__" not in p.parts and ".egg-info" not in str(p)]
    assert any(p.parts[-2:] == ("diffinject", "data") for p in shipped)  # a subpackage named like a top folder
    for path in shipped:
        parts = list(path.relative_to(ROOT).parts)
        assert not _rsync_excluded(parts, path.is_dir(), patterns), f"{'/'.join(parts)} would not reach the nodes"
    for kept in ["pyproject.toml", "experiments/table1.py", ".git"]:
        assert not _rsync_excluded(kept.split("/"), (ROOT / kept).is_dir(), patterns), kept


# ------------------------------------------------------------------ the user guide


def test_user_guide_names_the_image_install_storage_mlflow_and_teardown():
    guide = (ROOT / "docs" / "cluster.md").read_text()
    config = _raw("cluster.yaml")
    assert config["docker"]["image"] in guide
    assert config["available_node_types"]["head"]["node_config"]["ImageId"] in guide
    assert f'pip install boto3 "ray[default]=={RAY_VERSION}"' in guide and "pip install -e" in guide
    assert "DIFFINJECT_STORAGE" in guide and "s3://" in guide and "aws s3 rm --recursive" in guide
    assert "MLFLOW_TRACKING_URI=http://<head private IP>:5000" in guide and "127.0.0.1:5000" in guide
    assert "ray attach cluster.yaml -p 8265 -p 5000" in guide and "ray down cluster.yaml" in guide
    assert "## Try it without a cloud" in guide
