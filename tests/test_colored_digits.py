"""Colored Digits: the embedded, offline stand-in for Colored MNIST."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from diffinject.data.colored_digits import upscaled_digits
from diffinject.data.embedded import build_embedded
from diffinject.data.layout import load_image, read_layout
from diffinject.data.protocol import CMNIST_COLOR_STD, CMNIST_COLORS, conflict_counts
from diffinject.data.registry import get_dataset_spec

SPEC = get_dataset_spec("colored_digits")
CONFLICTING = {"0.5": 6, "1": 12, "2": 24, "5": 60}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    assert build_embedded("colored_digits", root) == root / "colored_digits"
    return root, {ratio: read_layout(root, SPEC, ratio) for ratio in SPEC.ratios}


def test_upscaled_digits():
    gray, labels = upscaled_digits()
    assert gray.shape == (1797, 28, 28) and labels.shape == (1797,)
    assert gray.min() >= 0.0 and gray.max() <= 1.0
    # a 4-pixel empty border like MNIST
    assert gray[:, :4].max() == 0 and gray[:, 24:].max() == 0
    assert gray[:, :, :4].max() == 0 and gray[:, :, 24:].max() == 0
    assert sorted(Counter(labels.tolist())) == list(range(10))


def test_layout_on_disk(built):
    root, _ = built
    base = root / "colored_digits"
    assert sorted(p.name for p in base.iterdir()) == ["0.5pct", "1pct", "2pct", "5pct", "build.json", "test"]
    for ratio in SPEC.ratios:
        assert sorted(p.name for p in (base / f"{ratio}pct").iterdir()) == ["align", "conflict", "valid"]


def test_split_sizes_and_exact_conflict_counts(built):
    _, indexes = built
    for ratio, index in indexes.items():
        sizes = {split: len(records) for split, records in index.splits.items()}
        assert sizes == {"train": 1200, "valid": 197, "test": 400}
        counts = index.counts()
        conflicting = [counts["train"][c][1] for c in range(10)]
        assert sum(conflicting) == CONFLICTING[ratio]
        labels = np.array([r.label for r in index.splits["train"]])
        assert conflicting == conflict_counts(labels, float(ratio) / 100, 10).tolist()
        assert sum(a for a, _ in counts["train"].values()) == 1200 - CONFLICTING[ratio]
        for c in range(10):
            spread = Counter(r.bias for r in index.splits["train"] if r.label == c and not r.aligned)
            per_other = [spread.get(b, 0) for b in range(10) if b != c]
            assert max(per_other) - min(per_other) <= 1


def test_same_samples_at_every_ratio(built):
    _, indexes = built
    first = indexes["0.5"]
    for index in indexes.values():
        for split in ("train", "valid", "test"):
            assert sorted((r.id, r.label) for r in index.splits[split]) == \
                sorted((r.id, r.label) for r in first.splits[split])
    # valid and test images are shared, byte for byte
    for split in ("valid", "test"):
        a = {r.id: r.path.read_bytes() for r in indexes["1"].splits[split]}
        b = {r.id: r.path.read_bytes() for r in indexes["5"].splits[split]}
        assert a == b


def test_test_split_each_colour_four_times_per_class(built):
    _, indexes = built
    test = indexes["1"].splits["test"]
    for c in range(10):
        colours = Counter(r.bias for r in test if r.label == c)
        assert colours == {b: 4 for b in range(10)}, (c, colours)


def test_valid_split_unbiased(built):
    _, indexes = built
    valid = indexes["1"].splits["valid"]
    for c in range(10):
        colours = Counter(r.bias for r in valid if r.label == c)
        per_colour = [colours.get(b, 0) for b in range(10)]
        assert max(per_colour) - min(per_colour) <= 1, (c, per_colour)


def test_images_are_28x28_rgb_in_their_bias_colour(built):
    _, indexes = built
    index = indexes["5"]
    for split in ("train", "valid", "test"):
        for record in index.splits[split]:
            image = load_image(record.path, SPEC, (28, 28))
            assert image.shape == (28, 28, 3) and image.dtype == np.uint8
            # the brightest pixel of a digit is at most full intensity times its colour;
            # every digit reaches at least 60% intensity somewhere
            peak = image.reshape(-1, 3).max(axis=0) / 255.0
            limit = CMNIST_COLORS[record.bias] + 4 * CMNIST_COLOR_STD + 1 / 255
            assert np.all(peak <= limit), record.path
            low = 0.6 * (CMNIST_COLORS[record.bias] - 4 * CMNIST_COLOR_STD) - 1 / 255
            assert np.all(peak >= low), record.path
            # the colour's direction: the brightest channel is the colour's brightest channel
            assert np.argmax(peak) == np.argmax(CMNIST_COLORS[record.bias]), record.path


def test_build_is_deterministic(built, tmp_path):
    root, indexes = built
    build_embedded("colored_digits", tmp_path, ratios=("1",))
    index = read_layout(tmp_path, SPEC, "1")
    for split in ("train", "valid", "test"):
        ours = {r.path.relative_to(tmp_path): r.path.read_bytes() for r in index.splits[split]}
        theirs = {r.path.relative_to(root): r.path.read_bytes() for r in indexes["1"].splits[split]}
        assert ours == theirs
