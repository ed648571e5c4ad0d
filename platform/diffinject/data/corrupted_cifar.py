"""Corrupted CIFAR-10 builder (LfF "type 0" protocol, severity 5) from the CIFAR-10 python release."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from diffinject.core.errors import DataError
from diffinject.data.corruptions import CORRUPTIONS, corrupt
from diffinject.data.layout import LabeledImages, write_layout
from diffinject.data.protocol import assign_biases
from diffinject.data.registry import get_dataset_spec, normalize_ratio

UNBIASED = 0.9  # with 10 corruptions, a 90% conflict fraction spreads them uniformly
VALID_SIZE = 5000
SEVERITY = 5
BATCH_DIR = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# Per-image generators are seeded with [seed, split code, index, bias].
TRAIN_CODE, VALID_CODE, TEST_CODE = 0, 1, 2


def download_cifar10(target: Path) -> Path:
    """Fetch CIFAR-10 with torchvision's downloader (needs the network)."""
    from torchvision.datasets import CIFAR10

    from diffinject.data.download import download_torchvision

    return download_torchvision(CIFAR10, target, CIFAR10.url, BATCH_DIR)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch of the python release -> (N x 32 x 32 x 3 uint8, int64 labels)."""
    expected = "a pickled dict with b'data' (N x 3072 uint8) and b'labels' (N ints in 0..9)"
    if not path.is_file():
        raise DataError(f"{path}: CIFAR-10 batch not found; expected the python release "
                        f"({BATCH_DIR}/data_batch_1..5 and test_batch)")
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except Exception as exc:  # unpickling arbitrary bytes can raise almost anything
        raise DataError(f"{path}: unreadable CIFAR-10 batch ({type(exc).__name__}: {exc}); "
                        f"expected {expected}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch; expected {expected}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1
            or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer)
            or labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: got data {data.dtype} {data.shape} and labels {labels.dtype} "
                        f"{labels.shape}; expected {expected}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_cifar10(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the train and test sets from `cifar-10-batches-py` or the folder holding it."""
    folder = Path(folder)
    if (folder / BATCH_DIR).is_dir():
        folder = folder / BATCH_DIR
    out = {}
    for split, names in BATCHES.items():
        batches = [read_batch(folder / name) for name in names]
        out[split] = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return out


def corrupt_images(images: np.ndarray, biases: np.ndarray, indices: np.ndarray, seed: int, split_code: int,
                   progress: bool = False, what: str = "images") -> np.ndarray:
    """Corrupt images[k] with CORRUPTIONS[biases[k]]; each draws from its own generator seeded by
    (seed, split, index, bias), so a result depends neither on the processing order nor on
    the conflict ratio."""
    out = np.empty_like(images)
    step = max(1, len(images) // 10)
    for k, (image, bias, index) in enumerate(zip(images, biases, indices)):
        rng = np.random.default_rng([seed, split_code, int(index), int(bias)])
        out[k] = corrupt(image, CORRUPTIONS[bias], rng, SEVERITY)
        if progress and ((k + 1) % step == 0 or k + 1 == len(images)):
            print(f"{what}: {k + 1}/{len(images)} corrupted", flush=True)
    return out


def corrupted_split(images: np.ndarray, labels: np.ndarray, conflict_fraction: float, prefix: str,
                    split_code: int, seed: int, rng: np.random.Generator, progress: bool,
                    what: str) -> LabeledImages:
    biases = assign_biases(labels, conflict_fraction, 10, rng)
    indices = np.arange(len(labels))
    corrupted = corrupt_images(images, biases, indices, seed, split_code, progress, what)
    return LabeledImages(images=corrupted, labels=labels, biases=biases, ids=[f"{prefix}{i}" for i in indices])


def build_corrupted_cifar10(cifar_dir: Path, data_root: Path, ratios=("0.5", "1", "2", "5"),
                            seed: int = 0, valid_size: int = VALID_SIZE, progress: bool = False) -> Path:
    spec = get_dataset_spec("cifar10c")
    cifar = load_cifar10(cifar_dir)
    images_train, labels_train = cifar["train"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels_train))
    valid_idx, train_idx = order[:valid_size], order[valid_size:]
    valid = corrupted_split(images_train[valid_idx], labels_train[valid_idx], UNBIASED, "v", VALID_CODE, seed,
                            np.random.default_rng(seed + 1), progress, "valid split")
    test_images, test_labels = cifar["test"]
    test = corrupted_split(test_images, test_labels, UNBIASED, "t", TEST_CODE, seed,
                           np.random.default_rng(seed + 2), progress, "test split")
    images, labels = images_train[train_idx], labels_train[train_idx]
    indices = np.arange(len(labels))
    # Every ratio shares the aligned corruptions; only its conflicting samples are redone.
    aligned = corrupt_images(images, labels, indices, seed, TRAIN_CODE, progress, "train split (aligned)")
    for ratio in ratios:
        ratio = normalize_ratio(spec, ratio)
        biases = assign_biases(labels, float(ratio) / 100.0, 10,
                               np.random.default_rng([seed, int(float(ratio) * 10)]))
        conflicting = np.flatnonzero(biases != labels)
        corrupted = aligned.copy()
        corrupted[conflicting] = corrupt_images(images[conflicting], biases[conflicting], conflicting, seed,
                                                TRAIN_CODE, progress, f"train split ({ratio}% conflicting)")
        train = LabeledImages(images=corrupted, labels=labels, biases=biases, ids=[str(i) for i in indices])
        write_layout(data_root, spec, ratio, train, valid, test)
    return Path(data_root) / spec.name
