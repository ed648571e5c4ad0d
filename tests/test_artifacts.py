"""diffinject.experiment.cache: content-addressed stage outputs, built at most once per key."""
import contextlib
import hashlib
import json
import multiprocessing
import threading
import time

import pytest

from diffinject.core.errors import ConfigError
from diffinject.core.integrity import file_digest
from diffinject.experiment.cache import MARKER, ArtifactCache, artifact_key

MATERIAL = {"seed": 0, "model": {"width": 64, "blocks": [1, 2]}, "input": "abc"}


def test_artifact_key_is_deterministic_and_order_independent():
    reordered = {"input": "abc", "model": {"blocks": [1, 2], "width": 64}, "seed": 0}
    key = artifact_key("train", MATERIAL)
    assert key == artifact_key("train", json.loads(json.dumps(MATERIAL)))
    assert key == artifact_key("train", reordered)
    assert len(key) == 20 and int(key, 16) >= 0


@pytest.mark.parametrize("change", [
    lambda m: m.update(seed=1),
    lambda m: m["model"].update(width=65),
    lambda m: m["model"]["blocks"].append(3),
    lambda m: m.update(extra=None),
    lambda m: m.update(input="abd"),
])
def test_artifact_key_changes_with_any_value(change):
    changed = json.loads(json.dumps(MATERIAL))
    change(changed)
    assert artifact_key("train", changed) != artifact_key("train", MATERIAL)


def test_artifact_key_changes_with_the_stage():
    assert artifact_key("train", MATERIAL) != artifact_key("inject", MATERIAL)


def test_file_digest_is_sha256_of_the_bytes(tmp_path):
    payload = bytes(range(256)) * 41 + b"tail"
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    assert file_digest(path, chunk=100) == expected
    assert file_digest(str(path)) == expected
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty", chunk=7) == hashlib.sha256(b"").hexdigest()


def test_get_or_build_builds_once_then_reuses(tmp_path):
    key = artifact_key("train", MATERIAL)
    seen = []

    def build(work):
        seen.append(work)
        (work / "model.pt").write_bytes(b"weights")
        (work / "sub").mkdir()
        (work / "sub" / "log.txt").write_text("ok")
        return {"run_id": "r1", "acc": 0.5}

    built = ArtifactCache(tmp_path).get_or_build("train", MATERIAL, build)
    assert seen == [tmp_path / "train" / f"{key}.partial"]
    assert not built.reused and built.key == key and built.stage == "train"
    assert built.meta == {"run_id": "r1", "acc": 0.5}
    assert built.path == tmp_path / "train" / key
    assert (built.path / "model.pt").read_bytes() == b"weights"
    assert (built.path / "sub" / "log.txt").read_text() == "ok"
    assert not seen[0].exists()

    record = json.loads((built.path / MARKER).read_text())
    assert record["stage"] == "train" and record["key"] == key
    assert record["material"] == MATERIAL and record["meta"] == built.meta

    def fail(work):
        raise AssertionError("built again")

    for cache in (ArtifactCache(tmp_path), ArtifactCache(str(tmp_path))):
        again = cache.get_or_build("train", MATERIAL, fail)
        assert again.reused and again.meta == built.meta and again.path == built.path
        assert cache.lookup("train", key).meta == built.meta


def test_failed_build_keeps_its_work_folder_for_the_next_try(tmp_path):
    cache = ArtifactCache(tmp_path)
    key = artifact_key("inject", MATERIAL)
    work = tmp_path / "inject" / f"{key}.partial"

    def interrupted(folder):
        (folder / "step_1.pt").write_text("first half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cache.get_or_build("inject", MATERIAL, interrupted)
    assert cache.lookup("inject", key) is None
    assert not (tmp_path / "inject" / key).exists()
    assert (work / "step_1.pt").read_text() == "first half"

    seen = []

    def resume(folder):
        seen.append((folder, sorted(p.name for p in folder.iterdir())))
        (folder / "step_2.pt").write_text("second half")
        return {"resumed": True}

    art = ArtifactCache(tmp_path).get_or_build("inject", MATERIAL, resume)
    assert seen == [(work, ["step_1.pt"])]
    assert not art.reused and art.meta == {"resumed": True}
    assert sorted(p.name for p in art.path.iterdir()) == sorted([MARKER, "step_1.pt", "step_2.pt"])


def test_folder_without_marker_is_not_an_artifact(tmp_path):
    cache = ArtifactCache(tmp_path)
    key = artifact_key("train", MATERIAL)
    stale = tmp_path / "train" / key
    stale.mkdir(parents=True)
    (stale / "old.pt").write_text("from a killed build")
    assert cache.lookup("train", key) is None

    def build(work):
        (work / "new.pt").write_text("fresh")
        return {"n": 1}

    art = cache.get_or_build("train", MATERIAL, build)
    assert not art.reused and art.path == stale
    assert sorted(p.name for p in stale.iterdir()) == [MARKER, "new.pt"]
    assert cache.lookup("train", key).meta == {"n": 1}


def _slow_build(counter, tag):
    def build(work):
        with open(counter, "a") as handle:
            handle.write(f"{tag}\n")
        time.sleep(1.0)
        (work / "out.txt").write_text(tag)
        return {"builder": tag}
    return build


def test_two_processes_build_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    counter = tmp_path / "counter.txt"
    barrier, results = ctx.Barrier(2), ctx.Queue()

    def worker(tag):
        try:
            barrier.wait(timeout=30)
            art = ArtifactCache(tmp_path / "root").get_or_build("train", MATERIAL, _slow_build(counter, tag))
            results.put((tag, art.reused, art.meta, (art.path / "out.txt").read_text()))
        except BaseException as exc:  # report instead of dying silently
            results.put((tag, "error", repr(exc), None))

    procs = [ctx.Process(target=worker, args=(tag,)) for tag in ("a", "b")]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert not [r for r in got if r[1] == "error"], got
    got.sort(key=lambda r: r[1])
    assert [r[1] for r in got] == [False, True], got
    builder = got[0][0]
    assert counter.read_text().splitlines() == [builder]
    assert got[0][2] == got[1][2] == {"builder": builder}
    assert got[0][3] == got[1][3] == builder


def test_two_threads_build_once(tmp_path):
    counter = tmp_path / "counter.txt"
    barrier, results = threading.Barrier(2), {}

    def worker(tag):
        barrier.wait(timeout=30)
        art = ArtifactCache(tmp_path / "root").get_or_build("train", MATERIAL, _slow_build(counter, tag))
        results[tag] = (art.reused, art.meta)

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(r[0] for r in results.values()) == [False, True], results
    builder = counter.read_text().splitlines()
    assert len(builder) == 1
    assert results["a"][1] == results["b"][1] == {"builder": builder[0]}


def test_different_materials_build_separately(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def build(work):
        calls.append(work.name)
        return {"work": work.name}

    first = cache.get_or_build("train", {"seed": 0}, build)
    second = cache.get_or_build("train", {"seed": 1}, build)
    assert first.key != second.key and first.path != second.path
    assert len(calls) == 2 and not first.reused and not second.reused
    assert cache.get_or_build("train", {"seed": 0}, build).meta == first.meta
    assert cache.get_or_build("train", {"seed": 1}, build).meta == second.meta
    assert len(calls) == 2


def test_remote_root_publishes_and_is_found_from_another_mirror(tmp_path):
    remote = tmp_path / "bucket"
    remote.mkdir()
    uri = remote.as_uri()
    key = artifact_key("train", MATERIAL)

    def build(work):
        (work / "model.pt").write_bytes(b"weights")
        (work / "sub").mkdir()
        (work / "sub" / "log.txt").write_text("ok")
        return {"run_id": "r1"}

    mirror_a = tmp_path / "mirror_a"
    built = ArtifactCache(uri, mirror=mirror_a).get_or_build("train", MATERIAL, build)
    assert not built.reused and built.path == mirror_a / "train" / key
    published = remote / "train" / key
    assert (published / "model.pt").read_bytes() == b"weights"
    assert (published / "sub" / "log.txt").read_text() == "ok"
    record = json.loads((published / MARKER).read_text())
    assert record["key"] == key and record["material"] == MATERIAL and record["meta"] == {"run_id": "r1"}

    def fail(work):
        raise AssertionError("built again")

    mirror_b = tmp_path / "mirror_b"
    mirror_b.mkdir()
    found = ArtifactCache(uri, mirror=mirror_b).get_or_build("train", MATERIAL, fail)
    assert found.reused and found.meta == {"run_id": "r1"}
    assert found.path == mirror_b / "train" / key
    assert (found.path / "model.pt").read_bytes() == b"weights"
    assert (found.path / "sub" / "log.txt").read_text() == "ok"
    assert json.loads((found.path / MARKER).read_text())["meta"] == {"run_id": "r1"}
    assert sorted(p.name for p in (mirror_b / "train").iterdir() if not p.name.startswith(".")) == [key]


def test_remote_folder_without_marker_is_not_an_artifact(tmp_path):
    remote = tmp_path / "bucket"
    key = artifact_key("train", MATERIAL)
    (remote / "train" / key).mkdir(parents=True)
    (remote / "train" / key / "model.pt").write_text("half uploaded")
    cache = ArtifactCache(remote.as_uri(), mirror=tmp_path / "mirror")
    assert cache.lookup("train", key) is None
    assert not (tmp_path / "mirror" / "train" / key).exists()


def test_unknown_uri_scheme_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nosuchscheme://x"):
        ArtifactCache("nosuchscheme://x", mirror=tmp_path)


def test_custom_lock_replaces_the_file_lock(tmp_path):
    names = []

    @contextlib.contextmanager
    def lock(name):
        names.append(name)
        yield

    cache = ArtifactCache(tmp_path, lock=lock)
    art = cache.get_or_build("train", MATERIAL, lambda work: {"ok": True})
    assert len(names) == 1 and "train" in names[0] and art.key in names[0]
    assert not list((tmp_path / "train").glob("*.lock"))
    assert cache.get_or_build("train", MATERIAL, lambda work: {"ok": False}).meta == {"ok": True}


def test_remote_publish_drops_stale_files(tmp_path):
    """Files of a killed upload under the key are not part of the artifact published later."""
    remote = tmp_path / "bucket"
    key = artifact_key("s", {"a": 1})
    (remote / "s" / key).mkdir(parents=True)
    (remote / "s" / key / "old.pt").write_text("stale")

    def build(work):
        (work / "new.pt").write_text("x")
        return {}

    ArtifactCache(remote.as_uri(), mirror=tmp_path / "m1").get_or_build("s", {"a": 1}, build)
    art = ArtifactCache(remote.as_uri(), mirror=tmp_path / "m2").lookup("s", key)
    assert sorted(p.name for p in art.path.iterdir()) == ["ARTIFACT.json", "new.pt"]


# ---- a marker that belongs to another artifact is damage, never served ----------------------

OTHER = {**MATERIAL, "seed": 1}


def _weights(tag: str):
    def build(work):
        (work / "model.pt").write_text(tag)
        return {"built_for": tag}
    return build


def _edit_marker(folder, **changes):
    record = json.loads((folder / MARKER).read_text())
    record.update(changes)
    (folder / MARKER).write_text(json.dumps(record))


def _move(src, dst):
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)


@pytest.mark.parametrize("misplace, report", [
    # another config's finished folder renamed (copied) to this key
    (lambda root, mine, theirs: _move(root / "train" / theirs, root / "train" / mine),
     "ARTIFACT.json records key {theirs}, not {mine}"),
    # ... with its marker's key edited to match: its key material still says whose it is
    (lambda root, mine, theirs: (_move(root / "train" / theirs, root / "train" / mine),
                                 _edit_marker(root / "train" / mine, key=mine)),
     "ARTIFACT.json's key material hashes to {theirs}, not {mine}"),
    # another stage's folder under this stage
    (lambda root, mine, theirs: _move(root / "inject" / artifact_key("inject", MATERIAL), root / "train" / mine),
     "ARTIFACT.json records stage 'inject', not 'train'"),
])
def test_a_folder_whose_marker_is_another_artifacts_is_rebuilt_not_served(tmp_path, capsys, misplace, report):
    cache = ArtifactCache(tmp_path)
    theirs = cache.get_or_build("train", OTHER, _weights("seed 1")).key
    cache.get_or_build("inject", MATERIAL, _weights("inject"))
    mine = artifact_key("train", MATERIAL)
    misplace(tmp_path, mine, theirs)
    capsys.readouterr()
    assert cache.lookup("train", mine) is None
    rebuilt = cache.get_or_build("train", MATERIAL, _weights("seed 0"))
    assert not rebuilt.reused and rebuilt.meta == {"built_for": "seed 0"}
    assert (rebuilt.path / "model.pt").read_text() == "seed 0"
    assert capsys.readouterr().out.splitlines() == [f"train/{mine}: {report.format(mine=mine, theirs=theirs)}; "
                                                    "rebuilding"]
    assert cache.get_or_build("train", MATERIAL, _weights("again")).reused
    assert cache.lookup("train", theirs).meta == {"built_for": "seed 1"}  # the original is untouched


def test_an_edited_key_material_is_rebuilt(tmp_path, capsys):
    cache = ArtifactCache(tmp_path)
    art = cache.get_or_build("train", MATERIAL, _weights("seed 0"))
    _edit_marker(art.path, material=OTHER)
    assert cache.lookup("train", art.key) is None
    assert not cache.get_or_build("train", MATERIAL, _weights("seed 0")).reused
    assert capsys.readouterr().out.splitlines() == [
        f"train/{art.key}: ARTIFACT.json's key material hashes to {artifact_key('train', OTHER)}, not {art.key}; "
        "rebuilding"]


def test_a_remote_folder_renamed_to_another_key_is_not_served(tmp_path, capsys):
    remote = tmp_path / "bucket"
    theirs = ArtifactCache(remote.as_uri(), mirror=tmp_path / "m1").get_or_build("train", OTHER, _weights("seed 1"))
    mine = artifact_key("train", MATERIAL)
    (remote / "train" / theirs.key).rename(remote / "train" / mine)
    cache = ArtifactCache(remote.as_uri(), mirror=tmp_path / "m2")
    assert cache.lookup("train", mine) is None
    rebuilt = cache.get_or_build("train", MATERIAL, _weights("seed 0"))
    assert not rebuilt.reused and (rebuilt.path / "model.pt").read_text() == "seed 0"
    assert f"train/{mine}: ARTIFACT.json records key {theirs.key}, not {mine}; rebuilding" in capsys.readouterr().out
    assert json.loads((remote / "train" / mine / MARKER).read_text())["key"] == mine  # the remote copy replaced
    assert ArtifactCache(remote.as_uri(), mirror=tmp_path / "m3").lookup("train", mine).meta == {"built_for": "seed 0"}
