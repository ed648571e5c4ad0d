"""The synthetic-set quality oracles and metrics (diffinject.stages.quality)."""
from __future__ import annotations

import numpy as np
import pytest

from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.data.parquet import ArraySplit, load_split
from diffinject.data.protocol import CMNIST_COLORS
from diffinject.stages.quality.metrics import labels_of, quality_metrics
from diffinject.stages.quality.oracles import (QualityConfig, colourless, dataset_oracles, group_weights, load_oracles,
                                               oracle_kind, score_with, train_oracles)


@pytest.fixture(scope="module")
def digits_splits(digits_parquet):
    return {split: load_split(digits_parquet, split) for split in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def digit_oracles(digits_splits):
    return dataset_oracles("colored_digits", digits_splits["train"], digits_splits["valid"], seed=0)


def recoloured(images: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """The strokes of colour images (grey x colour) painted in the protocol colours `biases`."""
    grey = images.max(axis=-1).astype(np.float64)
    grey /= grey.max(axis=(1, 2), keepdims=True)
    return np.round(grey[..., None] * CMNIST_COLORS[biases][:, None, None, :] * 255).astype(np.uint8)


def test_quality_metrics_by_hand():
    read_class = [0, 1, 2, 3, 1]
    read_bias = [0, 2, 2, 0, 1]
    labels = [0, 1, 1, 3, 2]   # right: T T F T F; conflicting (read bias != label): F T T T T
    out = quality_metrics(read_class, read_bias, labels, original_labels=[0, 0, 2, 0, 1],
                          content_labels=[1, 1, 1, 3, 2])
    assert out == pytest.approx({"label_fidelity": 3 / 5, "conflict_rate": 4 / 5, "useful_rate": 2 / 5,
                                 "shows_original": 3 / 5, "shows_content": 2 / 5,
                                 # class = original's: T F T F T, and bias != it: F T F T F
                                 "useful_as_original": 0.0,
                                 # class = content's: F T F T F, and bias != it: T T T T T
                                 "useful_as_content": 2 / 5})
    assert set(quality_metrics([1], [1], [1])) == {"label_fidelity", "conflict_rate", "useful_rate"}
    # the same images under either labelling: the first reads as its original's class in another colour
    other = quality_metrics([4, 4], [5, 4], [7, 7], original_labels=[4, 4], content_labels=[7, 7])
    assert other["useful_as_original"] == 0.5 and other["useful_as_content"] == 0.0
    assert other["useful_rate"] == other["useful_as_content"]  # labelled with the content's


def test_labels_of_looks_ids_up():
    assert labels_of(["b", "z", "a"], np.array(["a", "b"], dtype=object), [3, 7]).tolist() == [7, -1, 3]


def test_group_weights_give_every_group_the_same_share():
    labels = np.array([0, 0, 0, 0, 1, 1])
    biases = np.array([0, 0, 0, 1, 1, 0])  # groups (0,0) x3, (0,1) x1, (1,1) x1, (1,0) x1
    w = group_weights(labels, biases)
    assert w == pytest.approx([1 / 12, 1 / 12, 1 / 12, 1 / 4, 1 / 4, 1 / 4])
    assert w.sum() == pytest.approx(1.0)


def test_oracle_kind_registry():
    assert oracle_kind("colored_digits") == oracle_kind("cmnist") == "colour"
    assert {oracle_kind(d) for d in ("cifar10c", "bffhq", "dogs_and_cats")} == {"balanced"}
    with pytest.raises(ConfigError, match="no quality oracle for dataset 'mnist'"):
        oracle_kind("mnist")


def test_colourless_images_do_not_depend_on_the_colour(digits_splits):
    images = digits_splits["valid"].images[:20]
    red, dark_green = recoloured(images, np.zeros(20, int)), recoloured(images, np.full(20, 8))
    a, b = colourless(red), colourless(dark_green)
    assert a.shape == (20, 1, 28, 28) and float(a.amax()) == pytest.approx(1.0)
    assert float((a - b).abs().max()) < 0.02  # uint8 rounding of the darker colour only


def test_colour_blind_reader_reads_a_digit_the_same_in_every_colour(digit_oracles, digits_splits):
    images = digits_splits["test"].images[:100]
    reads = np.stack([digit_oracles.class_reader.read(recoloured(images, np.full(100, c))) for c in range(10)])
    assert (reads == reads[0]).mean() >= 0.98
    assert [digit_oracles.bias_reader.read(recoloured(images[:5], np.full(5, c))).tolist() for c in range(10)] == \
        [[c] * 5 for c in range(10)]


def test_oracles_are_accurate_on_held_out_digits_and_deterministic(digit_oracles, digits_splits, tmp_path):
    acc = digit_oracles.accuracy
    assert acc["class_oracle_acc"] > 0.9 and acc["bias_oracle_acc"] > 0.95
    assert acc["class_oracle_conflicting_acc"] > 0.9 and acc["bias_oracle_conflicting_acc"] > 0.95
    again = load_oracles(digit_oracles.save(tmp_path / "oracles.pt"))
    test = digits_splits["test"].images
    assert again.accuracy == acc
    for a, b in zip(again.read(test), digit_oracles.read(test)):
        assert np.array_equal(a, b)


def test_report_on_a_set_built_with_known_fidelity_and_conflict(digit_oracles, digits_splits):
    """Real held-out digits, 30% relabelled to a wrong class, 40% recoloured to conflict with
    their (new) label: the report finds 0.7 and 0.4 within the oracles' measured error."""
    train, test = digits_splits["train"], digits_splits["test"]
    rng = np.random.default_rng(5)
    n = len(test)
    wrong = np.zeros(n, bool)
    wrong[rng.choice(n, size=int(0.3 * n), replace=False)] = True
    labels = np.where(wrong, (test.labels + rng.integers(1, 10, n)) % 10, test.labels)
    conflicting = np.zeros(n, bool)
    conflicting[rng.choice(n, size=int(0.4 * n), replace=False)] = True
    biases = np.where(conflicting, (labels + rng.integers(1, 10, n)) % 10, labels)
    synthetic = ArraySplit(recoloured(test.images, biases), labels, biases, np.arange(n).astype(str))
    # provenance: an original showing the true digit, a content of the given label (training ids)
    first_of = {c: train.ids[np.flatnonzero(train.labels == c)[0]] for c in range(10)}
    report = score_with(digit_oracles, train, synthetic, [first_of[c] for c in test.labels],
                        [first_of[c] for c in labels])
    class_error = 1 - report["class_oracle_acc"]
    bias_error = 1 - report["bias_oracle_acc"]
    assert report["class_oracle_acc"] > 0.9
    assert abs(report["label_fidelity"] - 0.7) <= class_error + 0.02
    assert abs(report["conflict_rate"] - 0.4) <= bias_error + 0.02
    assert abs(report["useful_rate"] - np.mean(~wrong & conflicting)) <= class_error + bias_error + 0.02
    assert abs(report["shows_original"] - 1.0) <= class_error + 0.02
    assert report["shows_content"] == pytest.approx(report["label_fidelity"])


def bars(labels: np.ndarray, biases: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """16 x 16 images: a vertical (class 0) or horizontal (class 1) bar at a random place on a
    red (bias 0) or blue (bias 1) background, with noise."""
    n = len(labels)
    images = rng.uniform(0, 40, size=(n, 16, 16, 3))
    images[biases == 0, :, :, 0] += 150
    images[biases == 1, :, :, 2] += 150
    for i, (label, at) in enumerate(zip(labels, rng.integers(2, 12, n))):
        if label == 0:
            images[i, 2:14, at:at + 2] = 255
        else:
            images[i, at:at + 2, 2:14] = 255
    return images.clip(0, 255).astype(np.uint8)


def made_up_split(n_aligned: int, n_conflicting: int, rng: np.random.Generator) -> ArraySplit:
    labels = rng.integers(0, 2, n_aligned + n_conflicting)
    biases = labels.copy()
    biases[n_aligned:] = 1 - biases[n_aligned:]
    return ArraySplit(bars(labels, biases, rng), labels, biases, np.arange(len(labels)).astype(str))


def test_balanced_oracles_learn_both_attributes_from_a_biased_split():
    rng = np.random.default_rng(0)
    train, valid = made_up_split(190, 10, rng), made_up_split(40, 40, rng)
    config = QualityConfig(balanced_steps=100, batch_size=32, image_size=16)
    oracles = train_oracles("balanced", train, valid, 2, 2, config, seed=0)
    acc = oracles.accuracy
    assert set(acc) == {"class_oracle_acc", "bias_oracle_acc", "class_oracle_conflicting_acc",
                        "bias_oracle_conflicting_acc"}
    assert acc["class_oracle_conflicting_acc"] > 0.9 and acc["bias_oracle_conflicting_acc"] > 0.9
    assert train_oracles("balanced", train, valid, 2, 2, config, seed=0).accuracy == acc


def test_unreadable_or_foreign_oracle_file_is_a_checkpoint_error(tmp_path):
    import torch

    path = tmp_path / "oracles.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="oracles.pt"):
        load_oracles(path)
    torch.save({"kind": "colour"}, path)
    with pytest.raises(CheckpointError, match="not an oracle file"):
        load_oracles(path)
