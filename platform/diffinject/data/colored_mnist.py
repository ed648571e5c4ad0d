"""Colored MNIST builder (LfF protocol) from MNIST IDX files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffinject.data.idx import find_idx, read_idx
from diffinject.data.layout import LabeledImages, write_ratio, write_shared_splits
from diffinject.data.protocol import assign_biases, colorize
from diffinject.data.registry import get_dataset_spec, normalize_ratio

UNBIASED = 0.9  # with 10 colours, a 90% conflict fraction spreads colours uniformly
VALID_SIZE = 5000


def download_mnist(target: Path) -> Path:
    """Fetch MNIST with torchvision's downloader (needs the network)."""
    from torchvision.datasets import MNIST

    from diffinject.data.download import download_torchvision

    return download_torchvision(MNIST, target, MNIST.mirrors[0], "the MNIST IDX files")


def load_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
        if (images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1
                or len(images) != len(labels)):
            from diffinject.core.errors import DataError
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


def write_colored_dataset(spec_name: str, train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
                          test: tuple[np.ndarray, np.ndarray], data_root: Path, ratios, seed: int,
                          shared: bool = True) -> Path:
    """Colour (grey in [0, 1], labels) splits by the protocol and write every ratio: valid and
    test unbiased and shared by all ratios, train at each ratio's conflict fraction. With
    `shared` False the shared test split is left as it is (only the ratio folders are written)."""
    spec = get_dataset_spec(spec_name)
    valid_split = colored_split(*valid, UNBIASED, "v", np.random.default_rng(seed + 1))
    test_split = colored_split(*test, UNBIASED, "t", np.random.default_rng(seed + 2))
    for ratio in ratios:
        ratio = normalize_ratio(spec, ratio)
        train_split = colored_split(*train, float(ratio) / 100.0, "",
                                    np.random.default_rng([seed, int(float(ratio) * 10)]))
        write_ratio(data_root, spec, ratio, train_split, valid_split)
    if shared:
        write_shared_splits(data_root, spec, valid_split, test_split)
    return Path(data_root) / spec.name


def build_colored_mnist(mnist_dir: Path, data_root: Path, ratios=("0.5", "1", "2", "5"),
                        seed: int = 0, valid_size: int = VALID_SIZE) -> Path:
    mnist = load_mnist(mnist_dir)
    gray_train, labels_train = mnist["train"]
    order = np.random.default_rng(seed).permutation(len(labels_train))
    valid_idx, train_idx = order[:valid_size], order[valid_size:]
    gray = gray_train.astype(np.float64) / 255.0
    test_gray, test_labels = mnist["test"]
    return write_colored_dataset("cmnist", (gray[train_idx], labels_train[train_idx]),
                                 (gray[valid_idx], labels_train[valid_idx]),
                                 (test_gray.astype(np.float64) / 255.0, test_labels), data_root, ratios, seed)
