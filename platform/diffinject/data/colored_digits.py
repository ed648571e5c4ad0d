"""Colored Digits: scikit-learn's bundled 8x8 digits, upscaled to 28x28 and coloured with
the Colored MNIST protocol. The embedded, offline stand-in for Colored MNIST."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .colored_mnist import write_colored_dataset

TEST_PER_CLASS = 40
VALID_SIZE = 197


def upscaled_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as float grey images in [0, 1], 28x28 with a 4-pixel border like MNIST."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.zeros((len(digits.images), 28, 28))
    for i, img in enumerate(digits.images):
        small = Image.fromarray((img / 16.0 * 255.0).astype(np.uint8))
        gray[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR)) / 255.0
    return gray, digits.target.astype(np.int64)


def build_colored_digits(data_root: Path, ratios=("0.5", "1", "2", "5"), seed: int = 0) -> Path:
    """Train 1,200 / valid 197 / test 400 (unbiased: each colour 4 times per class)."""
    gray, labels = upscaled_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    test_idx = np.concatenate([order[labels[order] == c][:TEST_PER_CLASS] for c in range(10)])
    rest = np.setdiff1d(order, test_idx, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    valid_idx, train_idx = rest[:VALID_SIZE], rest[VALID_SIZE:]

    return write_colored_dataset("colored_digits", (gray[train_idx], labels[train_idx]),
                                 (gray[valid_idx], labels[valid_idx]), (gray[test_idx], labels[test_idx]),
                                 data_root, ratios, seed)
