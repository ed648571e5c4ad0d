"""The released DisEnt/BiasEnsemble layout: writing, reading back and every validation error."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffinject.core.errors import DataError
from diffinject.data.layout import (LabeledImages, load_image, parse_sample_filename, read_layout, sample_filename,
                                    split_dirs, write_layout)
from diffinject.data.registry import DATASETS, get_dataset_spec

SIZES = {"cmnist": (28, 28), "cifar10c": (32, 32), "colored_digits": (28, 28), "colored_mnist_5k": (28, 28),
         "bffhq": (12, 10), "dogs_and_cats": (9, 7)}  # (height, width) for image_size=None specs


def make_split(spec, prefix: str, per_class_aligned: int, per_class_conflicting: int, seed: int,
               size: tuple[int, int]) -> LabeledImages:
    rng = np.random.default_rng(seed)
    labels, biases, ids = [], [], []
    for c in range(spec.num_classes):
        for k in range(per_class_aligned):
            labels.append(c), biases.append(c), ids.append(f"{prefix}a_{c}_{k}")
        for k in range(per_class_conflicting):
            labels.append(c), biases.append((c + 1 + k) % spec.num_biases), ids.append(f"{prefix}c{c}x{k}")
    images = rng.integers(0, 256, size=(len(labels), *size, 3), dtype=np.uint8)
    return LabeledImages(images=images, labels=np.array(labels), biases=np.array(biases), ids=ids)


def write_tiny(root: Path, name: str, ratio: str = "1"):
    spec = get_dataset_spec(name)
    size = SIZES[name]
    train = make_split(spec, "", 2, 1, 0, size)
    valid = make_split(spec, "v", 1, 1, 1, size)
    test = make_split(spec, "t", 1, 1, 2, size)
    write_layout(root, spec, ratio, train, valid, test)
    return spec, {"train": train, "valid": valid, "test": test}


@pytest.fixture
def tiny(tmp_path):
    spec, _ = write_tiny(tmp_path, "cmnist")
    return tmp_path, spec, split_dirs(tmp_path, spec, "1")


def save_png(path: Path, label: int, bias: int, size=(28, 28), sample_id: str = "extra") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    target = path / sample_filename(sample_id, label, bias)
    Image.fromarray(np.full((*size, 3), 77, dtype=np.uint8)).save(target)
    return target


def raises_naming(what, *parts: str, match: str | None = None):
    """Assert read_layout-like call `what` raises DataError whose message names every part."""
    with pytest.raises(DataError, match=match) as err:
        what()
    message = str(err.value)
    for part in parts:
        assert str(part) in message, (part, message)
    return message


# --- round trip -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cmnist", "cifar10c", "bffhq", "dogs_and_cats"])
def test_round_trip(tmp_path, name):
    spec, written = write_tiny(tmp_path, name, ratio=get_dataset_spec(name).ratios[-1])
    ratio = spec.ratios[-1]
    index = read_layout(tmp_path, spec, ratio)
    dirs = split_dirs(tmp_path, spec, ratio)
    base = tmp_path / name
    assert index.root == base and index.ratio == ratio

    # where things are on disk
    if spec.valid_in_ratio:
        assert dirs["valid"] == base / f"{ratio}pct" / "valid"
        assert not (base / "valid").exists()
    else:
        assert dirs["valid"] == base / "valid"
        assert not (base / f"{ratio}pct" / "valid").exists()
    assert dirs["test"] == base / "test"
    for split, folder in (("valid", dirs["valid"]), ("test", dirs["test"])):
        per_class = spec.valid_per_class if split == "valid" else spec.test_per_class
        children = sorted(p.name for p in folder.iterdir())
        if per_class:
            assert children == [str(c) for c in range(spec.num_classes)]
        else:
            assert all(name.endswith(".png") for name in children)
    assert sorted(p.name for p in (base / f"{ratio}pct").iterdir()) == sorted(
        ["align", "conflict"] + (["valid"] if spec.valid_in_ratio else []))
    # no temporary folders left behind
    assert not [p for p in base.rglob(".*")]

    for split, data in written.items():
        records = index.splits[split]
        got = {r.id: r for r in records}
        assert len(got) == len(records) == len(data.ids)
        for image, label, bias, sample_id in zip(data.images, data.labels, data.biases, data.ids):
            record = got[sample_id]
            assert (record.label, record.bias, record.split) == (label, bias, split)
            assert record.path.name == f"{sample_id}_{label}_{bias}.png"
            if split == "train":
                assert record.path.parent == dirs["align" if label == bias else "conflict"] / str(label)
            np.testing.assert_array_equal(load_image(record.path, spec, (image.shape[1], image.shape[0])), image)

    counts = index.counts()
    assert set(counts) == {"train", "valid", "test"}
    assert counts["train"] == {c: (2, 1) for c in range(spec.num_classes)}
    assert counts["valid"] == {c: (1, 1) for c in range(spec.num_classes)}
    assert counts["test"] == {c: (1, 1) for c in range(spec.num_classes)}


def test_every_registered_spec_round_trips(tmp_path):
    for name, spec in DATASETS.items():
        write_tiny(tmp_path, name, ratio=spec.ratios[0])
        index = read_layout(tmp_path, spec, spec.ratios[0])
        assert len(index.splits["train"]) == 3 * spec.num_classes


def test_ids_with_underscores_and_filenames(tmp_path):
    assert sample_filename("img_7", 3, 4) == "img_7_3_4.png"
    assert parse_sample_filename(Path("a/b/img_7_3_4.png")) == ("img_7", 3, 4)
    assert parse_sample_filename(Path("x__1_12_0.jpg")) == ("x__1", 12, 0)
    assert parse_sample_filename(Path("00017_0_1.png")) == ("00017", 0, 1)
    spec, _ = write_tiny(tmp_path, "dogs_and_cats")
    ids = {r.id for r in read_layout(tmp_path, spec, "1").splits["train"]}
    assert "a_0_1" in ids and "a_1_0" in ids  # ids that look like labels/biases themselves


def test_rewrite_replaces_split_folders(tmp_path):
    spec, _ = write_tiny(tmp_path, "cmnist")
    size = SIZES["cmnist"]
    train = make_split(spec, "new", 1, 2, 5, size)
    write_layout(tmp_path, spec, "1", train, make_split(spec, "v2", 1, 0, 6, size),
                 make_split(spec, "t2", 1, 0, 7, size))
    index = read_layout(tmp_path, spec, "1")
    assert all(r.id.startswith("new") for r in index.splits["train"])
    assert all(r.id.startswith("v2") for r in index.splits["valid"])
    assert all(r.id.startswith("t2") for r in index.splits["test"])
    assert index.counts()["train"][3] == (1, 2)


# --- validation errors ------------------------------------------------------------------------

def test_missing_dataset_folder(tmp_path):
    spec = get_dataset_spec("cmnist")
    message = raises_naming(lambda: read_layout(tmp_path, spec, "0.5"), tmp_path / "cmnist",
                            "cmnist/0.5pct/{align,conflict}/<class>/<id>_<label>_<bias>.png",
                            match="dataset folder not found")
    assert "diffinject data build cmnist" in message
    bffhq = get_dataset_spec("bffhq")
    raises_naming(lambda: read_layout(tmp_path, bffhq, "1"), tmp_path / "bffhq", "cannot be rebuilt")


def test_missing_ratio_folder(tiny):
    root, spec, dirs = tiny
    raises_naming(lambda: read_layout(root, spec, "5"), root / "cmnist" / "5pct",
                  "present: 1pct", match="ratio folder not found")
    shutil.copytree(root / "cmnist" / "1pct", root / "cmnist" / "0.5pct")
    raises_naming(lambda: read_layout(root, spec, "5"), "present: 0.5pct, 1pct")
    shutil.rmtree(root / "cmnist" / "0.5pct")
    shutil.rmtree(root / "cmnist" / "1pct")
    raises_naming(lambda: read_layout(root, spec, "1"), root / "cmnist" / "1pct", "present: none")


@pytest.mark.parametrize("split", ["align", "conflict", "valid", "test"])
def test_missing_split_folder(tiny, split):
    root, spec, dirs = tiny
    shutil.rmtree(dirs[split])
    raises_naming(lambda: read_layout(root, spec, "1"), dirs[split], f"missing '{split}' folder")


def test_missing_valid_beside_ratio_folders(tmp_path):
    spec, _ = write_tiny(tmp_path, "bffhq")
    shutil.rmtree(tmp_path / "bffhq" / "valid")
    raises_naming(lambda: read_layout(tmp_path, spec, "1"), tmp_path / "bffhq" / "valid", "'valid'")


@pytest.mark.parametrize("name", ["img.png", "3_1.png", "img_x_1.png", "img_1_y.png", "_3_3.png",
                                  "img_-1_1.png", "img_1_1.5.png"])
def test_unparsable_file_name(tiny, name):
    root, spec, dirs = tiny
    target = dirs["align"] / "3" / name
    shutil.copy(next((dirs["align"] / "3").iterdir()), target)
    raises_naming(lambda: read_layout(root, spec, "1"), target, match="unparsable file name")


def test_unparsable_name_in_flat_valid(tiny):
    root, spec, dirs = tiny
    target = dirs["valid"] / "noname.png"
    shutil.copy(next(dirs["valid"].iterdir()), target)
    raises_naming(lambda: read_layout(root, spec, "1"), target, match="unparsable")


def test_label_out_of_range(tiny):
    root, spec, dirs = tiny
    bad = save_png(dirs["test"] / "3", 10, 3)
    # stored in class folder 3 but label 10: the range is checked first
    raises_naming(lambda: read_layout(root, spec, "1"), bad, "label 10 out of range", "0..9")


def test_label_out_of_range_in_flat_valid(tiny):
    root, spec, dirs = tiny
    bad = save_png(dirs["valid"], 12, 3)
    raises_naming(lambda: read_layout(root, spec, "1"), bad, "label 12 out of range")


def test_bias_out_of_range(tiny):
    root, spec, dirs = tiny
    bad = save_png(dirs["conflict"] / "4", 4, 10)
    raises_naming(lambda: read_layout(root, spec, "1"), bad, "bias 10 out of range", "0..9")


def test_bias_out_of_range_two_class_dataset(tmp_path):
    spec, _ = write_tiny(tmp_path, "bffhq")
    bad = save_png(tmp_path / "bffhq" / "test", 1, 2, size=SIZES["bffhq"])
    raises_naming(lambda: read_layout(tmp_path, spec, "1"), bad, "bias 2 out of range", "0..1")


def test_file_in_wrong_class_folder(tiny):
    root, spec, dirs = tiny
    bad = save_png(dirs["align"] / "2", 3, 3)
    raises_naming(lambda: read_layout(root, spec, "1"), bad, "label 3", "class folder 2")


def test_file_in_wrong_class_folder_of_test(tiny):
    root, spec, dirs = tiny
    bad = save_png(dirs["test"] / "7", 1, 4)
    raises_naming(lambda: read_layout(root, spec, "1"), bad, "class folder 7")


def test_aligned_file_in_conflict(tiny):
    root, spec, dirs = tiny
    bad = save_png(dirs["conflict"] / "5", 5, 5)
    raises_naming(lambda: read_layout(root, spec, "1"), bad, "'conflict'", "label == bias == 5")


def test_conflicting_file_in_align(tiny):
    root, spec, dirs = tiny
    bad = save_png(dirs["align"] / "5", 5, 6)
    raises_naming(lambda: read_layout(root, spec, "1"), bad, "'align'", "label 5 != bias 6")


def test_unexpected_folders_and_loose_images(tiny):
    root, spec, dirs = tiny
    (dirs["align"] / "10").mkdir()
    raises_naming(lambda: read_layout(root, spec, "1"), dirs["align"] / "10", "unexpected folder")
    (dirs["align"] / "10").rmdir()
    (dirs["test"] / "cats").mkdir()
    raises_naming(lambda: read_layout(root, spec, "1"), dirs["test"] / "cats", "unexpected folder")
    (dirs["test"] / "cats").rmdir()
    loose = save_png(dirs["conflict"], 1, 2)
    raises_naming(lambda: read_layout(root, spec, "1"), loose, "class subfolders")


def test_hidden_and_non_image_files_are_ignored(tiny):
    root, spec, dirs = tiny
    (dirs["align"] / "0" / ".DS_Store").write_bytes(b"junk")
    (dirs["align"] / "0" / "notes.txt").write_text("junk")
    (dirs["valid"] / "._hidden_1_1.png").write_bytes(b"junk")
    (dirs["align"] / ".ipynb_checkpoints").mkdir()
    index = read_layout(root, spec, "1")
    assert len(index.splits["train"]) == 30 and len(index.splits["valid"]) == 20


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_class(tiny, split):
    root, spec, dirs = tiny
    if split == "train":
        for folder in (dirs["align"] / "6", dirs["conflict"] / "6"):
            for f in folder.iterdir():
                f.unlink()
        where = root / "cmnist" / "1pct"
    else:
        for f in (dirs["test"] / "6").iterdir():
            f.unlink()
        where = dirs["test"]
    raises_naming(lambda: read_layout(root, spec, "1"), where, f"empty class 6 in the {split} split")


def test_empty_class_when_class_folder_missing(tiny):
    root, spec, dirs = tiny
    shutil.rmtree(dirs["test"] / "0")
    raises_naming(lambda: read_layout(root, spec, "1"), dirs["test"], "empty class 0")


def test_train_class_with_only_conflicting_samples_is_not_empty(tiny):
    root, spec, dirs = tiny
    for f in (dirs["align"] / "6").iterdir():
        f.unlink()
    assert read_layout(root, spec, "1").counts()["train"][6] == (0, 1)


def test_empty_flat_test_split(tmp_path):
    spec, _ = write_tiny(tmp_path, "bffhq")
    folder = tmp_path / "bffhq" / "test"
    for f in folder.iterdir():
        if f.name.endswith("_1_1.png") or f.name.endswith("_1_0.png"):
            f.unlink()
    raises_naming(lambda: read_layout(tmp_path, spec, "1"), folder, "empty class 1 in the test split")


def test_empty_valid(tiny):
    root, spec, dirs = tiny
    for f in dirs["valid"].iterdir():
        f.unlink()
    raises_naming(lambda: read_layout(root, spec, "1"), dirs["valid"], "valid split has no images")


def test_empty_valid_per_class(tmp_path):
    spec, _ = write_tiny(tmp_path, "cifar10c")
    valid = tmp_path / "cifar10c" / "1pct" / "valid"
    for folder in valid.iterdir():
        for f in folder.iterdir():
            f.unlink()
    raises_naming(lambda: read_layout(tmp_path, spec, "1"), valid, "no images")


def test_valid_may_miss_a_class(tiny):
    root, spec, dirs = tiny
    for f in dirs["valid"].glob("*_4_*.png"):
        f.unlink()
    assert read_layout(root, spec, "1").counts()["valid"][4] == (0, 0)


def test_duplicate_ids(tiny):
    root, spec, dirs = tiny
    # same id once aligned in class 2 and once conflicting in class 8
    save_png(dirs["conflict"] / "8", 8, 1, sample_id="a_2_0")
    raises_naming(lambda: read_layout(root, spec, "1"), root / "cmnist" / "1pct",
                  "'a_2_0' appears 2 times in the train split")


def test_duplicate_ids_in_test_and_same_id_across_splits(tiny):
    root, spec, dirs = tiny
    save_png(dirs["test"] / "1", 1, 5, sample_id="ta_0_0")
    raises_naming(lambda: read_layout(root, spec, "1"), dirs["test"], "'ta_0_0' appears 2 times in the test")
    os.unlink(dirs["test"] / "1" / sample_filename("ta_0_0", 1, 5))
    # the same id in two different splits is fine
    save_png(dirs["test"] / "1", 1, 5, sample_id="a_0_0")
    read_layout(root, spec, "1")


# --- images -------------------------------------------------------------------------------------

def test_load_image_corrupt_png(tmp_path):
    spec = get_dataset_spec("cmnist")
    path = tmp_path / "x_1_1.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    raises_naming(lambda: load_image(path, spec), path, match="unreadable image")


def test_load_image_truncated_png(tmp_path):
    spec = get_dataset_spec("cmnist")
    path = save_png(tmp_path, 1, 1)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    raises_naming(lambda: load_image(path, spec), path, match="unreadable image")


def test_load_image_wrong_size(tmp_path):
    spec = get_dataset_spec("cmnist")
    path = save_png(tmp_path, 1, 1, size=(30, 28))
    raises_naming(lambda: load_image(path, spec), path, "28x30", "expected 28x28 for cmnist")
    ok = save_png(tmp_path, 2, 2, sample_id="ok")
    assert load_image(ok, spec).shape == (28, 28, 3)
    assert load_image(ok, spec).dtype == np.uint8


def test_load_image_size_differs_from_the_rest(tmp_path):
    spec = get_dataset_spec("bffhq")
    first = save_png(tmp_path, 0, 0, size=(12, 10), sample_id="a")
    other = save_png(tmp_path, 0, 0, size=(12, 11), sample_id="b")
    pixels = load_image(first, spec)
    expected = (pixels.shape[1], pixels.shape[0])
    assert load_image(first, spec, expected).shape == (12, 10, 3)
    raises_naming(lambda: load_image(other, spec, expected), other, "11x12", "expected 10x12",
                  "like the other images")


def test_load_image_converts_grey_and_rgba(tmp_path):
    spec = get_dataset_spec("dogs_and_cats")
    grey = tmp_path / "g_0_0.png"
    Image.fromarray(np.full((5, 6), 200, dtype=np.uint8)).save(grey)
    rgba = tmp_path / "r_0_0.png"
    Image.fromarray(np.full((5, 6, 4), 100, dtype=np.uint8)).save(rgba)
    assert load_image(grey, spec).shape == (5, 6, 3) and np.all(load_image(grey, spec) == 200)
    assert load_image(rgba, spec).shape == (5, 6, 3) and np.all(load_image(rgba, spec) == 100)


@pytest.mark.parametrize("name", ["img_\u00b2_1.png", "img_1_\u00b9.png"])
def test_non_ascii_digits_in_file_name(tiny, name):
    """'²'.isdigit() is True but int('²') fails: still a DataError naming the file."""
    root, spec, dirs = tiny
    target = dirs["align"] / "1" / name
    shutil.copy(next((dirs["align"] / "1").iterdir()), target)
    raises_naming(lambda: read_layout(root, spec, "1"), target, match="unparsable file name")


def test_non_ascii_digit_class_folder(tiny):
    root, spec, dirs = tiny
    (dirs["test"] / "\u00b2").mkdir()
    raises_naming(lambda: read_layout(root, spec, "1"), dirs["test"] / "\u00b2", "unexpected folder")


@pytest.mark.parametrize("mode", ["L", "LA", "1", "I;16"])
def test_a_grayscale_image_is_refused_where_the_bias_is_colour(tmp_path, mode):
    path = tmp_path / "0_3_3.png"
    Image.new(mode, (28, 28)).save(path)
    raises_naming(lambda: load_image(path, get_dataset_spec("cmnist")), path, f"a grayscale image (mode {mode})",
                  "the bias of cmnist is the colour")
    raises_naming(lambda: load_image(path, get_dataset_spec("colored_digits")), path, "colored_digits")
    assert load_image(path, get_dataset_spec("bffhq")).shape == (28, 28, 3)  # its bias (age) is not colour
