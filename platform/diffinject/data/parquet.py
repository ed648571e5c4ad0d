"""Conversion of a released-layout dataset to Parquet shards, and loading them back.

Each row holds one image as raw uint8 H x W x 3 pixels (zstd-compressed by Parquet) with
id, label, bias, aligned, split and provenance columns. A conversion is keyed by a
fingerprint of the source files; it is skipped when `_SUCCESS.json` already records the
same fingerprint and is written into a temporary folder that is renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_dir, write_json
from ..errors import DataError
from .layout import SPLITS, LayoutIndex, load_image, read_layout
from .registry import DatasetSpec, ratio_folder

ROWS_PER_SHARD = 20_000
MARKER = "_SUCCESS.json"
SCHEMA = pa.schema([
    ("id", pa.string()), ("label", pa.int16()), ("bias", pa.int16()), ("aligned", pa.bool_()),
    ("split", pa.string()), ("height", pa.int16()), ("width", pa.int16()),
    ("pixels", pa.binary()), ("source_path", pa.string()),
])


@dataclass
class ArraySplit:
    """One split in memory. `index` is the row position, the sample identity used by
    training code (per-sample losses, top-K); `ids` are the dataset's own ids."""

    images: np.ndarray   # uint8 N x H x W x 3
    labels: np.ndarray   # int64 N
    biases: np.ndarray   # int64 N
    ids: np.ndarray      # str N

    @property
    def aligned(self) -> np.ndarray:
        return self.labels == self.biases

    def __len__(self) -> int:
        return len(self.labels)


def parquet_dir(cache_root: Path, spec: DatasetSpec, ratio: str) -> Path:
    return Path(cache_root) / "parquet" / spec.name / ratio_folder(ratio)


def fingerprint(index: LayoutIndex) -> str:
    """Of the files' names under the data root, sizes and mtimes: where the root is (relative or
    absolute) is no part of the dataset's identity."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for record in index.splits[split]:
            stat = record.path.stat()
            name = os.path.relpath(record.path, index.root.parent)
            digest.update(f"{split}|{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _write_split(folder: Path, split: str, index: LayoutIndex,
                 size: tuple[int, int] | None = None) -> tuple[int, tuple[int, int] | None]:
    """Write one split's shards; `size` (W, H) is the image size every image must have,
    taken from the first image when None. Returns the shard count and that size."""
    records = index.splits[split]
    rows = {name: [] for name in SCHEMA.names}
    shard = 0

    def flush() -> None:
        nonlocal shard, rows
        table = pa.Table.from_pydict(rows, schema=SCHEMA)
        pq.write_table(table, folder / f"{split}-{shard:05d}.parquet", compression="zstd")
        shard += 1
        rows = {name: [] for name in SCHEMA.names}

    for record in records:
        pixels = load_image(record.path, index.spec, size)
        size = size or (pixels.shape[1], pixels.shape[0])
        rows["id"].append(record.id)
        rows["label"].append(record.label)
        rows["bias"].append(record.bias)
        rows["aligned"].append(record.aligned)
        rows["split"].append(split)
        rows["height"].append(pixels.shape[0])
        rows["width"].append(pixels.shape[1])
        rows["pixels"].append(pixels.tobytes())
        rows["source_path"].append(str(record.path))
        if len(rows["id"]) == ROWS_PER_SHARD:
            flush()
    if rows["id"] or shard == 0:
        flush()
    return shard, size


def convert_to_parquet(data_root: Path, cache_root: Path, spec: DatasetSpec, ratio: str) -> Path:
    """Validate the dataset (every image decoded) and write it as Parquet, unless done already."""
    index = read_layout(data_root, spec, ratio)
    out = parquet_dir(cache_root, spec, ratio)
    key = fingerprint(index)
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == key:
        return out
    with atomic_dir(out) as tmp:
        shards, size = {}, None  # one image size for the whole dataset, as `data check` demands
        for split in SPLITS:
            shards[split], size = _write_split(tmp, split, index, size)
        counts = {split: len(index.splits[split]) for split in SPLITS}
        write_json(tmp / MARKER, {"fingerprint": key, "dataset": spec.name, "ratio": ratio,
                                  "shards": shards, "counts": counts, "source": str(index.root)})
    return out


def conversion_counts(folder: Path) -> dict[str, int]:
    """Samples per split of a finished conversion (from its marker; no shard is read)."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        raise DataError(f"{folder}: no finished Parquet conversion here ({MARKER} missing)")
    return json.loads(marker.read_text())["counts"]


def conversion_fingerprint(folder: Path) -> str:
    """The source-files fingerprint a finished conversion was made from (its identity in keys)."""
    conversion_counts(folder)
    return json.loads((Path(folder) / MARKER).read_text())["fingerprint"]


def load_labels(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, biases) of one split, reading only those two columns."""
    conversion_counts(folder)
    files = sorted(Path(folder).glob(f"{split}-*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["label", "bias"]) for f in files])
    return table["label"].to_numpy().astype(np.int64), table["bias"].to_numpy().astype(np.int64)


def load_split(folder: Path, split: str) -> ArraySplit:
    """Read one split of a finished conversion into memory."""
    folder = Path(folder)
    conversion_counts(folder)
    files = sorted(folder.glob(f"{split}-*.parquet"))
    if not files:
        raise DataError(f"{folder}: no Parquet shards for split {split!r}")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    heights = np.asarray(table["height"].to_numpy())
    widths = np.asarray(table["width"].to_numpy())
    n = table.num_rows
    if n and (np.any(heights != heights[0]) or np.any(widths != widths[0])):
        raise DataError(f"{folder}: images of split {split!r} differ in size")
    h, w = (int(heights[0]), int(widths[0])) if n else (0, 0)
    flat = b"".join(table["pixels"].to_pylist())
    images = np.frombuffer(bytearray(flat), dtype=np.uint8).reshape(n, h, w, 3)
    return ArraySplit(images=images, labels=table["label"].to_numpy().astype(np.int64),
                      biases=table["bias"].to_numpy().astype(np.int64),
                      ids=np.asarray(table["id"].to_pylist(), dtype=object))


def prepare_dataset(data_root: Path, cache_root: Path, spec: DatasetSpec, ratio: str) -> Path:
    """The Parquet folder of a dataset/ratio, building Colored Digits first if it is absent."""
    if spec.name == "colored_digits" and not (Path(data_root) / spec.name / ratio_folder(ratio)).is_dir():
        from .colored_digits import build_colored_digits

        build_colored_digits(data_root, ratios=spec.ratios)
    return convert_to_parquet(data_root, cache_root, spec, ratio)


def concat_splits(*splits: ArraySplit) -> ArraySplit:
    """Union of splits (e.g. original + synthetic training data); images must share a size."""
    shapes = {s.images.shape[1:] for s in splits}
    if len(shapes) != 1:
        raise DataError(f"cannot train on images of different sizes together: {sorted(shapes)}")
    return ArraySplit(images=np.concatenate([s.images for s in splits]),
                      labels=np.concatenate([s.labels for s in splits]),
                      biases=np.concatenate([s.biases for s in splits]),
                      ids=np.concatenate([s.ids for s in splits]))
