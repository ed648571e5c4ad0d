"""Colored Digits: scikit-learn's bundled 8x8 digits, upscaled to 28x28 and coloured with
the Colored MNIST protocol. The embedded, offline stand-in for Colored MNIST.

A build records its seed in `colored_digits/build.json`: a ratio folder (or the test split)
found missing later is built with that seed, so that it has the same train/valid/test
partition as the folders already there, which are left untouched.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import read_json, write_json
from ..errors import DataError
from .colored_mnist import write_colored_dataset
from .registry import ratio_folder

TEST_PER_CLASS = 40
VALID_SIZE = 197
BUILD_RECORD = "build.json"


def upscaled_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as float grey images in [0, 1], 28x28 with a 4-pixel border like MNIST."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.zeros((len(digits.images), 28, 28))
    for i, img in enumerate(digits.images):
        small = Image.fromarray((img / 16.0 * 255.0).astype(np.uint8))
        gray[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR)) / 255.0
    return gray, digits.target.astype(np.int64)


def build_colored_digits(data_root: Path, ratios=("0.5", "1", "2", "5"), seed: int = 0,
                         shared: bool = True) -> Path:
    """Train 1,200 / valid 197 / test 400 (unbiased: each colour 4 times per class). With
    `shared` False the test split is not written (it exists, from the same seed)."""
    gray, labels = upscaled_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    test_idx = np.concatenate([order[labels[order] == c][:TEST_PER_CLASS] for c in range(10)])
    rest = np.setdiff1d(order, test_idx, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    valid_idx, train_idx = rest[:VALID_SIZE], rest[VALID_SIZE:]

    base = write_colored_dataset("colored_digits", (gray[train_idx], labels[train_idx]),
                                 (gray[valid_idx], labels[valid_idx]), (gray[test_idx], labels[test_idx]),
                                 data_root, ratios, seed, shared)
    write_json(base / BUILD_RECORD, {"dataset": "colored_digits", "seed": int(seed)})
    return base


def build_missing_colored_digits(data_root: Path, ratio: str) -> None:
    """Build the ratio folder and the test split of Colored Digits where they are missing, with
    the seed of the build already there (one printed line says so); nothing else is written."""
    from ..artifacts import file_lock

    base = Path(data_root) / "colored_digits"
    with file_lock(Path(data_root) / ".colored_digits.lock"):  # concurrent cells build it once
        missing = [name for name in (ratio_folder(ratio), "test") if not (base / name).is_dir()]
        if not missing:
            return
        record = read_json(base / BUILD_RECORD)
        if record is not None and isinstance(record.get("seed"), int):
            seed, why = record["seed"], f"the seed {BUILD_RECORD} records"
        elif not base.is_dir() or not any(p.name.endswith("pct") or p.name == "test" for p in base.iterdir()):
            seed, why = 0, None
        else:
            raise DataError(f"{base}: {', '.join(missing)} missing, and no {BUILD_RECORD} says which seed built the "
                            f"rest; rebuild it with `diffinject data build colored_digits --seed N` (every ratio)")
        if why is None:
            print(f"colored_digits: building {' and '.join(missing)} in {base} (a new build, seed 0)", flush=True)
        else:
            print(f"colored_digits: building the missing {' and '.join(missing)} in {base} with seed {seed} ({why})",
                  flush=True)
        build_colored_digits(data_root, ratios=[ratio] if ratio_folder(ratio) in missing else [], seed=seed,
                             shared="test" in missing)
