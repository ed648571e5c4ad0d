"""Bad outputs, tracking stores, GPU requests and values end in one `error:` line, exit code 2,
within seconds, before any work starts (preflight, config, CLI and the drivers)."""
from __future__ import annotations

import errno
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from diffinject.cli.main import main
from diffinject.core import preflight
from diffinject.core.errors import ConfigError
from diffinject.core.preflight import check_output_dir, check_output_file
from diffinject.nets.diffusion import build_unet, get_preset
from diffinject.nets.diffusion.checkpoint import unet_checkpoint_bytes
from diffinject.tracking.store_check import check_tracking_store
from scripts import load_script as _script


def _fails(argv: list[str], capsys, entry=main, within_s: float = 15.0) -> str:
    """Run `entry(argv)`: exit code 2 with one `error:` line, within `within_s`; returns the line."""
    started = time.perf_counter()
    assert entry(argv) == 2
    assert time.perf_counter() - started < within_s
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def _probe_fails(monkeypatch, code: int) -> None:
    def fail(folder):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(preflight, "_write_probe", fail)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("preflight-ckpt") / "diffusion.pt"
    path.write_bytes(unet_checkpoint_bytes(build_unet("tiny_32").state_dict(), get_preset("tiny_32"), 0, {}))
    return path


# --- output folders and files ------------------------------------------------------------

def test_a_missing_output_folder_is_created_and_left_empty(tmp_path):
    check_output_dir(tmp_path / "a" / "b", "--out")
    assert (tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir())
    check_output_file(tmp_path / "c" / "x.png", "--out")
    assert not any((tmp_path / "c").iterdir())


def test_outputs_that_are_the_wrong_kind_of_path(tmp_path):
    file = tmp_path / "file"
    file.write_text("mine")
    with pytest.raises(ConfigError, match=f"^--out {file} is a file, not a folder$"):
        check_output_dir(file, "--out")
    with pytest.raises(ConfigError, match=f"^--out {file / 'sub'} is not writable: Not a directory$"):
        check_output_dir(file / "sub", "--out")
    with pytest.raises(ConfigError, match=f"^--plot {tmp_path} is a folder; expected a file name$"):
        check_output_file(tmp_path, "--plot")
    assert file.read_text() == "mine"


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_read_only_or_full_output_folders(tmp_path, monkeypatch, code):
    _probe_fails(monkeypatch, code)
    with pytest.raises(ConfigError, match=f"^--out {tmp_path} is not writable: {os.strerror(code)}$"):
        check_output_dir(tmp_path, "--out")
    with pytest.raises(ConfigError, match=f"its folder {tmp_path} is not writable: {os.strerror(code)}$"):
        check_output_file(tmp_path / "x.png", "--plot")


def test_the_probe_really_writes_and_removes_its_file(tmp_path, monkeypatch):
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(Path(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    check_output_dir(tmp_path, "--out")
    assert [p.parent for p in opened] == [tmp_path] and not any(tmp_path.iterdir())


# --- the MLflow tracking store -------------------------------------------------------------

def test_usable_sqlite_stores_pass(tmp_path):
    check_tracking_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # created by MLflow on first use
    sqlite3.connect(tmp_path / "real.db").execute("create table t (x)").connection.commit()
    check_tracking_store(f"sqlite:///{tmp_path / 'real.db'}")
    (tmp_path / "empty.db").touch()  # SQLite treats an empty file as an empty database
    check_tracking_store(f"sqlite:///{tmp_path / 'empty.db'}")


def test_a_file_store_must_be_a_writable_folder(tmp_path):
    check_tracking_store(f"file://{tmp_path / 'mlruns'}")
    assert (tmp_path / "mlruns").is_dir()
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(ConfigError, match=f"^MLflow tracking folder {tmp_path / 'notes'} is a file, not a folder$"):
        check_tracking_store(str(tmp_path / "notes"))


@pytest.mark.parametrize("kind", ["not_a_database", "folder", "read_only_folder", "unknown_scheme"])
def test_bad_tracking_stores_in_the_cli_fail_at_once(kind, in_tmp, monkeypatch, capsys):
    db = in_tmp / "mlflow.db"
    uri, message = f"sqlite:///{db}", None
    if kind == "not_a_database":
        db.write_text("my notes")
        message = f"MLflow tracking database {db}: not an SQLite database"
    elif kind == "folder":
        db.mkdir()
        message = f"MLflow tracking database {db} is a folder; expected an SQLite file"
    elif kind == "read_only_folder":
        _probe_fails(monkeypatch, errno.EACCES)
        message = f"MLflow tracking database {db}: its folder {in_tmp} is not writable: Permission denied"
    else:
        uri = "mlfow://localhost:5000"
        message = "MLflow tracking URI 'mlfow://localhost:5000' has an unknown scheme 'mlfow'"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # results only reads: a database that does not exist yet is no store, whatever its folder
    read_message = f"no MLflow store at {uri}" if kind == "read_only_folder" else message
    assert _fails(["results"], capsys, within_s=10).startswith(f"error: {read_message}")
    assert _fails(["topk", "--quick"], capsys, within_s=10).startswith(f"error: {message}")
    if kind == "not_a_database":
        assert db.read_text() == "my notes"


def test_an_unreachable_tracking_server_fails_within_seconds(in_tmp, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    line = _fails(["train", "vanilla", "--quick"], capsys)
    assert line == ("error: MLflow tracking server http://127.0.0.1:1 does not answer (Connection refused); "
                    "start it, or set MLFLOW_TRACKING_URI to another store")
    assert _fails(["--experiments", "x", "--tracking-uri", "http://127.0.0.1:1"], capsys,
                  _script("compare").main).startswith("error: MLflow tracking server http://127.0.0.1:1")


def test_a_silent_tracking_server_times_out_once():
    with socket.socket() as server:  # accepts connections (backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(ConfigError, match=f"^MLflow tracking server {uri} does not answer "
                                              r"\(no answer within 1 s\)"):
            check_tracking_store(uri, timeout_s=1)
        assert time.perf_counter() - started < 5  # one request, no retries


def test_a_refused_database_host_fails_at_once():
    with pytest.raises(ConfigError, match=r"^MLflow tracking database 127.0.0.1:1 \(postgresql\) does not answer"):
        check_tracking_store("postgresql+psycopg2://u:p@127.0.0.1:1/mlflow")


# --- GPU requests ----------------------------------------------------------------------------

def test_a_gpu_request_on_a_cpu_cluster_is_refused(ray_session):
    from diffinject.cluster.session import resolve_use_gpu

    assert resolve_use_gpu("auto") is False and resolve_use_gpu("false") is False
    with pytest.raises(ConfigError, match="run.use_gpu=true, but the Ray cluster has no GPUs"):
        resolve_use_gpu("true")


def test_gpu_training_on_a_cpu_cluster_ends_instead_of_waiting(ray_session, digits_root, tmp_path):
    """In a subprocess with a deadline: a regression would wait for a GPU forever."""
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    argv = [sys.executable, "-m", "diffinject.cli.main", "train", "vanilla", "--quick", "--data-root",
            str(digits_root / "data"), "--cache-root", str(digits_root / "cache"), "--set", "run.use_gpu=true",
            "--set", "run.num_workers=1", "--set", f"run.storage_path={tmp_path / 'ray_results'}"]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: run.use_gpu=true, but the Ray cluster has no GPUs")


# --- values and inputs of the CLI ------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["train", "vanilla", "--quick", "--set", "run.max_failures=-1"], "run.max_failures must be >= 0, got -1"),
    (["train", "vanilla", "--quick", "--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["topk", "--quick", "--set", "classifier.lr=nan"], "classifier.lr must be a finite number, got nan"),
    (["topk", "--quick", "--set", "classifier.weight_decay=-1"], "classifier.weight_decay must be >= 0, got -1.0"),
    (["topk", "--quick", "--set", "classifier.lr.x=1"], "unknown config field 'classifier.lr.x'"),
    (["diffusion", "train", "--quick", "--set", "diffusion.sample_steps=5000"],
     "diffusion.sample_steps must be in [1, 1000], got 5000"),
    (["data", "build", "colored_digits", "--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["data", "build", "colored_digits", "--ratios", "3"], "invalid conflict ratio '3' for colored_digits"),
])
def test_bad_values_fail_before_any_work(argv, message, in_tmp, capsys):
    assert _fails(argv, capsys).startswith(f"error: {message}")
    assert not (in_tmp / "data").exists()  # nothing was built or converted


def test_storage_path_that_is_a_file(in_tmp, capsys):
    (in_tmp / "ray_results").write_text("mine")
    assert _fails(["train", "vanilla", "--quick"], capsys) == \
        f"error: run.storage_path {in_tmp / 'ray_results'} is a file, not a folder"


@pytest.mark.parametrize("script,argv,option", [
    (None, ["train", "vanilla", "--quick"], "--data-root"),
    (None, ["topk", "--quick"], "--data-root"),
    (None, ["data", "check", "colored_digits"], "--data-root"),
    (None, ["data", "build", "colored_digits"], "--data-root"),
    (None, ["train", "vanilla", "--quick"], "--cache-root"),
    ("table1", ["--quick", "--methods", "vanilla"], "--data-root"),
    ("table1", ["--quick", "--methods", "vanilla"], "--cache-root"),
    ("ablations", ["--quick"], "--data-root"),
])
def test_data_and_cache_roots_that_are_files(script, argv, option, in_tmp, capsys):
    taken = in_tmp / "taken"
    taken.write_text("mine")
    entry = _script(script).main if script else main
    assert _fails(argv + [option, str(taken)], capsys, entry) == f"error: {option} {taken} is a file, not a folder"


def test_a_lock_whose_folder_is_a_file_names_it(tmp_path):
    from diffinject.core.atomic import file_lock

    (tmp_path / "data").write_text("mine")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'data'} is not a folder"):
        with file_lock(tmp_path / "data" / ".colored_digits.lock"):
            pass


def test_inject_outputs_and_inputs_are_checked_first(in_tmp, tiny_checkpoint, capsys):
    argv = ["inject", "--quick", "--checkpoint", str(tiny_checkpoint), "--set", "diffusion.preset=tiny_32"]
    (in_tmp / "out").write_text("mine")
    assert _fails(argv + ["--out", "out"], capsys) == f"error: --out {in_tmp / 'out'} is a file, not a folder"
    missing = in_tmp / "none"
    assert _fails(argv + ["--topk-dir", str(missing)], capsys) == \
        f"error: --topk-dir {missing}: no such folder; expected the output of `diffinject topk`"
    (in_tmp / "stage1").mkdir()
    assert _fails(argv + ["--topk-dir", "stage1"], capsys) == \
        f"error: --topk-dir {in_tmp / 'stage1'} has no topk.json, topk_images.npy; expected the output of `diffinject topk`"
    assert _fails(["train", "vanilla", "--quick", "--synthetic", "stage1"], capsys) == \
        f"error: --synthetic {in_tmp / 'stage1'} has no _SUCCESS.json; expected the output of `diffinject inject`"


@pytest.mark.parametrize("name,url", [("cmnist", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
                                      ("cifar10c", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")])
def test_an_offline_download_names_the_url_and_source(name, url, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    line = _fails(["data", "build", name, "--download", "--data-root", str(tmp_path)], capsys)
    assert line.startswith("error: could not download ") and f"from {url} (" in line
    assert line.endswith("with --source DIR") and "Network is unreachable" in line


# --- the drivers ----------------------------------------------------------------------------

def test_table1_checks_its_outputs_before_any_cell(in_tmp, monkeypatch, capsys):
    table1 = _script("table1")
    (in_tmp / "taken").write_text("mine")
    argv = ["--quick", "--ratios", "1", "--methods", "vanilla", "--data-root", str(in_tmp / "nowhere")]
    assert _fails(argv + ["--out", "taken"], capsys, table1.main) == f"error: --out {in_tmp / 'taken'} is a file, not a folder"
    assert _fails(argv + ["--artifact-root", "taken"], capsys, table1.main) == \
        f"error: --artifact-root {in_tmp / 'taken'} is a file, not a folder"
    assert _fails(argv + ["--seeds", "-1"], capsys, table1.main) == "error: --seeds must be in [0, 4294967295], got -1"
    assert _fails(argv + ["--parallel", "0"], capsys, table1.main) == "error: --parallel must be positive, got 0"
    _probe_fails(monkeypatch, errno.ENOSPC)
    assert _fails(argv, capsys, table1.main) == f"error: --out {in_tmp / 'results'} is not writable: No space left on device"


def test_ablations_check_their_outputs_before_any_trial(in_tmp, capsys):
    ablations = _script("ablations")
    (in_tmp / "taken").write_text("mine")
    argv = ["--quick", "--data-root", str(in_tmp / "nowhere")]
    assert _fails(argv + ["--out", "taken"], capsys, ablations.main) == f"error: --out {in_tmp / 'taken'} is a file, not a folder"
    assert _fails(argv + ["--tune-root", "taken/tune"], capsys, ablations.main).startswith(
        f"error: --tune-root {in_tmp / 'taken' / 'tune'} is not writable")
    assert _fails(argv + ["--set", "run.storage_path=taken"], capsys, ablations.main) == \
        f"error: run.storage_path {in_tmp / 'taken'} is a file, not a folder"


def test_compare_checks_its_plot_path_first(in_tmp, capsys):
    compare = _script("compare")
    assert _fails(["--experiments", "x", "--plot", str(in_tmp)], capsys, compare.main) == \
        f"error: --plot {in_tmp} is a folder; expected a file name"


# --- given diffusion checkpoints ------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, tiny_checkpoint):
    """Checkpoint files that cannot be the Colored Digits model (the quick preset's small_32), and
    the start of the message each must give."""
    folder = tmp_path_factory.mktemp("bad-ckpt")
    import torch

    tiny = tiny_checkpoint.read_bytes()
    relabelled = torch.load(tiny_checkpoint, weights_only=True) | {"preset": "small_32"}
    files = {"text.pt": "not a torch.save archive", "empty.pt": b"", "truncated.pt": tiny[:len(tiny) // 2],
             "tiny_32.pt": tiny, "relabelled.pt": relabelled, "state_dict.pt": {"conv.weight": torch.zeros(3)}}
    for name, content in files.items():
        path = folder / name
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
    (folder / "folder.pt").mkdir()
    return {name: folder / name for name in [*files, "folder.pt"]}


BAD_CHECKPOINT_MESSAGES = {
    "text.pt": "checkpoint {} is unreadable", "empty.pt": "checkpoint {} is truncated or corrupted",
    "truncated.pt": "checkpoint {} is truncated or corrupted",
    "tiny_32.pt": "{} holds a tiny_32 model, but colored_digits uses diffusion.preset=small_32",
    "relabelled.pt": "{} (small_32): the weights are for another architecture: ",
    "state_dict.pt": "checkpoint {}: guided-diffusion state dict does not fit preset 'small_32'",
    "folder.pt": "checkpoint {} is a folder; expected a checkpoint file",
}


@pytest.mark.parametrize("name", sorted(BAD_CHECKPOINT_MESSAGES))
@pytest.mark.parametrize("script", ["table1", "ablations"])
def test_a_bad_checkpoint_stops_a_driver_before_any_work(script, name, bad_checkpoints, in_tmp, monkeypatch, capsys):
    driver = _script(script)

    def no_work(*args, **kwargs):
        raise AssertionError("Ray started: the checkpoint was not checked before the work")

    monkeypatch.setattr(driver, "ensure_ray", no_work)
    path = bad_checkpoints[name]
    argv = ["--quick", "--checkpoint", f"colored_digits={path}", "--data-root", str(in_tmp / "data")]
    argv += (["--methods", "diffinject", "--datasets", "colored_digits"] if script == "table1"
             else ["--method", "diffinject", "--dataset", "colored_digits"])
    assert _fails(argv, capsys, driver.main).startswith("error: " + BAD_CHECKPOINT_MESSAGES[name].format(path))
    assert not (in_tmp / "data").exists() and not (in_tmp / "artifacts").exists()


@pytest.mark.parametrize("command", ["inject", "calibrate"])
def test_a_checkpoint_of_another_model_stops_inject_and_calibrate_at_once(command, bad_checkpoints, in_tmp,
                                                                           monkeypatch, capsys):
    import diffinject.cli.main

    def no_work(*args, **kwargs):
        raise AssertionError("work started: the checkpoint was not checked first")

    monkeypatch.setattr(diffinject.cli.main, "_start_ray", no_work)
    monkeypatch.setattr("diffinject.experiment.stage_runs.dataset_folder", no_work)
    path = bad_checkpoints["relabelled.pt"]
    assert _fails([command, "--quick", "--checkpoint", str(path)], capsys).startswith(
        f"error: {path} (small_32): the weights are for another architecture: ")
