"""Content-addressed cache of stage outputs (docs/design.md 2: every artifact is addressed by a
hash of the config that made it and the hashes of its inputs).

An artifact is the folder `<root>/<stage>/<key>/`: the stage's files plus `ARTIFACT.json`,
written last, with the stage, the key material, what the builder returned (run ids,
metrics) and the size and SHA-256 of every file. A folder without that marker is never used;
one whose files do not match it (a file deleted or changed, the marker truncated), or whose
marker belongs to another artifact (its recorded stage or key is not the folder's, or its key
material does not hash to that key: a folder renamed or copied to another key, an edited
marker), is rebuilt, with a one-line report (`integrity.first_damage`: sizes always, hashes of
small files). Every look-up (`lookup`, `get_or_build`, a remote root's mirror) goes through
that check. The key is the SHA-256 of the canonical JSON of the material: the config fields the
stage reads and its inputs' keys or content fingerprints, so changing any of them gives a
new key and everything downstream follows.

Roots: a local folder, or a URI that `pyarrow.fs` opens (s3://, gs://, hdfs://, file://).
A builder writes into a persistent local work folder (`<stage>/<key>.partial`), so a stage
that can resume (injection, resumable training) continues there after an interruption; a
build that fails before writing anything leaves no work folder. A local artifact is
published by one rename; a remote one by uploading the files and then the marker, and is
used from a local mirror, which is what gets checked (and fetched again when damaged).

`get_or_build` builds each key at most once, also when several processes ask for it at the
same time: it takes a lock per key (an fcntl lock beside the artifact; the Ray layer passes
a cluster-wide lock for remote roots) and looks again once it holds it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from diffinject.core.atomic import file_lock, read_json, write_json
from diffinject.core.errors import ConfigError
from diffinject.core.integrity import first_damage, record_files

MARKER = "ARTIFACT.json"
FORMAT = "diffinject-artifact/1"


def artifact_key(stage: str, material: dict[str, Any]) -> str:
    """SHA-256 (first 20 hex digits) of the stage name and its canonical-JSON key material."""
    blob = json.dumps({"format": FORMAT, "stage": stage, "material": material}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def marker_mismatch(record: dict, stage: str, key: str) -> str | None:
    """What in a marker does not belong to `<stage>/<key>` (a folder renamed or copied to another
    key, a marker edited), or None: its recorded stage and key, and the hash of its key material."""
    if record.get("stage") != stage:
        return f"{MARKER} records stage {record.get('stage')!r}, not {stage!r}"
    if record.get("key") != key:
        return f"{MARKER} records key {record.get('key')}, not {key}"
    if artifact_key(stage, record.get("material")) != key:
        return f"{MARKER}'s key material hashes to {artifact_key(stage, record.get('material'))}, not {key}"
    return None


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path        # local folder holding the files
    meta: dict        # what the builder returned
    reused: bool      # found finished rather than built by this call


def is_remote(root: str) -> bool:
    return "://" in str(root)


class ArtifactCache:
    """Stage outputs under `root`; `lock(name)` may replace the per-key file lock."""

    def __init__(self, root: str | os.PathLike, mirror: str | os.PathLike | None = None,
                 lock: Callable[[str], ContextManager] | None = None):
        self.root = str(root)
        self.remote = is_remote(self.root)
        if self.remote:
            import pyarrow.fs

            try:
                self.fs, self.base = pyarrow.fs.FileSystem.from_uri(self.root)
            except Exception as exc:  # pyarrow raises several types for unknown schemes or bad URIs
                raise ConfigError(f"artifact root {self.root!r} is not a folder or a URI pyarrow.fs can open: "
                                  f"{exc}") from None
            name = hashlib.sha256(self.root.encode()).hexdigest()[:12]
            self.local = Path(mirror or Path(tempfile.gettempdir()) / "diffinject-artifacts" / name)
        else:
            self.local = Path(self.root)
        self._lock = lock

    def __repr__(self) -> str:
        return f"ArtifactCache({self.root!r})"

    def folder(self, stage: str, key: str) -> Path:
        return self.local / stage / key

    def work_folder(self, stage: str, key: str) -> Path:
        return self.local / stage / f"{key}.partial"

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """The finished artifact, or None (a folder without its marker, or whose files do not
        match it, does not count)."""
        return self._find(stage, key)[0]

    def _find(self, stage: str, key: str) -> tuple[Artifact | None, str | None]:
        """(the finished artifact, None), or (None, what is damaged) or (None, None) when
        there is none. A damaged local mirror of a remote artifact is fetched again first."""
        marker = self.folder(stage, key) / MARKER
        if not marker.is_file() and self.remote:
            self._download(stage, key)
        found, damage = self._check(stage, key)
        if damage and self.remote:
            shutil.rmtree(self.folder(stage, key), ignore_errors=True)  # the mirror: ours, and a copy
            self._download(stage, key)
            found, damage = self._check(stage, key)
        return found, damage

    def _check(self, stage: str, key: str) -> tuple[Artifact | None, str | None]:
        folder = self.folder(stage, key)
        if not (folder / MARKER).is_file():
            return None, None
        record = read_json(folder / MARKER)
        if record is None or "meta" not in record:
            return None, f"{MARKER} is unreadable"
        if not isinstance(record.get("files"), dict):
            return None, f"{MARKER} lists no files"
        damage = marker_mismatch(record, stage, key) or first_damage(folder, record["files"])
        if damage:
            return None, damage
        return Artifact(stage, key, folder, record["meta"], reused=True), None

    def get_or_build(self, stage: str, material: dict[str, Any], build: Callable[[Path], dict]) -> Artifact:
        """The artifact of (stage, material); `build(work_folder) -> meta` runs only when no
        finished, undamaged one exists, at most once per key at a time across processes."""
        key = artifact_key(stage, material)
        found, _ = self._find(stage, key)
        if found is not None:
            return found
        with self._key_lock(stage, key):
            found, damage = self._find(stage, key)  # another process may have finished it meanwhile
            if found is not None:
                return found
            if damage:
                print(f"{stage}/{key}: {damage}; rebuilding", flush=True)
            work = self.work_folder(stage, key)
            work.mkdir(parents=True, exist_ok=True)
            started = time.time()
            try:
                meta = build(work)
            except BaseException:
                with contextlib.suppress(OSError):  # kept when not empty: a rerun resumes in it
                    work.rmdir()
                raise
            record = {"format": FORMAT, "stage": stage, "key": key, "material": material, "meta": meta,
                      "files": record_files(work, skip=(MARKER,)),
                      "seconds": round(time.time() - started, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self._publish(stage, key, work, record)
            return Artifact(stage, key, self.folder(stage, key), meta, reused=False)

    def _key_lock(self, stage: str, key: str) -> ContextManager:
        if self._lock is not None:
            return self._lock(f"{self.root}/{stage}/{key}")
        return file_lock(self.local / stage / f".{key}.lock")

    def _publish(self, stage: str, key: str, work: Path, record: dict) -> None:
        final = self.folder(stage, key)
        if self.remote:  # files first, the marker last: a partial upload is never an artifact
            import pyarrow.fs

            target = f"{self.base.rstrip('/')}/{stage}/{key}"
            self.fs.create_dir(target, recursive=True)
            self.fs.delete_dir_contents(target, missing_dir_ok=True)  # leftovers of a killed upload
            pyarrow.fs.copy_files(str(work), target, source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=self.fs)
            with self.fs.open_output_stream(f"{target}/{MARKER}") as out:
                out.write(json.dumps(record, indent=2, sort_keys=True, default=str).encode())
        write_json(work / MARKER, json.loads(json.dumps(record, default=str)))
        if final.exists():  # a stale folder without a marker (from a killed build), or a damaged artifact
            shutil.rmtree(final)
        work.rename(final)

    def _download(self, stage: str, key: str) -> None:
        """Mirror a finished remote artifact locally (marker last, so a partial copy never counts)."""
        import pyarrow.fs

        source = f"{self.base.rstrip('/')}/{stage}/{key}"
        if self.fs.get_file_info(f"{source}/{MARKER}").type != pyarrow.fs.FileType.File:
            return
        final = self.folder(stage, key)
        tmp = final.with_name(f".{key}.download-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pyarrow.fs.copy_files(source, str(tmp), source_filesystem=self.fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        marker = tmp / MARKER
        if not marker.is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
