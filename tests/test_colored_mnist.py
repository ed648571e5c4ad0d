"""Colored MNIST builder on tiny hand-written IDX files, and the IDX reader's errors."""
from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from diffinject.core.errors import DataError
from diffinject.data.colored_mnist import build_colored_mnist, load_mnist
from diffinject.data.idx import read_idx
from diffinject.data.layout import load_image, read_layout
from diffinject.data.protocol import CMNIST_COLOR_STD, CMNIST_COLORS, conflict_counts
from diffinject.data.registry import get_dataset_spec

N_TRAIN, N_TEST, VALID = 300, 100, 50
RATIOS = ("1", "5")
SPEC = get_dataset_spec("cmnist")


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x00000803 if array.ndim == 3 else 0x00000801  # uint8, ndim dimensions
    assert magic & 0xFF == array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def stroke_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random strokes: values 0 or in 64..255, every image with several full-intensity pixels
    and a distinct support (so that a coloured image can be traced back to its source)."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        for _ in range(3):
            r0, c0 = rng.integers(4, 24, size=2)
            dr, dc = rng.integers(-1, 2, size=2)
            for step in range(int(rng.integers(5, 12))):
                r, c = np.clip([r0 + dr * step, c0 + dc * step], 0, 27)
                images[i, r, c] = rng.integers(64, 256)
        spots = rng.integers(0, 28, size=(3, 2))
        images[i, spots[:, 0], spots[:, 1]] = 255
    return images


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.uint8)


def write_mnist(folder: Path, train_images, train_labels, test_images, test_labels, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": train_images, "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": test_images, "t10k-labels-idx1-ubyte": test_labels,
    }
    for name, array in files.items():
        data = idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(123)
    return {"train": (stroke_images(N_TRAIN, rng), balanced_labels(N_TRAIN, rng)),
            "test": (stroke_images(N_TEST, rng), balanced_labels(N_TEST, rng))}


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    root = tmp_path_factory.mktemp("cmnist")
    src = write_mnist(root / "mnist", *source["train"], *source["test"])
    data_root = root / "data"
    out = build_colored_mnist(src, data_root, ratios=RATIOS, valid_size=VALID)
    assert out == data_root / "cmnist"
    return data_root


def support_key(mask: np.ndarray) -> bytes:
    return np.packbits(mask).tobytes()


def trace(source_images: np.ndarray):
    """Map the support (non-zero pixels) of a coloured image to its source index."""
    keys = {support_key(img > 0): i for i, img in enumerate(source_images)}
    assert len(keys) == len(source_images), "synthetic source images must have distinct supports"
    return keys


def decoded(records):
    out = []
    for r in records:
        out.append((r, load_image(r.path, SPEC, (28, 28))))
    return out


def test_idx_writer_matches_reader(tmp_path, source):
    images, labels = source["train"]
    (tmp_path / "imgs").write_bytes(idx_bytes(images))
    raw = (tmp_path / "imgs").read_bytes()
    assert raw[:4] == bytes.fromhex("00000803")
    np.testing.assert_array_equal(read_idx(tmp_path / "imgs"), images)
    (tmp_path / "labels.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz"), labels)


def test_build_counts_and_protocol(built, source):
    src_train_images, src_train_labels = source["train"]
    src_test_images, src_test_labels = source["test"]
    train_keys, test_keys = trace(src_train_images), trace(src_test_images)

    valid_sources = None
    train_sources = None
    colour_errors = {}  # path -> full-intensity RGB / 255 - mu_bias
    for ratio in RATIOS:
        index = read_layout(built, SPEC, ratio)
        assert [len(index.splits[s]) for s in ("train", "valid", "test")] == [N_TRAIN - VALID, VALID, N_TEST]

        # every file traces back to its own source image with the same label
        used = {}
        for split, keys, src_images, src_labels in (
                ("train", train_keys, src_train_images, src_train_labels),
                ("valid", train_keys, src_train_images, src_train_labels),
                ("test", test_keys, src_test_images, src_test_labels)):
            used[split] = set()
            for record, image in decoded(index.splits[split]):
                colour = image.reshape(-1, 3).max(axis=0).astype(float) / 255.0
                strongest = int(np.argmax(CMNIST_COLORS[record.bias]))
                i = keys[support_key(image[..., strongest] > 0)]
                assert record.label == src_labels[i], record.path
                used[split].add(i)
                # full-intensity pixels carry the image's colour: mu_bias within 4 sigma
                full = src_images[i] == 255
                assert full.any()
                np.testing.assert_array_equal(image[full], np.broadcast_to(image[full][0], image[full].shape))
                colour_errors[record.path] = image[full][0] / 255.0 - CMNIST_COLORS[record.bias]
                assert np.all(np.abs(colour_errors[record.path]) <= 4 * CMNIST_COLOR_STD + 1 / 255), record.path
                # the whole stroke is the grey image times that colour
                expected = np.round(src_images[i][..., None].astype(float) * colour)
                assert np.abs(image.astype(int) - expected).max() <= 1, record.path
            assert len(used[split]) == len(index.splits[split])
        assert not used["train"] & used["valid"]
        assert used["train"] | used["valid"] == set(range(N_TRAIN))
        assert used["test"] == set(range(N_TEST))
        # valid (and so train) is the same at every ratio
        valid_sources = valid_sources or used["valid"]
        train_sources = train_sources or used["train"]
        assert used["valid"] == valid_sources and used["train"] == train_sources

        counts = index.counts()
        train_labels = np.array([r.label for r in index.splits["train"]])
        valid_labels = np.array([r.label for r in index.splits["valid"]])
        # per-class totals: source train minus valid
        np.testing.assert_array_equal(
            np.bincount(train_labels, minlength=10),
            np.bincount(src_train_labels, minlength=10) - np.bincount(valid_labels, minlength=10))
        expected_conflicting = conflict_counts(train_labels, float(ratio) / 100.0, 10)
        assert [counts["train"][c][1] for c in range(10)] == expected_conflicting.tolist()
        assert sum(counts["train"][c][1] for c in range(10)) == round(float(ratio) / 100 * (N_TRAIN - VALID))

        # conflicting biases of a class spread evenly over the 9 other colours
        for c in range(10):
            spread = Counter(r.bias for r in index.splits["train"] if r.label == c and not r.aligned)
            per_other = [spread.get(b, 0) for b in range(10) if b != c]
            assert max(per_other) - min(per_other) <= 1, (ratio, c, spread)

        # valid and test are unbiased: each colour equally often per class (+-1)
        for split in ("valid", "test"):
            for c in range(10):
                colours = Counter(r.bias for r in index.splits[split] if r.label == c)
                per_colour = [colours.get(b, 0) for b in range(10)]
                assert max(per_colour) - min(per_colour) <= 1, (split, c, per_colour)
        # balanced test of 10 per class: every colour exactly once
        assert all(counts["test"][c] == (1, 9) for c in range(10))

    # the colour noise is N(0, sigma^2) per image: unbiased, with standard deviation sigma
    # (plus the uniform rounding error of 1/255 / sqrt(12))
    errors = np.array(list(colour_errors.values()))
    assert len(errors) == len(RATIOS) * N_TRAIN + N_TEST  # valid lives in each ratio folder
    assert np.all(np.abs(errors.mean(axis=0)) < 0.001), errors.mean(axis=0)
    assert np.all((errors.std(axis=0) > 0.8 * CMNIST_COLOR_STD) & (errors.std(axis=0) < 1.3 * CMNIST_COLOR_STD))


def test_gzip_source_gives_the_same_dataset(built, source, tmp_path):
    src = write_mnist(tmp_path / "mnist_gz", *source["train"], *source["test"], gz=True)
    assert sorted(p.name for p in src.iterdir()) == sorted(
        f"{n}.gz" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    build_colored_mnist(src, tmp_path / "data", ratios=("1",), valid_size=VALID)
    a, b = read_layout(built, SPEC, "1"), read_layout(tmp_path / "data", SPEC, "1")
    for split in ("train", "valid", "test"):
        ra = sorted(a.splits[split], key=lambda r: r.path.name)
        rb = sorted(b.splits[split], key=lambda r: r.path.name)
        assert [r.path.relative_to(built) for r in ra] == [r.path.relative_to(tmp_path / "data") for r in rb]
        for x, y in zip(ra, rb):
            np.testing.assert_array_equal(load_image(x.path, SPEC), load_image(y.path, SPEC))


def test_load_mnist_in_torchvision_layout(source, tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", *source["train"], *source["test"])
    mnist = load_mnist(tmp_path)
    np.testing.assert_array_equal(mnist["train"][0], source["train"][0])
    np.testing.assert_array_equal(mnist["test"][1], source["test"][1])
    assert mnist["train"][1].dtype == np.int64


def test_read_idx_truncated(tmp_path, source):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(source["train"][0])[:-10])
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(path)
    assert str(path) in str(err.value)
    # truncated inside the header
    path.write_bytes(idx_bytes(source["train"][0])[:9])
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    # truncated gzip stream
    gz = tmp_path / "labels.gz"
    gz.write_bytes(gzip.compress(idx_bytes(source["train"][1]))[:-20])
    with pytest.raises(DataError) as err:
        read_idx(gz)
    assert str(gz) in str(err.value)


def test_read_idx_bad_magic(tmp_path, source):
    path = tmp_path / "labels"
    data = bytearray(idx_bytes(source["train"][1]))
    data[0] = 0x12
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="magic") as err:
        read_idx(path)
    assert str(path) in str(err.value)
    data[0], data[2] = 0, 0x42  # unknown type code
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="magic") as err:
        read_idx(path)
    assert str(path) in str(err.value)
    # a PNG or any other file is not an IDX file
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="magic"):
        read_idx(path)


def test_load_mnist_missing_files(tmp_path, source):
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as err:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(err.value)
    write_mnist(tmp_path, *source["train"], *source["test"])
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_load_mnist_mismatched_lengths(tmp_path, source):
    images, labels = source["train"]
    write_mnist(tmp_path, images, labels[:-1], *source["test"])
    with pytest.raises(DataError, match="do not match"):
        load_mnist(tmp_path)


def test_read_idx_corrupt_gzip_body(tmp_path, source):
    """A damaged download (valid gzip header, garbled deflate stream) is a DataError too."""
    gz = tmp_path / "train-labels-idx1-ubyte.gz"
    data = bytearray(gzip.compress(idx_bytes(source["train"][1])))
    for i in range(12, len(data) - 8):
        data[i] ^= 0x5A
    gz.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        read_idx(gz)
    assert str(gz) in str(err.value)


def test_load_mnist_rejects_images_that_are_not_28x28(tmp_path, source):
    images, labels = source["train"]
    write_mnist(tmp_path, images[:, 2:26, 2:26], labels, *source["test"])
    with pytest.raises(DataError, match="28 x 28") as err:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(err.value)
