"""Nothing the platform did not write is deleted, and nothing damaged or stale is served:
`inject --out` on a foreign folder, a missing Colored Digits ratio, damaged artifacts and
conversions, unreadable part files, misfit checkpoints, content-keyed stages, and the
leftovers of failed or killed builds."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffinject.core.errors import CheckpointError, DataError
from diffinject.data.layout import read_layout, write_layout
from diffinject.data.parquet import MARKER as PARQUET_MARKER
from diffinject.data.parquet import convert_to_parquet, load_split, prepare_dataset
from diffinject.data.registry import get_dataset_spec
from diffinject.experiment.cache import MARKER, ArtifactCache, artifact_key
from diffinject.stages.inject.synthetic import (PARTS, batch_table, check_output_folder, finalize, write_part,
                                                written_pair_ids)
from test_parquet import make_split

CMNIST = get_dataset_spec("cmnist")
DIGITS = get_dataset_spec("colored_digits")


class UnusedTracker:
    """Where nothing may be logged (an MLflow database costs seconds): a build under a key finds
    no stale runs of it, and must fail before it starts one."""

    def experiment(self, name: str) -> str:
        return "0"

    def kill_running(self, experiment_id: str, condition: str) -> list[str]:
        return []


UNUSED_TRACKER = UnusedTracker()


def _inodes(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file under `folder`: equal means nothing was rewritten."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _part(parts: Path, pair_ids) -> Path:
    """A part file of synthetic rows for `pair_ids` (4x4 images; no model involved)."""
    n = len(pair_ids)
    ids = np.asarray([f"img-{i}" for i in range(n)], dtype=object)
    prov = dict(gamma=0.9, t_edit=300, inversion_steps=3, generation_steps=3, checkpoint_hash="0" * 16,
                label_from="content")
    zeros = np.zeros(n, np.int64)
    table = batch_table(pair_ids, np.arange(n), np.arange(n), np.arange(n), np.zeros((n, 4, 4, 3), np.uint8),
                        ids, zeros, zeros, ids, zeros, zeros, prov)
    return write_part(parts, table)


@pytest.fixture
def cmnist(tmp_path):
    """A tiny cmnist-layout dataset (30 / 10 / 20 images) and a cache root."""
    data_root = tmp_path / "data"
    write_layout(data_root, CMNIST, "1", make_split(CMNIST, "tr", 3, 0), make_split(CMNIST, "v", 1, 1),
                 make_split(CMNIST, "t", 2, 2))
    return data_root, tmp_path / "cache"


# ---- 1: the synthetic set's folder ------------------------------------------------------

def test_finalize_refuses_a_folder_holding_files_it_did_not_write(tmp_path):
    out = tmp_path / "syn"
    _part(out / PARTS, [0, 1])
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"syn holds files the injection job did not write \(notes.txt\)"):
        finalize(out, [0, 1])
    assert (out / "notes.txt").read_text() == "mine" and len(list((out / PARTS).iterdir())) == 1
    (out / "notes.txt").unlink()
    finalize(out, [0, 1])
    check_output_folder(out)  # a finished synthetic set may be written again
    assert len(load_split(out, "train")) == 2


def test_check_output_folder_accepts_only_new_empty_or_synthetic_folders(cmnist, tmp_path):
    check_output_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")
    _part(tmp_path / "running" / PARTS, [0])
    check_output_folder(tmp_path / "running")
    conversion = convert_to_parquet(*cmnist, CMNIST, "1")  # Parquet names, but not a synthetic set
    with pytest.raises(DataError, match="_SUCCESS.json of dataset 'cmnist'"):
        check_output_folder(conversion)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        check_output_folder(tmp_path / "file")


def test_inject_refuses_a_non_empty_out_folder_before_any_work(digits_root, tmp_path, mlflow_uri, monkeypatch,
                                                               capsys):
    from test_cli_inject import _argv

    from diffinject.cli.main import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    checkpoint = tmp_path / "unused.pt"
    checkpoint.write_bytes(b"never read")
    assert main(_argv(digits_root, checkpoint) + ["--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "running stage 1" not in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: {out} holds files the injection job did not write (thesis.tex)")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


# ---- 2: a missing Colored Digits folder --------------------------------------------------

@pytest.fixture
def small_digits(monkeypatch):
    """Colored Digits from 30 digits per class (test 4, valid 20 per build): a build in ~1 s."""
    import dataclasses

    from diffinject.data import embedded

    source = embedded.EMBEDDED["colored_digits"]
    gray, labels = source.digits()
    keep = np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(10)])
    monkeypatch.setitem(embedded.EMBEDDED, "colored_digits", dataclasses.replace(
        source, digits=lambda: (gray[keep], labels[keep]), test_per_class=4, valid_size=20))
    return embedded


def test_a_missing_ratio_is_built_alone_with_the_seed_of_the_build(small_digits, tmp_path, capsys):
    data_root = tmp_path / "data"
    base = small_digits.build_embedded("colored_digits", data_root, ratios=("1", "2"), seed=7)
    kept = {name: _inodes(base / name) for name in ("1pct", "2pct", "test")}
    prepare_dataset(data_root, tmp_path / "cache", DIGITS, "5")
    assert {name: _inodes(base / name) for name in kept} == kept  # the others' files untouched
    (line,) = capsys.readouterr().out.splitlines()
    assert "building the missing 5pct in" in line and "with seed 7" in line
    assert json.loads((base / "build.json").read_text())["seed"] == 7
    assert sorted(p.name for p in base.iterdir()) == ["1pct", "2pct", "5pct", "build.json", "test"]
    # seed 7's partition: the new ratio has the same training samples and valid images as the others
    new, old = read_layout(data_root, DIGITS, "5"), read_layout(data_root, DIGITS, "1")
    assert sorted((r.id, r.label) for r in new.splits["train"]) == sorted((r.id, r.label) for r in old.splits["train"])
    assert ({r.path.name: r.path.read_bytes() for r in new.splits["valid"]}
            == {r.path.name: r.path.read_bytes() for r in old.splits["valid"]})


def test_the_missing_ratio_line_names_the_seed(small_digits, tmp_path, capsys):
    small_digits.build_embedded("colored_digits", tmp_path, ratios=("1",), seed=3)
    shutil.rmtree(tmp_path / "colored_digits" / "test")
    small_digits.build_missing_embedded("colored_digits", tmp_path, "1")
    (line,) = capsys.readouterr().out.splitlines()
    assert "building the missing test in" in line and "seed 3" in line
    assert (tmp_path / "colored_digits" / "test").is_dir()


def test_a_missing_ratio_without_a_recorded_seed_is_an_error(small_digits, tmp_path):
    small_digits.build_embedded("colored_digits", tmp_path, ratios=("1",), seed=3)
    (tmp_path / "colored_digits" / "build.json").unlink()
    with pytest.raises(DataError, match="2pct missing, and no build.json says which seed"):
        small_digits.build_missing_embedded("colored_digits", tmp_path, "2")
    assert not (tmp_path / "colored_digits" / "2pct").exists()


# ---- 6: damaged artifacts and conversions -------------------------------------------------

def _build(work: Path) -> dict:
    (work / "model.pt").write_bytes(b"weights" * 100)
    (work / "topk.json").write_text('{"indices": [1, 2]}')
    return {"run_id": "r1"}


@pytest.mark.parametrize("damage, report", [
    (lambda f: (f / "model.pt").unlink(), "model.pt is missing"),
    (lambda f: (f / "model.pt").write_bytes(b"short"), "model.pt has 5 bytes, 700 expected"),
    (lambda f: (f / "topk.json").write_text('{"indices": [1, 3]}'), "topk.json has changed"),
    (lambda f: (f / MARKER).write_text('{"meta": {"run_id"'), "ARTIFACT.json is unreadable"),
])
def test_a_damaged_artifact_is_rebuilt_with_a_report(tmp_path, capsys, damage, report):
    cache = ArtifactCache(tmp_path)
    art = cache.get_or_build("stage1", {"a": 1}, _build)
    record = json.loads((art.path / MARKER).read_text())
    assert record["files"]["model.pt"]["size"] == 700 and len(record["files"]["topk.json"]["sha256"]) == 64
    damage(art.path)
    assert cache.lookup("stage1", art.key) is None
    rebuilt = cache.get_or_build("stage1", {"a": 1}, _build)
    assert not rebuilt.reused and (rebuilt.path / "model.pt").read_bytes() == b"weights" * 100
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"stage1/{art.key}: {report}") and line.endswith("; rebuilding")
    assert cache.get_or_build("stage1", {"a": 1}, _build).reused


def test_a_damaged_remote_mirror_is_fetched_again_and_a_damaged_remote_rebuilt(tmp_path, capsys):
    uri = (tmp_path / "bucket").as_uri()
    built = ArtifactCache(uri, mirror=tmp_path / "m1").get_or_build("stage2", {"a": 1}, _build)
    (built.path / "model.pt").unlink()  # the local mirror only: the remote copy is fine
    again = ArtifactCache(uri, mirror=tmp_path / "m1").get_or_build("stage2", {"a": 1}, lambda w: 1 / 0)
    assert again.reused and (again.path / "model.pt").read_bytes() == b"weights" * 100
    (tmp_path / "bucket" / "stage2" / built.key / "topk.json").write_text("{}")
    rebuilt = ArtifactCache(uri, mirror=tmp_path / "m2").get_or_build("stage2", {"a": 1}, _build)
    assert not rebuilt.reused
    assert capsys.readouterr().out.splitlines() == [f"stage2/{built.key}: topk.json has 2 bytes, 19 expected; rebuilding"]
    assert json.loads((tmp_path / "bucket" / "stage2" / built.key / "topk.json").read_text()) == {"indices": [1, 2]}


@pytest.mark.parametrize("damage, report", [
    (lambda out: (out / PARQUET_MARKER).write_text('{"fingerprint": '), "_SUCCESS.json is unreadable"),
    (lambda out: (out / "train-00000.parquet").write_bytes(b"PAR1 garbage"), "train-00000.parquet has 12 bytes"),
    (lambda out: (out / "test-00000.parquet").unlink(), "test-00000.parquet is missing"),
])
def test_a_damaged_conversion_is_converted_again(cmnist, capsys, damage, report):
    out = convert_to_parquet(*cmnist, CMNIST, "1")
    damage(out)
    assert convert_to_parquet(*cmnist, CMNIST, "1") == out
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{out}: {report}") and line.endswith("; converting again")
    assert len(load_split(out, "train")) == 30 and len(load_split(out, "test")) == 20


def test_an_unreadable_part_file_is_set_aside_and_its_pairs_redone(tmp_path, capsys):
    parts = tmp_path / "syn" / PARTS
    _part(parts, [0, 1])
    bad = _part(parts, [2, 3])
    bad_bytes = bad.read_bytes()[:40]  # e.g. a disk that filled up
    bad.write_bytes(bad_bytes)
    assert written_pair_ids(parts).tolist() == [0, 1]
    assert f"{bad}: unreadable part file" in capsys.readouterr().out
    assert not bad.exists() and bad.with_name(bad.name + ".unreadable").is_file()
    with pytest.raises(DataError, match="2 of 4 synthetic pairs are missing"):
        finalize(tmp_path / "syn", range(4))
    _part(parts, [2, 3])  # what the rerun generates
    finalize(tmp_path / "syn", range(4))
    assert len(load_split(tmp_path / "syn", "train")) == 4
    assert (tmp_path / "syn" / "_unreadable" / f"{bad.name}.unreadable").read_bytes() == bad_bytes


def test_a_checkpoint_that_does_not_fit_its_preset_is_never_cached(quick_cfg, tmp_path):
    from diffinject.experiment.cells import CellRunner
    from diffinject.nets.diffusion import build_unet, get_preset
    from diffinject.nets.diffusion.checkpoint import unet_checkpoint_bytes

    weights = build_unet("tiny_32").state_dict()
    weights.pop(next(iter(weights)))
    checkpoint = tmp_path / "misfit.pt"
    checkpoint.write_bytes(unet_checkpoint_bytes(weights, get_preset("tiny_32"), 0, {}))
    quick_cfg.diffusion.preset = "tiny_32"
    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), UNUSED_TRACKER, {"colored_digits": str(checkpoint)})
    with pytest.raises(CheckpointError, match="misfit.pt"):
        runner.stage2(quick_cfg)
    stage2 = tmp_path / "artifacts" / "stage2"
    assert [p.name for p in stage2.iterdir() if not p.name.endswith(".lock")] == []  # no artifact, no .partial


# ---- 7: stage keys by content ---------------------------------------------------------------

def test_stage_keys_follow_the_content_not_the_path_or_mtimes(digits_root, quick_cfg, tmp_path, monkeypatch):
    from diffinject.experiment.cells import CellRunner

    source = digits_root / "data" / "colored_digits"
    for name in ("1pct", "test", "build.json"):
        (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, tmp_path / "data" /
                                                                         "colored_digits" / name)
    monkeypatch.chdir(tmp_path)
    quick_cfg.data.cache_root = str(tmp_path / "cache")
    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), UNUSED_TRACKER)

    def keys(data_root: str) -> list[str]:
        quick_cfg.data.data_root = data_root
        return [artifact_key(stage, material) for stage, material in (
            ("stage1", runner.stage1_material(quick_cfg)), ("stage2", runner.stage2_material(quick_cfg)),
            ("stage3", runner.stage3_material(quick_cfg)), ("cell", runner.cell_material(quick_cfg, "diffinject")))]

    first = keys("data")
    shards = tmp_path / "cache" / "parquet" / "colored_digits" / "1pct"
    encoded = {k: v for k, v in _inodes(shards).items() if k.endswith(".parquet")}
    assert keys(str(tmp_path / "data")) == first
    for path in (tmp_path / "data").rglob("*.png"):  # touch, as after `cp -r`
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert keys("data") == first
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    assert keys(str(tmp_path / "copy")) == first
    assert {k: v for k, v in _inodes(shards).items() if k.endswith(".parquet")} == encoded  # never re-encoded
    some = next((tmp_path / "copy" / "colored_digits" / "test").rglob("*.png"))
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(some)
    assert keys(str(tmp_path / "copy")) != first


# ---- 16: leftovers of failed and killed builds ----------------------------------------------

def test_a_failed_build_leaves_no_empty_work_folder(tmp_path):
    cache = ArtifactCache(tmp_path)

    def fails(work):
        raise RuntimeError("no luck")

    with pytest.raises(RuntimeError):
        cache.get_or_build("stage1", {"a": 1}, fails)
    assert sorted(p.name for p in (tmp_path / "stage1").iterdir() if not p.name.startswith(".")) == []


def test_stale_temporary_folders_of_dead_processes_are_removed(cmnist):
    parent = cmnist[1] / "parquet" / "cmnist"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = socket.gethostname()
    names = {"dead": f".1pct.tmp-{host}-{dead}-x1", "dead_old": f".1pct.old-{host}-{dead}-x2",
             "alive": f".1pct.tmp-{host}-{os.getpid()}-x3", "elsewhere": f".1pct.tmp-otherhost-{dead}-x4",
             "user": "1pct.tmp-mine"}
    for name in names.values():
        (parent / name).mkdir(parents=True)
        (parent / name / "train-00000.parquet").write_bytes(b"half")
    convert_to_parquet(*cmnist, CMNIST, "1")
    left = sorted(p.name for p in parent.iterdir())
    assert left == sorted(["1pct", names["alive"], names["elsewhere"], names["user"]])
