"""Parquet conversion of a released-layout dataset and loading it back."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffinject.core.errors import DataError
from diffinject.data import parquet
from diffinject.data.layout import LabeledImages, load_image, read_layout, split_dirs, write_layout
from diffinject.data.parquet import (MARKER, ArraySplit, concat_splits, convert_to_parquet, load_split, parquet_dir,
                                     prepare_dataset)
from diffinject.data.registry import get_dataset_spec

SPEC = get_dataset_spec("cmnist")


def make_split(spec, prefix: str, per_class: int, seed: int, size=(28, 28)) -> LabeledImages:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(spec.num_classes), per_class)
    biases = labels.copy()
    biases[::3] = (labels[::3] + 1) % spec.num_biases
    images = rng.integers(0, 256, size=(len(labels), *size, 3), dtype=np.uint8)
    return LabeledImages(images=images, labels=labels, biases=biases,
                         ids=[f"{prefix}_{i}" for i in range(len(labels))])


@pytest.fixture
def dataset(tmp_path):
    data_root, cache_root = tmp_path / "data", tmp_path / "cache"
    splits = {"train": make_split(SPEC, "tr", 3, 0), "valid": make_split(SPEC, "v", 1, 1),
              "test": make_split(SPEC, "t", 2, 2)}
    write_layout(data_root, SPEC, "1", splits["train"], splits["valid"], splits["test"])
    return data_root, cache_root, splits


def shard_mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def assert_matches_files(out: Path, data_root: Path, spec=SPEC, ratio="1"):
    index = read_layout(data_root, spec, ratio)
    for split in ("train", "valid", "test"):
        loaded = load_split(out, split)
        records = index.splits[split]
        assert len(loaded) == len(records)
        assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int64
        by_id = {r.id: r for r in records}
        assert sorted(loaded.ids.tolist()) == sorted(by_id)
        for i, sample_id in enumerate(loaded.ids):
            record = by_id[sample_id]
            assert loaded.labels[i] == record.label and loaded.biases[i] == record.bias
            assert loaded.aligned[i] == (record.label == record.bias)
            np.testing.assert_array_equal(loaded.images[i], load_image(record.path, spec))


def test_round_trip(dataset):
    data_root, cache_root, splits = dataset
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    assert out == parquet_dir(cache_root, SPEC, "1") == cache_root / "parquet" / "cmnist" / "1pct"
    assert_matches_files(out, data_root)
    # and against the in-memory arrays the dataset was written from
    for split, data in splits.items():
        loaded = load_split(out, split)
        order = {sample_id: i for i, sample_id in enumerate(data.ids)}
        idx = np.array([order[s] for s in loaded.ids])
        np.testing.assert_array_equal(loaded.images, data.images[idx])
        np.testing.assert_array_equal(loaded.labels, data.labels[idx])
        np.testing.assert_array_equal(loaded.biases, data.biases[idx])
    marker = json.loads((out / MARKER).read_text())
    assert marker["counts"] == {"train": 30, "valid": 10, "test": 20}
    assert marker["dataset"] == "cmnist" and marker["ratio"] == "1"
    table = pq.read_table(out / "train-00000.parquet")
    assert set(table["split"].to_pylist()) == {"train"}
    assert all(Path(p).is_file() for p in table["source_path"].to_pylist())


def test_many_shards(dataset, monkeypatch):
    data_root, cache_root, _ = dataset
    monkeypatch.setattr(parquet, "ROWS_PER_SHARD", 4)
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    assert len(list(out.glob("train-*.parquet"))) == 8   # 30 rows: 7 full shards + 2 rows
    assert len(list(out.glob("test-*.parquet"))) == 5    # 20 rows: exactly 5, no empty extra shard
    assert json.loads((out / MARKER).read_text())["shards"] == {"train": 8, "valid": 3, "test": 5}
    assert_matches_files(out, data_root)
    # row order is the order of the layout index, across shards
    index = read_layout(data_root, SPEC, "1")
    assert load_split(out, "train").ids.tolist() == [r.id for r in index.splits["train"]]


def test_second_conversion_is_skipped(dataset):
    data_root, cache_root, _ = dataset
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    before = shard_mtimes(out)
    inode = out.stat().st_ino
    assert convert_to_parquet(data_root, cache_root, SPEC, "1") == out
    assert shard_mtimes(out) == before
    assert out.stat().st_ino == inode


def test_touching_a_source_image_reconverts(dataset):
    data_root, cache_root, _ = dataset
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    before = json.loads((out / MARKER).read_text())["fingerprint"]
    some = next(iter(read_layout(data_root, SPEC, "1").splits["valid"])).path
    stat = some.stat()
    os.utime(some, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    inode = (out / MARKER).stat().st_ino
    convert_to_parquet(data_root, cache_root, SPEC, "1")
    assert json.loads((out / MARKER).read_text())["fingerprint"] != before
    assert (out / MARKER).stat().st_ino != inode


def test_replacing_a_source_image_reconverts_with_new_pixels(dataset):
    data_root, cache_root, _ = dataset
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    record = read_layout(data_root, SPEC, "1").splits["test"][3]
    new = np.full((28, 28, 3), 17, dtype=np.uint8)
    tmp = record.path.with_name("replacement.tmp")
    Image.fromarray(new).save(tmp, format="PNG")
    stat = record.path.stat()
    os.replace(tmp, record.path)
    os.utime(record.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    convert_to_parquet(data_root, cache_root, SPEC, "1")
    test = load_split(out, "test")
    np.testing.assert_array_equal(test.images[test.ids.tolist().index(record.id)], new)
    assert_matches_files(out, data_root)


def test_new_source_image_reconverts(dataset):
    data_root, cache_root, _ = dataset
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    dirs = split_dirs(data_root, SPEC, "1")
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(dirs["valid"] / "extra_4_2.png")
    convert_to_parquet(data_root, cache_root, SPEC, "1")
    assert len(load_split(out, "valid")) == 11


def test_corrupt_image_aborts_conversion(dataset):
    data_root, cache_root, _ = dataset
    bad = read_layout(data_root, SPEC, "1").splits["test"][5].path
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    out = parquet_dir(cache_root, SPEC, "1")
    with pytest.raises(DataError) as err:
        convert_to_parquet(data_root, cache_root, SPEC, "1")
    assert str(bad) in str(err.value)
    assert not out.exists()
    assert not (out / MARKER).exists()
    assert list(out.parent.iterdir()) == []  # no temporary folder left beside it


def test_corrupt_image_keeps_the_previous_conversion(dataset):
    data_root, cache_root, _ = dataset
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    before = shard_mtimes(out)
    bad = read_layout(data_root, SPEC, "1").splits["train"][0].path
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="unreadable image"):
        convert_to_parquet(data_root, cache_root, SPEC, "1")
    assert shard_mtimes(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["1pct"]


def test_wrongly_sized_image_aborts_conversion(dataset):
    data_root, cache_root, _ = dataset
    bad = read_layout(data_root, SPEC, "1").splits["valid"][2].path
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(bad, format="PNG")
    with pytest.raises(DataError, match="expected 28x28") as err:
        convert_to_parquet(data_root, cache_root, SPEC, "1")
    assert str(bad) in str(err.value)
    assert not parquet_dir(cache_root, SPEC, "1").exists()


def test_image_sizes_must_agree_across_splits(tmp_path):
    """image_size None means any size, but the same for all images of the dataset."""
    spec = get_dataset_spec("dogs_and_cats")
    data_root = tmp_path / "data"
    write_layout(data_root, spec, "1", make_split(spec, "tr", 3, 0, (10, 8)),
                 make_split(spec, "v", 2, 1, (10, 8)), make_split(spec, "t", 2, 2, (12, 8)))
    with pytest.raises(DataError, match="like the other images") as err:
        convert_to_parquet(data_root, tmp_path / "cache", spec, "1")
    assert "/test/" in str(err.value)
    assert not parquet_dir(tmp_path / "cache", spec, "1").exists()


def test_any_consistent_size_converts(tmp_path):
    spec = get_dataset_spec("bffhq")
    data_root = tmp_path / "data"
    write_layout(data_root, spec, "2", make_split(spec, "tr", 3, 0, (10, 8)),
                 make_split(spec, "v", 2, 1, (10, 8)), make_split(spec, "t", 2, 2, (10, 8)))
    out = convert_to_parquet(data_root, tmp_path / "cache", spec, "2")
    assert load_split(out, "test").images.shape == (4, 10, 8, 3)
    assert_matches_files(out, data_root, spec, "2")


def test_load_split_without_marker(dataset, tmp_path):
    data_root, cache_root, _ = dataset
    with pytest.raises(DataError, match="_SUCCESS.json") as err:
        load_split(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(err.value)
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    (out / MARKER).unlink()
    with pytest.raises(DataError, match="no finished Parquet conversion") as err:
        load_split(out, "train")
    assert str(out) in str(err.value)


def test_load_split_unknown_split(dataset):
    data_root, cache_root, _ = dataset
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    with pytest.raises(DataError, match="'synthetic'"):
        load_split(out, "synthetic")


def test_concat_splits(dataset):
    data_root, cache_root, _ = dataset
    out = convert_to_parquet(data_root, cache_root, SPEC, "1")
    train, valid = load_split(out, "train"), load_split(out, "valid")
    both = concat_splits(train, valid)
    assert len(both) == 40 and both.images.shape == (40, 28, 28, 3)
    np.testing.assert_array_equal(both.images[:30], train.images)
    np.testing.assert_array_equal(both.images[30:], valid.images)
    np.testing.assert_array_equal(both.labels, np.concatenate([train.labels, valid.labels]))
    np.testing.assert_array_equal(both.biases, np.concatenate([train.biases, valid.biases]))
    assert both.ids.tolist() == train.ids.tolist() + valid.ids.tolist()
    assert both.aligned.sum() == train.aligned.sum() + valid.aligned.sum()
    other = ArraySplit(images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, np.int64),
                       biases=np.zeros(2, np.int64), ids=np.array(["a", "b"], dtype=object))
    with pytest.raises(DataError, match="different sizes"):
        concat_splits(train, other)


def test_prepare_dataset_builds_colored_digits(tmp_path):
    spec = get_dataset_spec("colored_digits")
    data_root, cache_root = tmp_path / "data", tmp_path / "cache"
    out = prepare_dataset(data_root, cache_root, spec, "2")
    assert (data_root / "colored_digits" / "2pct").is_dir()
    assert (out / MARKER).is_file()
    train = load_split(out, "train")
    assert len(train) == 1200 and (~train.aligned).sum() == 24
    assert len(load_split(out, "valid")) == 197 and len(load_split(out, "test")) == 400
    # present now: prepare only converts (and skips the conversion when done)
    before = shard_mtimes(out)
    assert prepare_dataset(data_root, cache_root, spec, "2") == out
    assert shard_mtimes(out) == before
    out5 = prepare_dataset(data_root, cache_root, spec, "5")
    assert (~load_split(out5, "train").aligned).sum() == 60
