"""The bias-assignment protocol: conflict counts, bias assignment and colouring."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from diffinject.data.protocol import CMNIST_COLORS, assign_biases, colorize, conflict_counts


def random_labels(seed: int, n: int, num_classes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # unequal class sizes, some classes possibly tiny
    weights = rng.dirichlet(np.ones(num_classes) * 0.7)
    return rng.choice(num_classes, size=n, p=weights)


@pytest.mark.parametrize("fraction", [0.0, 0.005, 0.01, 0.02, 0.05, 0.37, 0.9, 1.0])
@pytest.mark.parametrize("seed", range(8))
def test_conflict_counts_sum_exactly_and_fit_classes(fraction, seed):
    n = [13, 57, 101, 250, 1200, 1397][seed % 6]
    labels = random_labels(seed, n, 10)
    counts = conflict_counts(labels, fraction, 10)
    per_class = np.bincount(labels, minlength=10)
    assert counts.shape == (10,)
    assert counts.sum() == round(fraction * n)
    assert np.all(counts >= 0)
    assert np.all(counts <= per_class)
    # largest remainder: every class is within one of its exact share
    assert np.all(np.abs(counts - per_class * fraction) < 1.0)


def test_conflict_counts_small_data_does_not_drift():
    # 10 classes of 12: per-class rounding of 0.5% would give 0 everywhere; the total must be 1
    labels = np.repeat(np.arange(10), 12)
    assert conflict_counts(labels, 0.01, 10).sum() == 1
    # ties go to the lowest class
    np.testing.assert_array_equal(conflict_counts(labels, 0.01, 10), [1] + [0] * 9)
    # 1,200 samples at 0.5/1/2/5 % -> 6/12/24/60 exactly
    labels = np.repeat(np.arange(10), 120)
    for fraction, expected in [(0.005, 6), (0.01, 12), (0.02, 24), (0.05, 60)]:
        assert conflict_counts(labels, fraction, 10).sum() == expected


def test_conflict_counts_with_empty_class_and_bad_fraction():
    labels = np.array([0] * 5 + [2] * 5)
    counts = conflict_counts(labels, 0.5, 3)
    assert counts[1] == 0 and counts.sum() == 5
    with pytest.raises(ValueError):
        conflict_counts(labels, 1.5, 3)
    with pytest.raises(ValueError):
        conflict_counts(labels, -0.1, 3)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3, 0.9])
def test_assign_biases_protocol(fraction):
    labels = random_labels(3, 997, 10)
    biases = assign_biases(labels, fraction, 10, np.random.default_rng(7))
    again = assign_biases(labels, fraction, 10, np.random.default_rng(7))
    np.testing.assert_array_equal(biases, again)
    assert biases.shape == labels.shape
    assert np.all((biases >= 0) & (biases < 10))
    conflicting = biases != labels
    np.testing.assert_array_equal(np.bincount(labels[conflicting], minlength=10),
                                  conflict_counts(labels, fraction, 10))
    # aligned samples keep bias == label (trivially), conflicting ones spread evenly
    for c in range(10):
        spread = Counter(biases[(labels == c) & conflicting].tolist())
        assert c not in spread
        per_other = [spread.get(b, 0) for b in range(10) if b != c]
        assert max(per_other) - min(per_other) <= 1


def test_assign_biases_depends_on_seed():
    labels = np.repeat(np.arange(10), 50)
    a = assign_biases(labels, 0.5, 10, np.random.default_rng(0))
    b = assign_biases(labels, 0.5, 10, np.random.default_rng(1))
    assert not np.array_equal(a, b)
    assert (a != labels).sum() == (b != labels).sum() == 250


def test_colorize_formula_without_noise():
    gray = np.zeros((3, 4, 5))
    gray[0, 1, 1:4] = [1.0, 0.5, 0.25]
    gray[1, 2:4, 2] = [1.0, 0.7]
    gray[2] = np.linspace(0, 1, 20).reshape(4, 5)
    biases = np.array([0, 8, 4])
    out = colorize(gray, biases, np.random.default_rng(0), std=0.0)
    assert out.dtype == np.uint8 and out.shape == (3, 4, 5, 3)
    expected = np.round(gray[..., None] * CMNIST_COLORS[biases][:, None, None, :] * 255.0)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert np.all(out[0, 0] == 0)
    np.testing.assert_array_equal(out[0, 1, 1], np.round(CMNIST_COLORS[0] * 255))


def test_colorize_noise_is_small_and_per_image():
    gray = np.ones((200, 2, 2))
    biases = np.arange(200) % 10
    out = colorize(gray, biases, np.random.default_rng(1)).astype(float) / 255.0
    err = out - CMNIST_COLORS[biases][:, None, None, :]
    assert np.abs(err).max() <= 5 * 0.005 + 1 / 255
    # one colour per image: all pixels of an image identical
    assert np.all(out == out[:, :1, :1, :])
    # the noise is really there (std 0.005 is 1.3 grey levels)
    assert np.abs(err).max() > 1 / 255
