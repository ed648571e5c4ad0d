"""Conversion of a released-layout dataset to Parquet shards, and loading them back.

Each row holds one image as raw uint8 H x W x 3 pixels (zstd-compressed by Parquet) with
id, label, bias, aligned, split and provenance columns. A conversion is written into a
temporary folder that is renamed when complete; its `_SUCCESS.json` records two
fingerprints and its files (size, SHA-256):

- `fingerprint`: the source files' absolute paths, sizes and mtimes, the cheap "is the
  conversion up to date" check;
- `content`: every split's ids, labels, biases, image sizes and pixels, computed while
  converting, the dataset's identity in stage keys (`conversion_fingerprint`), the same
  wherever the files lie and whatever their mtimes.

A conversion is skipped when its `fingerprint` matches. When only that differs (the data
moved, was copied or touched), the images are decoded and hashed once more, and a same
`content` only updates the marker (the shards stay, their `source_path` column naming
where they were converted from); a damaged conversion (a shard missing or changed, the
marker unreadable) is converted again, with a one-line report.
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

from diffinject.core.atomic import atomic_dir, read_json, write_json
from diffinject.core.errors import DataError
from diffinject.core.integrity import first_damage, record_files
from diffinject.data.layout import SPLITS, LayoutIndex, SampleRecord, load_image, read_layout
from diffinject.data.registry import DatasetSpec, ratio_folder

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
    """Hash of the source files' absolute paths, sizes and mtimes (no file is read)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for record in index.splits[split]:
            stat = record.path.stat()
            digest.update(f"{split}|{os.path.abspath(record.path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _hash_sample(digest, split: str, record: SampleRecord, pixels: np.ndarray) -> None:
    """Add one decoded sample to a content fingerprint (row order counts: rows are identities)."""
    digest.update(json.dumps([split, record.id, record.label, record.bias, *pixels.shape]).encode())
    digest.update(pixels.tobytes())


def content_fingerprint(index: LayoutIndex) -> str:
    """The content fingerprint a conversion of `index` records (every image decoded)."""
    digest, size = hashlib.sha256(), None
    for split in SPLITS:
        for record in index.splits[split]:
            pixels = load_image(record.path, index.spec, size)
            size = size or (pixels.shape[1], pixels.shape[0])
            _hash_sample(digest, split, record, pixels)
    return digest.hexdigest()


def _write_split(folder: Path, split: str, index: LayoutIndex, digest,
                 size: tuple[int, int] | None = None) -> tuple[int, tuple[int, int] | None]:
    """Write one split's shards, adding its samples to the content `digest`; `size` (W, H) is
    the image size every image must have, taken from the first image when None. Returns the
    shard count and that size."""
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
        _hash_sample(digest, split, record, pixels)
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


def _conversion_damage(folder: Path) -> str | None:
    """What is wrong with an existing conversion (its marker present), or None."""
    record = read_json(folder / MARKER)
    if record is None:
        return f"{MARKER} is unreadable"
    if not isinstance(record.get("files"), dict) or "content" not in record:
        return f"{MARKER} records no files or content fingerprint (an older conversion)"
    return first_damage(folder, record["files"])


def convert_to_parquet(data_root: Path, cache_root: Path, spec: DatasetSpec, ratio: str) -> Path:
    """Validate the dataset (every image decoded) and write it as Parquet, unless done already."""
    index = read_layout(data_root, spec, ratio)
    out = parquet_dir(cache_root, spec, ratio)
    key = fingerprint(index)
    marker = out / MARKER
    if marker.is_file():
        damage = _conversion_damage(out)
        if damage:
            print(f"{out}: {damage}; converting again", flush=True)
        else:
            record = read_json(marker)
            if record["fingerprint"] == key:
                return out
            if record["content"] == content_fingerprint(index):  # moved, copied or touched: same images
                write_json(marker, {**record, "fingerprint": key, "source": str(index.root)})
                return out
    with atomic_dir(out) as tmp:
        digest, shards, size = hashlib.sha256(), {}, None  # one image size for the whole dataset
        for split in SPLITS:
            shards[split], size = _write_split(tmp, split, index, digest, size)
        counts = {split: len(index.splits[split]) for split in SPLITS}
        write_json(tmp / MARKER, {"fingerprint": key, "content": digest.hexdigest(), "dataset": spec.name,
                                  "ratio": ratio, "shards": shards, "counts": counts, "source": str(index.root),
                                  "files": record_files(tmp)})
    return out


def _marker(folder: Path) -> dict:
    marker = Path(folder) / MARKER
    if not marker.is_file():
        raise DataError(f"{folder}: no finished Parquet conversion here ({MARKER} missing)")
    record = read_json(marker)
    if record is None or "counts" not in record:
        raise DataError(f"{marker} is unreadable (truncated, or not the JSON a conversion writes)")
    return record


def conversion_counts(folder: Path) -> dict[str, int]:
    """Samples per split of a finished conversion (from its marker; no shard is read)."""
    return _marker(folder)["counts"]


def conversion_fingerprint(folder: Path) -> str:
    """The content fingerprint of a finished conversion: the dataset's identity in stage keys."""
    record = _marker(folder)
    if "content" not in record:
        raise DataError(f"{folder / MARKER} records no content fingerprint; convert the dataset again")
    return record["content"]


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
    """The Parquet folder of a dataset/ratio, building what is missing of an embedded dataset first."""
    from diffinject.data.embedded import EMBEDDED, build_missing_embedded

    if spec.name in EMBEDDED:
        build_missing_embedded(spec.name, data_root, ratio)
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
