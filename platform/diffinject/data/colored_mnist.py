"""Colored MNIST builder (LfF protocol) from MNIST IDX files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .idx import find_idx, read_idx
from .layout import LabeledImages, write_layout
from .protocol import assign_biases, colorize
from .registry import get_dataset_spec, normalize_ratio

UNBIASED = 0.9  # with 10 colours, a 90% conflict fraction spreads colours uniformly
VALID_SIZE = 5000


def download_mnist(target: Path) -> Path:
    """Fetch MNIST with torchvision's downloader (needs the network)."""
    from torchvision.datasets import MNIST

    MNIST(str(target), train=True, download=True)
    MNIST(str(target), train=False, download=True)
    return Path(target)


def load_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
        if (images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1
                or len(images) != len(labels)):
            from ..errors import DataError
            raise DataError(f"{folder}: MNIST {prefix} images {images.shape} and labels {labels.shape} "
                            "do not match (expected N x 28 x 28 and N)")
        out[split] = (images, labels.astype(np.int64))
    return out


def colored_split(gray: np.ndarray, labels: np.ndarray, conflict_fraction: float, prefix: str,
                  rng: np.random.Generator) -> LabeledImages:
    biases = assign_biases(labels, conflict_fraction, 10, rng)
    images = colorize(gray, biases, rng)
    return LabeledImages(images=images, labels=labels, biases=biases,
                         ids=[f"{prefix}{i}" for i in range(len(labels))])


def build_colored_mnist(mnist_dir: Path, data_root: Path, ratios=("0.5", "1", "2", "5"),
                        seed: int = 0, valid_size: int = VALID_SIZE) -> Path:
    spec = get_dataset_spec("cmnist")
    mnist = load_mnist(mnist_dir)
    gray_train, labels_train = mnist["train"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels_train))
    valid_idx, train_idx = order[:valid_size], order[valid_size:]
    gray = gray_train.astype(np.float64) / 255.0
    valid = colored_split(gray[valid_idx], labels_train[valid_idx], UNBIASED, "v", np.random.default_rng(seed + 1))
    test_gray, test_labels = mnist["test"]
    test = colored_split(test_gray.astype(np.float64) / 255.0, test_labels, UNBIASED, "t",
                         np.random.default_rng(seed + 2))
    for ratio in ratios:
        ratio = normalize_ratio(spec, ratio)
        train = colored_split(gray[train_idx], labels_train[train_idx], float(ratio) / 100.0, "",
                              np.random.default_rng([seed, int(float(ratio) * 10)]))
        write_layout(data_root, spec, ratio, train, valid, test)
    return Path(data_root) / spec.name
