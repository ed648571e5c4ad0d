"""Corrupted CIFAR-10: the ten corruptions, the CIFAR-10 reader and the builder on a fake release."""
from __future__ import annotations

import importlib.util
import pickle
from collections import Counter
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from diffinject.core.errors import DataError
from diffinject.data import corruptions
from diffinject.data.corrupted_cifar import TEST_CODE, build_corrupted_cifar10, load_cifar10
from diffinject.data.corruptions import CORRUPTIONS, corrupt, rgb_to_hsv
from diffinject.data.layout import load_image, read_layout
from diffinject.data.protocol import conflict_counts
from diffinject.data.registry import get_dataset_spec

HAVE_FROST = importlib.util.find_spec("imagecorruptions") is not None


@pytest.fixture
def frost(monkeypatch):
    """The real frost textures when imagecorruptions is installed, synthetic ones otherwise."""
    if not HAVE_FROST:
        rng = np.random.default_rng(0)
        fake = tuple(rng.integers(0, 256, (70, 110, 3), dtype=np.uint8) for _ in corruptions.FROST_FILES)
        monkeypatch.setattr(corruptions, "frost_textures", lambda: fake)


def make_image(seed: int = 0) -> np.ndarray:
    """A colourful 32x32 image (gradients, a square, noise) with values in 40..180."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    image = np.stack([40 + 4 * xx, 40 + 4 * yy, 180 - 2 * (xx + yy)], axis=-1).astype(float)
    image[8:20, 10:24] = rng.uniform(40, 180, 3)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 40, 180).astype(np.uint8)


def run(name: str, image: np.ndarray, seed: int = 0) -> np.ndarray:
    return corrupt(image, name, np.random.default_rng(seed))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_changes_image_deterministically(name, frost):
    image = make_image()
    out = run(name, image)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - image).max() > 10
    np.testing.assert_array_equal(out, run(name, image))


def test_brightness_raises_value_channel():
    image = make_image()
    value_in = rgb_to_hsv(image / 255.0)[..., 2]
    value_out = rgb_to_hsv(run("brightness", image) / 255.0)[..., 2]
    np.testing.assert_allclose(value_out, np.minimum(value_in + 0.3, 1.0), atol=1.01 / 255)


def test_saturate_raises_saturation():
    image = make_image()
    sat_in = rgb_to_hsv(image / 255.0)[..., 1]
    sat_out = rgb_to_hsv(run("saturate", image) / 255.0)[..., 1]
    assert sat_out.mean() > sat_in.mean() + 0.2
    np.testing.assert_allclose(sat_out, np.clip(sat_in * 2.5 + 0.2, 0, 1), atol=0.03)


def test_contrast_shrinks_towards_channel_mean():
    image = make_image()
    out = run("contrast", image).astype(float)
    mean = image.mean(axis=(0, 1))
    np.testing.assert_allclose(out, (image - mean) * 0.15 + mean, atol=1.0)
    assert out.std() < 0.2 * image.std()


def test_jpeg_is_pil_round_trip_at_quality_40():
    image = make_image()
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=40)
    np.testing.assert_array_equal(run("jpeg_compression", image), np.asarray(Image.open(buffer).convert("RGB")))


def test_pixelate_is_piecewise_constant_in_20_blocks():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = run("pixelate", image)
    col_steps = np.any(out[:, 1:] != out[:, :-1], axis=(0, 2)).sum()
    row_steps = np.any(out[1:] != out[:-1], axis=(1, 2)).sum()
    assert col_steps == row_steps == int(32 * 0.65) - 1


def test_snow_and_frost_only_lighten(frost):
    image = make_image()
    assert (run("snow", image).astype(int) >= image.astype(int) - 1).all()
    assert (run("frost", image) >= np.floor(0.75 * image)).all()


def test_fog_is_scaled_image_plus_fractal():
    image = make_image()
    out = run("fog", image).astype(float)
    scale = (image.max() / 255.0) / (image.max() / 255.0 + 1.5)
    assert (out >= np.floor(image * scale)).all()
    assert (out <= (image + 1.5 * 255) * scale + 1).all()


def test_spatter_blends_towards_mud_brown():
    image = make_image()
    out = run("spatter", image).astype(float)
    mud = corruptions.MUD_BROWN * 255
    changed = np.abs(out - image).max(axis=-1) > 1
    assert changed.any() and not changed.all()
    assert (np.abs(out - mud)[changed] <= 0.2 * np.abs(image - mud)[changed] + 1).all()


def test_elastic_moves_pixels_without_recolouring():
    image = make_image()
    out = run("elastic_transform", image)
    assert abs(out.mean() - image.mean()) < 5


def test_bad_arguments_raise_value_error():
    image = make_image()
    with pytest.raises(ValueError, match="'blur'.*snow, frost"):
        run("blur", image)
    with pytest.raises(ValueError, match="severity 6"):
        corrupt(image, "fog", np.random.default_rng(0), severity=6)
    with pytest.raises(ValueError, match="spatter severity 2"):
        corrupt(image, "spatter", np.random.default_rng(0), severity=2)
    with pytest.raises(ValueError, match=r"\(28, 28, 3\)"):
        run("fog", image[:28, :28])


def test_frost_without_textures_says_how_to_install(monkeypatch):
    corruptions.frost_textures.cache_clear()
    monkeypatch.setattr(corruptions.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(DataError, match="pip install --no-deps imagecorruptions==1.1.2"):
            run("frost", make_image())
    finally:
        corruptions.frost_textures.cache_clear()


def write_batch(path, images: np.ndarray, labels) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    with open(path, "wb") as handle:
        pickle.dump({b"data": data, b"labels": [int(v) for v in labels]}, handle)


@pytest.fixture
def cifar(tmp_path):
    """A fake python release: 5 x 60 training and 40 test images of noisy shapes."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = [], []
    for i in range(1, 6):
        labels = rng.integers(0, 10, 60)
        images = np.stack([make_image(int(rng.integers(1 << 30))) for _ in labels])
        write_batch(folder / f"data_batch_{i}", images, labels)
        train[0].append(images)
        train[1].append(labels)
    test_labels = rng.permutation(np.arange(40) % 10)
    test_images = np.stack([make_image(int(rng.integers(1 << 30))) for _ in test_labels])
    write_batch(folder / "test_batch", test_images, test_labels)
    return folder, (np.concatenate(train[0]), np.concatenate(train[1])), (test_images, test_labels)


def test_load_cifar10_reads_either_folder(cifar):
    folder, (images, labels), (test_images, test_labels) = cifar
    for where in (folder, folder.parent):
        data = load_cifar10(where)
        np.testing.assert_array_equal(data["train"][0], images)
        np.testing.assert_array_equal(data["train"][1], labels)
        np.testing.assert_array_equal(data["test"][0], test_images)
        assert data["test"][1].dtype == np.int64


@pytest.mark.parametrize("content", [b"not a pickle", pickle.dumps({b"data": np.zeros((3, 10), np.uint8),
                                                                     b"labels": [0, 1, 2]})])
def test_malformed_batch_is_a_data_error(cifar, content):
    folder = cifar[0]
    (folder / "data_batch_3").write_bytes(content)
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(folder)


def test_missing_batch_is_a_data_error(cifar):
    (cifar[0] / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch.*not found"):
        load_cifar10(cifar[0])


def test_build_matches_protocol(cifar, frost, tmp_path, capsys):
    folder, (images, labels), (test_images, test_labels) = cifar
    spec = get_dataset_spec("cifar10c")
    root = build_corrupted_cifar10(folder.parent, tmp_path / "data", ratios=("1", "5"), seed=3,
                                   valid_size=40, progress=True)
    assert root == tmp_path / "data" / "cifar10c"
    assert "test split: 40/40 corrupted" in capsys.readouterr().out

    index = read_layout(tmp_path / "data", spec, "5")
    fractions = {"train": 0.05, "valid": 0.9, "test": 0.9}
    for split, records in index.splits.items():
        split_labels = np.array([r.label for r in records])
        expected = conflict_counts(split_labels, fractions[split], 10)
        per_class = np.bincount(split_labels, minlength=10)
        assert index.counts()[split] == {c: (per_class[c] - expected[c], expected[c]) for c in range(10)}
    assert [len(index.splits[s]) for s in ("train", "valid", "test")] == [260, 40, 40]
    assert Counter(r.label for s in ("train", "valid") for r in index.splits[s]) == Counter(labels.tolist())
    assert {r.id for r in index.splits["test"]} == {f"t{i}" for i in range(40)}

    for record in index.splits["test"][:5]:
        i = int(record.id[1:])
        assert record.label == test_labels[i]
        rng = np.random.default_rng([3, TEST_CODE, i, record.bias])
        np.testing.assert_array_equal(load_image(record.path, spec),
                                      corrupt(test_images[i], CORRUPTIONS[record.bias], rng))

    # A training image with the same bias at another ratio is corrupted identically.
    other = {(r.id, r.bias): r.path for r in read_layout(tmp_path / "data", spec, "1").splits["train"]}
    shared = [(r, other[(r.id, r.bias)]) for r in index.splits["train"] if (r.id, r.bias) in other]
    assert len(shared) > 200
    for record, path in shared[:20]:
        np.testing.assert_array_equal(load_image(record.path, spec), load_image(path, spec))
