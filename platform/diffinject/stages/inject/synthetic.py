"""On-disk format of the synthetic set D_syn and the per-batch helpers of the injection job.

While the job runs, every batch of pairs is written as its own part file
`OUT/_parts/part-<first pair_id>-<uuid>.parquet` (temporary name, then rename). `finalize`
checks that every expected pair_id is there (a pair written twice by a retried batch is kept
once), and rewrites the parts, sorted by pair_id, into a folder that
`data.parquet.load_split(OUT, "train")` and `conversion_counts(OUT)` read like a converted
dataset: `train-00000.parquet`..., empty `valid`/`test` shards and `_SUCCESS.json`. Since
that replaces the whole of OUT, OUT must be new, empty, a synthetic set or one in progress
(`check_output_folder`). A part file that cannot be read is set aside (renamed
`<name>.unreadable`, and kept in `OUT/_unreadable/` by `finalize`) and its pairs are
generated again.

Rows have the columns of `data.parquet.SCHEMA` (id `syn-<pair_id>`, split "train", aligned =
label == bias; with injection.label_from=content the label is the content's and the bias the
original's, with label_from=original the label is the original's and the bias the content's:
the image is meant to show that class with that bias attribute) plus provenance: pair_id,
original_id, content_id (dataset ids), seed, gamma, t_edit, inversion_steps, generation_steps,
checkpoint_hash (first 16 hex digits of the checkpoint's sha256) and label_from.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffinject.config.schema import InjectionConfig
from diffinject.core.atomic import atomic_dir, read_json, write_json
from diffinject.core.errors import DataError
from diffinject.data.parquet import MARKER, ROWS_PER_SHARD, SCHEMA

PARTS = "_parts"
SET_ASIDE = "_unreadable"  # where finalize keeps the part files that could not be read
SYNTHETIC_SCHEMA = pa.schema(list(SCHEMA) + [
    ("pair_id", pa.int64()), ("original_id", pa.string()), ("content_id", pa.string()), ("seed", pa.int64()),
    ("gamma", pa.float64()), ("t_edit", pa.int32()), ("inversion_steps", pa.int32()),
    ("generation_steps", pa.int32()), ("checkpoint_hash", pa.string()), ("label_from", pa.string()),
])


def checkpoint_hash(path: Path) -> str:
    """First 16 hex digits of the sha256 of a checkpoint file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def provenance(cfg: InjectionConfig, t_edit: int, checkpoint_digest: str) -> dict:
    return {"gamma": float(cfg.gamma), "t_edit": int(t_edit), "inversion_steps": int(cfg.inversion_steps),
            "generation_steps": int(cfg.generation_steps), "checkpoint_hash": checkpoint_digest,
            "label_from": cfg.label_from}


def batch_table(pair_ids, original_index, content_index, seeds, images: np.ndarray, train_ids, train_labels,
                train_biases, topk_ids, topk_labels, topk_biases, prov: dict) -> pa.Table:
    """Rows of the synthetic set for one batch of manifest pairs and their generated images
    (uint8 N x H x W x 3, in the pairs' order); prov["label_from"] says whose label a row gets."""
    pair_ids = np.asarray(pair_ids, dtype=np.int64)
    original_index = np.asarray(original_index, dtype=np.int64)
    content_index = np.asarray(content_index, dtype=np.int64)
    n = len(pair_ids)
    if images.shape[0] != n or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected {n} uint8 H x W x 3 images, got {images.dtype} {images.shape}")
    if prov["label_from"] == "original":
        labels, biases = np.asarray(train_labels)[original_index], np.asarray(topk_biases)[content_index]
    else:
        labels, biases = np.asarray(topk_labels)[content_index], np.asarray(train_biases)[original_index]
    labels, biases = labels.astype(np.int64), biases.astype(np.int64)
    height, width = images.shape[1], images.shape[2]
    columns = {
        "id": [f"syn-{int(p):07d}" for p in pair_ids],
        "label": labels, "bias": biases, "aligned": labels == biases,
        "split": ["train"] * n, "height": np.full(n, height), "width": np.full(n, width),
        "pixels": [np.ascontiguousarray(img).tobytes() for img in images],
        "source_path": [""] * n,
        "pair_id": pair_ids,
        "original_id": [str(v) for v in np.asarray(train_ids)[original_index]],
        "content_id": [str(v) for v in np.asarray(topk_ids)[content_index]],
        "seed": np.asarray(seeds, dtype=np.int64),
        "gamma": np.full(n, prov["gamma"]), "t_edit": np.full(n, prov["t_edit"]),
        "inversion_steps": np.full(n, prov["inversion_steps"]),
        "generation_steps": np.full(n, prov["generation_steps"]),
        "checkpoint_hash": [prov["checkpoint_hash"]] * n, "label_from": [prov["label_from"]] * n,
    }
    arrays = [pa.array(columns[f.name], type=f.type) for f in SYNTHETIC_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SYNTHETIC_SCHEMA)


def write_part(parts_dir: Path, table: pa.Table) -> Path:
    """Write one batch's rows as a part file, atomically (hidden temporary name, then rename)."""
    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    first = int(pc.min(table["pair_id"]).as_py()) if table.num_rows else 0
    final = parts_dir / f"part-{first:07d}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = parts_dir / f".{final.name}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)
    return final


def part_files(parts_dir: Path) -> list[Path]:
    """The finished part files (temporary ones, whose names start with '.', are ignored)."""
    parts_dir = Path(parts_dir)
    return sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []


def _is_ours(name: str) -> bool:
    """A name the injection job writes into its output folder."""
    return name in (PARTS, MARKER, SET_ASIDE) or re.fullmatch(r"(train|valid|test)-\d{5}\.parquet", name) is not None


def check_output_folder(folder: Path) -> None:
    """DataError unless `folder` may receive a synthetic set: it is absent, empty, a finished
    synthetic set or one in progress (it holds `_parts`), for `finalize` replaces all of it."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise DataError(f"{folder} is a file; the synthetic set needs a new or empty folder")
    names = sorted(p.name for p in folder.iterdir())
    foreign = [name for name in names if not _is_ours(name)]
    if not foreign and names and PARTS not in names:
        record = read_json(folder / MARKER) or {}
        if record.get("dataset") != "synthetic":
            foreign = [f"{MARKER} of dataset {record.get('dataset', '?')!r}"]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise DataError(f"{folder} holds files the injection job did not write ({', '.join(foreign[:3])}{more}); "
                        f"give a new or empty folder, or a synthetic set made by `diffinject inject`")


def _readable_parts(parts_dir: Path, columns: list[str] | None = None,
                    schema: pa.Schema = SYNTHETIC_SCHEMA) -> list[pa.Table]:
    """The part files' tables; one that cannot be read is renamed `<name>.unreadable` (so that
    its pairs count as missing and are generated again), with a printed line."""
    tables = []
    for path in part_files(parts_dir):
        try:
            tables.append(pq.read_table(path, columns=columns, schema=None if columns else schema))
        except (OSError, pa.ArrowException) as exc:
            aside = path.with_name(f"{path.name}.unreadable")
            os.replace(path, aside)
            print(f"[inject] {path}: unreadable part file ({type(exc).__name__}: {str(exc)[:120]}); set aside as "
                  f"{aside.name}, its pairs will be generated again", flush=True)
    return tables


def written_pair_ids(parts_dir: Path) -> np.ndarray:
    """The pair_ids already present in readable part files (unique, sorted)."""
    ids = [table["pair_id"].to_numpy() for table in _readable_parts(parts_dir, ["pair_id"])]
    return np.unique(np.concatenate(ids)).astype(np.int64) if ids else np.zeros(0, dtype=np.int64)


def finalize(folder: Path, expected_pair_ids, meta: dict | None = None, schema: pa.Schema = SYNTHETIC_SCHEMA) -> Path:
    """Turn `folder/_parts` into the finished synthetic set in `folder` (atomically); `schema`:
    the rows' columns (the GAN kinds' sets have synthesis.sets.GAN_SCHEMA).

    Every expected pair_id must be present (DataError naming the missing ones otherwise); a
    pair_id found more than once (a retried batch) is kept once; rows of other pair_ids are
    dropped. The result is sorted by pair_id. A folder holding files the job did not write
    is refused (DataError), never replaced.
    """
    folder = Path(folder)
    check_output_folder(folder)
    expected = np.unique(np.asarray(expected_pair_ids, dtype=np.int64))
    tables = _readable_parts(folder / PARTS, schema=schema)
    if not tables:
        raise DataError(f"{folder / PARTS}: no readable part files to finalize")
    table = pa.concat_tables(tables)
    pair_ids = table["pair_id"].to_numpy()
    unique, first = np.unique(pair_ids, return_index=True)  # first occurrence of each pair_id
    missing = np.setdiff1d(expected, unique)
    if len(missing):
        raise DataError(f"{folder}: {len(missing)} of {len(expected)} synthetic pairs are missing "
                        f"(e.g. pair_id {', '.join(str(int(p)) for p in missing[:5])}); re-run the injection job")
    keep = first[np.isin(unique, expected)]  # sorted by pair_id, since np.unique sorts
    table = table.take(pa.array(keep))
    duplicates = len(pair_ids) - len(unique)
    with atomic_dir(folder) as tmp:
        shards = 0
        for start in range(0, max(table.num_rows, 1), ROWS_PER_SHARD):
            pq.write_table(table.slice(start, ROWS_PER_SHARD), tmp / f"train-{shards:05d}.parquet",
                           compression="zstd")
            shards += 1
        empty = schema.empty_table()
        for split in ("valid", "test"):
            pq.write_table(empty, tmp / f"{split}-00000.parquet", compression="zstd")
        write_json(tmp / MARKER, {**(meta or {}), "dataset": "synthetic",
                                  "shards": {"train": shards, "valid": 1, "test": 1},
                                  "counts": {"train": int(table.num_rows), "valid": 0, "test": 0},
                                  "duplicates_dropped": int(duplicates), "parts": len(tables)})
        for path in sorted((folder / PARTS).glob("*.unreadable")) + sorted(folder.glob(f"{SET_ASIDE}/*")):
            (tmp / SET_ASIDE).mkdir(exist_ok=True)
            shutil.copy2(path, tmp / SET_ASIDE / path.name)  # a copy: the originals stay until the rename
    return folder
