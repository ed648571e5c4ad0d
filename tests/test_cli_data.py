"""The `diffinject data build` / `data check` commands."""
from __future__ import annotations

import re

import numpy as np
import pytest

from diffinject.cli.main import main
from diffinject.data.layout import LabeledImages, read_layout, split_dirs, write_layout
from diffinject.data.registry import get_dataset_spec


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    assert main(["data", "build", "colored_digits", "--data-root", str(root), "--ratios", "1"]) == 0
    return root


def rows(stdout: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(split, class) -> (aligned, conflicting) from the table `data check` prints."""
    out = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"\s*(train|valid|test)\s+(\d+|all)\s+(\d+)\s+(\d+)\s*", line)
        if m:
            out[(m[1], m[2])] = (int(m[3]), int(m[4]))
    return out


def tiny_digits(root):
    spec = get_dataset_spec("colored_digits")
    rng = np.random.default_rng(0)

    def split(prefix):
        labels = np.repeat(np.arange(10), 2)
        biases = labels.copy()
        biases[1::2] = (labels[1::2] + 3) % 10
        return LabeledImages(images=rng.integers(0, 256, (20, 28, 28, 3), dtype=np.uint8),
                             labels=labels, biases=biases, ids=[f"{prefix}{i}" for i in range(20)])

    write_layout(root, spec, "1", split(""), split("v"), split("t"))
    return spec


def test_build_writes_only_the_requested_ratio(digits_root):
    base = digits_root / "colored_digits"
    assert sorted(p.name for p in base.iterdir()) == ["1pct", "build.json", "test"]
    index = read_layout(digits_root, get_dataset_spec("colored_digits"), "1")
    assert len(index.splits["train"]) == 1200


def test_check_prints_counts(digits_root, capsys):
    assert main(["data", "check", "colored_digits", "--data-root", str(digits_root), "--ratio", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "colored_digits @ 1%: images 28x28, all readable" in captured.out
    table = rows(captured.out)
    assert table[("train", "all")] == (1188, 12)
    assert table[("valid", "all")][0] + table[("valid", "all")][1] == 197
    assert table[("test", "all")] == (40, 360)
    index = read_layout(digits_root, get_dataset_spec("colored_digits"), "1")
    for split, per_class in index.counts().items():
        for c, counts in per_class.items():
            assert table[(split, str(c))] == counts
        assert sum(a for a, _ in per_class.values()) == table[(split, "all")][0]
    assert all(table[("test", str(c))] == (4, 36) for c in range(10))
    # each split's share of bias-conflicting images, from the same counts (valid: whatever it holds)
    a, c = table[("valid", "all")]
    assert f"  bias-conflicting share: train {12 / 1200:.3f}, valid {c / (a + c):.3f}, test 0.900" in captured.out


def test_check_accepts_ratio_spellings(digits_root, capsys):
    assert main(["data", "check", "colored_digits", "--data-root", str(digits_root), "--ratio", "1.0"]) == 0
    assert "@ 1%" in capsys.readouterr().out


def test_check_all_ratios_fails_on_missing_ratio(digits_root, capsys):
    # without --ratio all four ratios are checked; only 1pct was built
    assert main(["data", "check", "colored_digits", "--data-root", str(digits_root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {digits_root / 'colored_digits' / '0.5pct'}: ratio folder not found")
    assert "present: 1pct" in err


def test_check_broken_dataset(tmp_path, capsys):
    spec = tiny_digits(tmp_path)
    assert main(["data", "check", "colored_digits", "--data-root", str(tmp_path), "--ratio", "1"]) == 0
    capsys.readouterr()
    bad = next((split_dirs(tmp_path, spec, "1")["conflict"] / "4").iterdir())
    bad.write_bytes(b"garbage")
    assert main(["data", "check", "colored_digits", "--data-root", str(tmp_path), "--ratio", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {bad}: unreadable image")
    assert "all readable" not in captured.out


def test_check_wrong_size_and_bad_layout(tmp_path, capsys):
    from PIL import Image

    spec = tiny_digits(tmp_path)
    dirs = split_dirs(tmp_path, spec, "1")
    bad = next(dirs["valid"].iterdir())
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad, format="PNG")
    assert main(["data", "check", "colored_digits", "--data-root", str(tmp_path), "--ratio", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: image is 32x32; expected 28x28") and err.count("\n") == 1
    (dirs["test"] / "3" / "stray_5_5.png").write_bytes(b"")
    assert main(["data", "check", "colored_digits", "--data-root", str(tmp_path), "--ratio", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {dirs['test'] / '3' / 'stray_5_5.png'}: label 5 in the file name but stored "
                   "in class folder 3\n")


def test_check_grayscale_image_in_a_colour_biased_dataset(tmp_path, capsys):
    from PIL import Image

    spec = tiny_digits(tmp_path)
    bad = next((split_dirs(tmp_path, spec, "1")["align"] / "2").iterdir())
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(bad, format="PNG")  # mode L
    assert main(["data", "check", "colored_digits", "--data-root", str(tmp_path), "--ratio", "1"]) == 2
    assert capsys.readouterr().err == (f"error: {bad}: a grayscale image (mode L), but the bias of colored_digits is "
                                       f"the colour; expected a colour (RGB) image\n")


def test_check_missing_dataset(tmp_path, capsys):
    assert main(["data", "check", "cmnist", "--data-root", str(tmp_path), "--ratio", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'cmnist'}: dataset folder not found") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["build", "check"])
def test_unknown_dataset(tmp_path, capsys, command):
    assert main(["data", command, "mnist-c", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'mnist-c'") and "colored_digits" in err
    assert err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_invalid_ratio(tmp_path, capsys):
    assert main(["data", "check", "colored_digits", "--data-root", str(tmp_path), "--ratio", "3"]) == 2
    assert "invalid conflict ratio '3'" in capsys.readouterr().err
    assert main(["data", "build", "colored_digits", "--data-root", str(tmp_path), "--ratios", "7"]) == 2
    assert "invalid conflict ratio '7'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bffhq", "dogs_and_cats"])
def test_build_of_a_release_only_dataset(tmp_path, capsys, name):
    assert main(["data", "build", name, "--data-root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {name} cannot be built here")
    assert "cannot be rebuilt" in captured.err and "download" in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not any(tmp_path.iterdir())


def test_build_cmnist_needs_a_source(tmp_path, capsys):
    assert main(["data", "build", "cmnist", "--data-root", str(tmp_path)]) == 2
    assert "--source" in capsys.readouterr().err
    assert main(["data", "build", "cmnist", "--data-root", str(tmp_path), "--source", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'none'}: MNIST file train-images-idx3-ubyte")
