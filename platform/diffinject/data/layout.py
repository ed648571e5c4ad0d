"""Reader, validator and writer of the released DisEnt/BiasEnsemble folder layout.

Each image is `<id>_<label>_<bias>.png`, aligned when label == bias:

    <dataset>/<pct>/{align,conflict}/<class>/*.png      training split
    <dataset>/<pct>/valid[/<class>]/*.png  or  <dataset>/valid/*.png
    <dataset>/test[/<class>]/*.png
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffinject.core.atomic import atomic_dir
from diffinject.core.errors import DataError
from diffinject.data.registry import DatasetSpec, ratio_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SampleRecord:
    path: Path
    id: str
    label: int
    bias: int
    split: str

    @property
    def aligned(self) -> bool:
        return self.label == self.bias


@dataclass
class LayoutIndex:
    """Every sample of one dataset at one conflict ratio, per split."""

    spec: DatasetSpec
    ratio: str
    root: Path
    splits: dict[str, list[SampleRecord]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[int, tuple[int, int]]]:
        """split -> class -> (aligned, conflicting) sample counts."""
        out: dict[str, dict[int, tuple[int, int]]] = {}
        for split, records in self.splits.items():
            aligned = Counter(r.label for r in records if r.aligned)
            conflicting = Counter(r.label for r in records if not r.aligned)
            out[split] = {c: (aligned[c], conflicting[c]) for c in range(self.spec.num_classes)}
        return out


@dataclass
class LabeledImages:
    """In-memory split used by builders: uint8 images N x H x W x 3 with labels and biases."""

    images: np.ndarray
    labels: np.ndarray
    biases: np.ndarray
    ids: list[str]

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.labels) == len(self.biases) == len(self.ids) == n):
            raise ValueError("images, labels, biases and ids must have the same length")


def sample_filename(sample_id: str, label: int, bias: int, suffix: str = ".png") -> str:
    return f"{sample_id}_{int(label)}_{int(bias)}{suffix}"


def parse_sample_filename(path: Path) -> tuple[str, int, int]:
    """`<id>_<label>_<bias>.png` -> (id, label, bias); the id may itself contain '_'."""
    parts = path.stem.rsplit("_", 2)
    # isdecimal, not isdigit: '²'.isdigit() is True but int('²') raises ValueError
    if len(parts) != 3 or not parts[0] or not parts[1].isdecimal() or not parts[2].isdecimal():
        raise DataError(f"{path}: unparsable file name; expected <id>_<label>_<bias>.png "
                        "with integer label and bias")
    return parts[0], int(parts[1]), int(parts[2])


def dataset_dir(data_root: Path, spec: DatasetSpec) -> Path:
    return Path(data_root) / spec.name


def split_dirs(data_root: Path, spec: DatasetSpec, ratio: str) -> dict[str, Path]:
    """Where each split lives on disk; 'align' and 'conflict' make up 'train'."""
    base = dataset_dir(data_root, spec)
    ratio_dir = base / ratio_folder(ratio)
    return {
        "align": ratio_dir / "align",
        "conflict": ratio_dir / "conflict",
        "valid": (ratio_dir if spec.valid_in_ratio else base) / "valid",
        "test": base / "test",
    }


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path, spec: DatasetSpec) -> list[tuple[int, Path]]:
    out = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if not child.is_dir():
            if child.suffix.lower() in IMAGE_SUFFIXES:
                raise DataError(f"{child}: image directly in {folder}; expected class subfolders "
                                f"0..{spec.num_classes - 1}")
            continue
        if not child.name.isdecimal() or int(child.name) >= spec.num_classes:
            raise DataError(f"{child}: unexpected folder; expected class subfolders "
                            f"0..{spec.num_classes - 1}")
        out.append((int(child.name), child))
    return out


def _records(folder: Path, spec: DatasetSpec, split: str, per_class: bool,
             alignment: str | None) -> list[SampleRecord]:
    if per_class:
        files = [(c, f) for c, d in _class_dirs(folder, spec) for f in _image_files(d)]
    else:
        files = [(None, f) for f in _image_files(folder)]
    records = []
    for folder_class, path in files:
        sample_id, label, bias = parse_sample_filename(path)
        if not 0 <= label < spec.num_classes:
            raise DataError(f"{path}: label {label} out of range; expected 0..{spec.num_classes - 1}")
        if not 0 <= bias < spec.num_biases:
            raise DataError(f"{path}: bias {bias} out of range; expected 0..{spec.num_biases - 1}")
        if folder_class is not None and folder_class != label:
            raise DataError(f"{path}: label {label} in the file name but stored in class folder "
                            f"{folder_class}")
        if alignment == "align" and label != bias:
            raise DataError(f"{path}: in 'align' but label {label} != bias {bias}")
        if alignment == "conflict" and label == bias:
            raise DataError(f"{path}: in 'conflict' but label == bias == {label}")
        records.append(SampleRecord(path=path, id=sample_id, label=label, bias=bias, split=split))
    return records


def read_layout(data_root: Path, spec: DatasetSpec, ratio: str) -> LayoutIndex:
    """Index one dataset/ratio, checking folders and file names (not pixels: see load_image)."""
    base = dataset_dir(data_root, spec)
    if not base.is_dir():
        raise DataError(f"{base}: dataset folder not found; expected the layout "
                        f"{spec.name}/{ratio_folder(ratio)}/{{align,conflict}}/<class>/<id>_<label>_<bias>.png; "
                        f"{spec.source}")
    dirs = split_dirs(data_root, spec, ratio)
    if not dirs["align"].parent.is_dir():
        present = sorted(p.name for p in base.iterdir() if p.name.endswith("pct"))
        raise DataError(f"{dirs['align'].parent}: ratio folder not found; present: "
                        f"{', '.join(present) or 'none'}")
    for name, folder in dirs.items():
        if not folder.is_dir():
            raise DataError(f"{folder}: missing '{name}' folder")

    train = (_records(dirs["align"], spec, "train", True, "align")
             + _records(dirs["conflict"], spec, "train", True, "conflict"))
    valid = _records(dirs["valid"], spec, "valid", spec.valid_per_class, None)
    test = _records(dirs["test"], spec, "test", spec.test_per_class, None)
    index = LayoutIndex(spec=spec, ratio=ratio, root=base, splits={"train": train, "valid": valid, "test": test})

    for split, records in index.splits.items():
        where = dirs["align"].parent if split == "train" else dirs[split]
        present = {r.label for r in records}
        missing = sorted(set(range(spec.num_classes)) - present)
        if split != "valid" and missing:
            raise DataError(f"{where}: empty class {missing[0]} in the {split} split "
                            f"(classes without samples: {missing})")
        if split == "valid" and not records:
            raise DataError(f"{where}: the valid split has no images")
        ids = Counter(r.id for r in records)
        dup = next((i for i, n in ids.items() if n > 1), None)
        if dup is not None:
            raise DataError(f"{where}: sample id {dup!r} appears {ids[dup]} times in the {split} split")
    return index


def load_image(path: Path, spec: DatasetSpec, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image to uint8 H x W x 3, checking that it is readable, of the right size and,
    where the bias is colour, not grayscale."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None
    if spec.color_bias and Image.getmodebase(mode) == "L":
        raise DataError(f"{path}: a grayscale image (mode {mode}), but the bias of {spec.name} is the colour; "
                        f"expected a colour (RGB) image")
    size = rgb.size
    if spec.image_size is not None and size != (spec.image_size, spec.image_size):
        raise DataError(f"{path}: image is {size[0]}x{size[1]}; expected "
                        f"{spec.image_size}x{spec.image_size} for {spec.name}")
    if expected_size is not None and size != expected_size:
        raise DataError(f"{path}: image is {size[0]}x{size[1]}; expected {expected_size[0]}x{expected_size[1]} "
                        "like the other images of this dataset")
    return np.asarray(rgb, dtype=np.uint8)


def _write_images(folder: Path, data: LabeledImages, per_class: bool, only: str | None = None) -> None:
    for image, label, bias, sample_id in zip(data.images, data.labels, data.biases, data.ids):
        if only == "align" and label != bias or only == "conflict" and label == bias:
            continue
        target = folder / str(int(label)) if per_class else folder
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / sample_filename(sample_id, label, bias))


def write_ratio(data_root: Path, spec: DatasetSpec, ratio: str, train: LabeledImages,
                valid: LabeledImages) -> None:
    """Write one ratio's folder (its training split, and valid where the spec keeps it there)."""
    with atomic_dir(dataset_dir(data_root, spec) / ratio_folder(ratio)) as tmp:
        for c in range(spec.num_classes):
            (tmp / "align" / str(c)).mkdir(parents=True)
            (tmp / "conflict" / str(c)).mkdir(parents=True)
        _write_images(tmp / "align", train, per_class=True, only="align")
        _write_images(tmp / "conflict", train, per_class=True, only="conflict")
        if spec.valid_in_ratio:
            (tmp / "valid").mkdir()
            _write_images(tmp / "valid", valid, per_class=spec.valid_per_class)


def write_shared_splits(data_root: Path, spec: DatasetSpec, valid: LabeledImages, test: LabeledImages) -> None:
    """Write the splits every ratio shares: test, and valid where the spec keeps it beside the ratios."""
    base = dataset_dir(data_root, spec)
    if not spec.valid_in_ratio:
        with atomic_dir(base / "valid") as tmp:
            _write_images(tmp, valid, per_class=spec.valid_per_class)
    with atomic_dir(base / "test") as tmp:
        _write_images(tmp, test, per_class=spec.test_per_class)


def write_layout(data_root: Path, spec: DatasetSpec, ratio: str, train: LabeledImages,
                 valid: LabeledImages, test: LabeledImages) -> Path:
    """Write one dataset/ratio in the released layout; each folder appears whole or not at all."""
    write_ratio(data_root, spec, ratio, train, valid)
    write_shared_splits(data_root, spec, valid, test)
    return dataset_dir(data_root, spec)
