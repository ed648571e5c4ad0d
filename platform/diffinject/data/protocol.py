"""The bias-assignment protocol shared by the dataset builders (LfF / DisEnt style).

Within class c a fraction (1 - s) of the samples gets bias attribute c (aligned) and the
rest is spread as evenly as possible over the other attributes (conflicting). The number
of conflicting samples is allocated over classes by largest remainder so that the total is
round(s * N) exactly, even on small data sets where per-class rounding would drift.
"""
from __future__ import annotations

import numpy as np

# LfF's Colored MNIST class colours (RGB in [0, 1]).
CMNIST_COLORS = np.array([
    [0.984, 0.312, 0.169], [0.991, 0.916, 0.352], [0.673, 0.461, 0.580], [0.783, 0.832, 0.601],
    [0.088, 0.778, 0.982], [0.321, 0.961, 0.446], [0.025, 0.236, 0.759], [0.555, 0.102, 0.762],
    [0.208, 0.393, 0.019], [0.834, 0.202, 0.267],
])
CMNIST_COLOR_STD = 0.005


def conflict_counts(labels: np.ndarray, conflict_fraction: float, num_classes: int) -> np.ndarray:
    """Conflicting samples per class: largest-remainder split of round(s * N), ties by class."""
    if not 0.0 <= conflict_fraction <= 1.0:
        raise ValueError(f"conflict fraction {conflict_fraction} outside [0, 1]")
    per_class = np.bincount(labels, minlength=num_classes)
    exact = per_class * conflict_fraction
    counts = np.floor(exact).astype(int)
    remaining = int(round(conflict_fraction * len(labels))) - counts.sum()
    order = sorted(range(num_classes), key=lambda c: (-(exact[c] - counts[c]), c))
    for c in order[:max(remaining, 0)]:
        counts[c] += 1
    return np.minimum(counts, per_class)


def assign_biases(labels: np.ndarray, conflict_fraction: float, num_classes: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Bias attribute per sample: aligned (= label) except for conflict_counts() per class,
    whose biases cycle through a random order of the other attributes (even spread)."""
    labels = np.asarray(labels)
    biases = labels.copy()
    counts = conflict_counts(labels, conflict_fraction, num_classes)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=counts[c], replace=False)
        others = rng.permutation([b for b in range(num_classes) if b != c])
        biases[chosen] = others[np.arange(counts[c]) % len(others)]
    return biases


def colorize(gray: np.ndarray, biases: np.ndarray, rng: np.random.Generator,
             colors: np.ndarray = CMNIST_COLORS, std: float = CMNIST_COLOR_STD) -> np.ndarray:
    """Multiply grey strokes (N x H x W, values in [0, 1]) by a per-image colour
    clip(mu_bias + N(0, std^2 I), 0, 1); returns uint8 N x H x W x 3."""
    color = np.clip(colors[biases] + rng.normal(0.0, std, size=(len(biases), 3)), 0.0, 1.0)
    rgb = gray[..., None] * color[:, None, None, :]
    return np.round(rgb * 255.0).clip(0, 255).astype(np.uint8)
