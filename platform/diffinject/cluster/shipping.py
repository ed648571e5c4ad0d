"""Files on one node's disk, readable by a Ray worker on any node.

A job's inputs (Parquet shards, a top-K folder, generator and diffusion checkpoints, LPIPS
trunk weights) lie on the disk of the process that starts it; its workers and actors may run
on other nodes, which do not see that disk. `ship(path)` names such a file or folder with the
node it lies on; `receive(shipment)` in a worker returns a path it can read: the original one
on the same node, else a copy fetched through the object store by a zero-CPU task pinned to the
origin node, kept once per content under this node's temporary folder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray

from diffinject.cluster.session import node_id, on_node
from diffinject.core.errors import ConfigError

SCRATCH = "diffinject-inputs"


@dataclass(frozen=True)
class Shipment:
    """A file or folder on node `node`: readable anywhere through `receive`."""

    path: str      # absolute, on the origin node
    node: str      # the origin node's id
    version: str   # names, sizes and mtimes of its files: names the fetched copy


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def ship(path: str | os.PathLike) -> Shipment:
    """Name `path` (a file or folder on this node) for workers on any node."""
    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder to hand to the cluster's workers")
    h = hashlib.sha256(str(path).encode())
    for f in _files(path):
        stat = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Shipment(str(path), node_id(), h.hexdigest()[:20])


@ray.remote(num_cpus=0, max_retries=2)
def _read(path: str) -> dict[str, bytes]:
    """The file, or every file of the folder, at `path` on the node this task runs on."""
    root = Path(path)
    if root.is_file():
        return {"": root.read_bytes()}
    return {str(f.relative_to(root)): f.read_bytes() for f in _files(root)}


def receive(item: Shipment | str) -> Path:
    """A local path holding what `item` names (a plain path string is taken as local)."""
    if not isinstance(item, Shipment):
        return Path(item)
    if item.node == node_id():
        return Path(item.path)
    name = Path(item.path).name
    final = Path(tempfile.gettempdir()) / SCRATCH / item.version / name
    if final.exists():
        return final
    try:
        files = ray.get(_read.options(scheduling_strategy=on_node(item.node)).remote(item.path))
    except Exception as exc:  # the origin node is gone, or the file changed meanwhile
        raise ConfigError(f"cannot fetch {item.path} from node {item.node[:12]}: {exc}") from None
    staging = final.parent / f".{name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    if "" in files:
        (staging / name).write_bytes(files[""])
        source = staging / name
    else:
        source = staging / name
        source.mkdir()
        for rel, payload in files.items():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            (source / rel).write_bytes(payload)
    try:
        os.rename(source, final)  # another worker of this node may have won the race: use its copy
    except OSError:
        if not final.exists():
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return final
