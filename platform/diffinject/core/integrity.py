"""Records of a folder's files (size and SHA-256), and checking a folder against its record.

Finished artifacts and Parquet conversions record their files when they are written; on
reuse, every file's size is checked, and the hash of each file up to HASH_LIMIT bytes (a
larger one, such as a big checkpoint, would cost seconds on every reuse).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

HASH_LIMIT = 16 << 20


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (the fingerprint of a user-given input such as a checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def record_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `folder`, except the top-level
    names in `skip` (the marker that will hold the record)."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] not in skip:
            out[rel.as_posix()] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    return out


def first_damage(folder: Path, files: dict[str, dict], hash_limit: int = HASH_LIMIT) -> str | None:
    """What is wrong with `folder` against its record (the first problem, in a few words), or None."""
    folder = Path(folder)
    for rel, want in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, {want['size']} expected"
        if size <= hash_limit and file_digest(path) != want["sha256"]:
            return f"{rel} has changed (SHA-256 mismatch)"
    return None
