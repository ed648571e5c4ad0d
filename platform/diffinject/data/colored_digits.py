"""Colored Digits' grey digits: scikit-learn's bundled 8x8 digits, upscaled to 28x28 (the
embedded stand-in for Colored MNIST the fast tests use; built by data/embedded.py)."""
from __future__ import annotations

import numpy as np
from PIL import Image


def upscaled_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as float grey images in [0, 1], 28x28 with a 4-pixel border like MNIST."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.zeros((len(digits.images), 28, 28))
    for i, img in enumerate(digits.images):
        small = Image.fromarray((img / 16.0 * 255.0).astype(np.uint8))
        gray[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR)) / 255.0
    return gray, digits.target.astype(np.int64)
