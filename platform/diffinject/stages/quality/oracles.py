"""The two scoring oracles of a dataset, how they are trained (on REAL training images, never
on the images they score) and applied, and their accuracy on the held-out valid split.

Two kinds, picked per dataset by `ORACLE_KINDS`:

- "colour" (Colored MNIST, Colored Digits: a grey stroke multiplied by the bias colour): the
  class oracle is a COLOUR-BLIND reader, a small MLP trained on colourless images (per-pixel
  max over channels, rescaled so that the image max is 1), so colour cannot be a shortcut;
  the bias oracle is a COLOUR reader: the mean RGB of the stroke pixels (scaled so its largest
  channel is 1, which removes the stroke's brightness) -> the nearest of the per-bias mean
  colours measured on the training split.
- "balanced" (Corrupted CIFAR-10, BFFHQ, Dogs & Cats): two GROUP-BALANCED CNNs, one for the
  class and one for the bias attribute, on images downsized to `QualityConfig.image_size`,
  trained on the training split resampled so that every (label, bias) group present has equal
  weight, which decorrelates the two attributes (a biased split's few conflicting samples are
  seen as often as its aligned ones, many times over).

Training is deterministic on CPU for a given seed (torch.manual_seed, a seeded batch order).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.data.parquet import ArraySplit
from diffinject.data.registry import get_dataset_spec
from diffinject.stages.quality.metrics import labels_of, quality_figure, quality_metrics

# by the paper's dataset: an embedded stand-in (DatasetSpec.paper_dataset) takes its benchmark's kind
ORACLE_KINDS = {"cmnist": "colour", "cifar10c": "balanced", "bffhq": "balanced", "dogs_and_cats": "balanced"}
ORACLE_FILE = "oracles.pt"
CHUNK = 512  # images per forward pass when reading


@dataclass(frozen=True)
class QualityConfig:
    """How the oracles are trained. The defaults train both Colored Digits oracles in a few
    seconds on 2 CPU cores with > 0.9 held-out accuracy."""

    steps: int = 400              # Adam steps of the colour-blind reader
    balanced_steps: int = 2000    # Adam steps of each balanced oracle (harder images)
    max_epochs: int = 30          # at most this many passes over a (small) training split
    batch_size: int = 64
    lr: float = 2e-3
    shift: int = 1                # random translation (pixels) while training, for robustness to generated images
    image_size: int = 32          # side the balanced oracles see
    stroke_threshold: float = 0.5  # stroke pixels: brightness >= this share of the image's brightest pixel


def oracle_kind(dataset: str) -> str:
    from diffinject.data.registry import DATASETS

    try:
        return ORACLE_KINDS[DATASETS[dataset].recipe if dataset in DATASETS else dataset]
    except KeyError:
        raise ConfigError(f"no quality oracle for dataset {dataset!r}; expected one of "
                          f"{', '.join(sorted(ORACLE_KINDS))}") from None


class ColourBlindMLP(nn.Module):
    """The colour-blind class reader's network: an MLP on the colourless image average-pooled
    to 14 x 14 (enough for a digit; any input side)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(nn.AdaptiveAvgPool2d(14), nn.Flatten(), nn.Linear(196 * in_channels, 256),
                                      nn.ReLU())
        self.head = nn.Sequential(nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """The balanced oracles' network: two strided conv layers and a linear head; any input side
    (adaptive pooling to 4 x 4). Small enough to train in seconds on one CPU thread."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


NETWORKS = {"colourless": (ColourBlindMLP, 1), "downsized": (SmallCNN, 3)}  # input kind -> (network, channels)


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread (restored after): these networks are too small to gain from
    more, and lose a lot when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- inputs ------------------------------------------------------------------------------
def colourless(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 1 x H x W: per-pixel max over channels, each image
    rescaled so that its max is 1 (an all-black image stays 0)."""
    grey = torch.from_numpy(np.ascontiguousarray(images)).amax(dim=-1).float()
    peak = grey.amax(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return (grey / peak).unsqueeze(1)


def downsized(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x size x size in [0, 1] (area interpolation)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return x if x.shape[-1] == size and x.shape[-2] == size else F.interpolate(x, size=(size, size), mode="area")


def stroke_colours(images: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 N x H x W x 3 -> N x 3: the mean RGB of each image's stroke pixels (brightness, the
    max over channels, >= threshold x the image's brightest), scaled so its largest channel is 1."""
    x = images.astype(np.float32) / 255.0
    bright = x.max(axis=-1)
    stroke = (bright >= threshold * bright.max(axis=(1, 2), keepdims=True)) & (bright > 0)
    total = (x * stroke[..., None]).sum(axis=(1, 2)) / np.maximum(stroke.sum(axis=(1, 2)), 1)[:, None]
    return total / np.maximum(total.max(axis=-1, keepdims=True), 1e-6)


def group_weights(labels, biases) -> np.ndarray:
    """Sampling probability of each sample such that every (label, bias) group present has the
    same total (1 / number of groups), shared equally by its members."""
    labels, biases = np.asarray(labels, dtype=np.int64), np.asarray(biases, dtype=np.int64)
    groups, inverse, counts = np.unique(np.stack([labels, biases], axis=1), axis=0, return_inverse=True,
                                        return_counts=True)
    return 1.0 / (len(groups) * counts[inverse.reshape(-1)])


# ---- readers -----------------------------------------------------------------------------
class NetReader:
    """A network applied to `prepare(images)`: colourless images (the colour-blind reader, an
    MLP) or downsized ones (a balanced oracle, a CNN)."""

    def __init__(self, input_kind: str, num_outputs: int, image_size: int):
        self.input_kind, self.num_outputs, self.image_size = input_kind, num_outputs, image_size
        self.net = self.network().eval()

    def network(self) -> nn.Module:
        """A new (untrained) network of this reader's kind."""
        network, channels = NETWORKS[self.input_kind]
        return network(channels, self.num_outputs)

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        return colourless(images) if self.input_kind == "colourless" else downsized(images, self.image_size)

    @torch.no_grad()
    def read(self, images: np.ndarray) -> np.ndarray:
        with one_thread():
            out = [self.net(self.prepare(images[i:i + CHUNK])).argmax(dim=1) for i in range(0, len(images), CHUNK)]
        return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, dtype=np.int64)


class ColourReader:
    """Nearest per-bias mean stroke colour (`biases[j]` has mean colour `centroids[j]`)."""

    def __init__(self, biases: np.ndarray, centroids: np.ndarray, threshold: float):
        self.biases, self.centroids, self.threshold = np.asarray(biases), np.asarray(centroids), threshold

    @classmethod
    def fit(cls, train: ArraySplit, threshold: float) -> "ColourReader":
        colours = stroke_colours(train.images, threshold)
        biases = np.unique(train.biases)
        return cls(biases, np.stack([colours[train.biases == b].mean(axis=0) for b in biases]), threshold)

    def read(self, images: np.ndarray) -> np.ndarray:
        colours = stroke_colours(images, self.threshold)
        distance = ((colours[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=-1)
        return self.biases[distance.argmin(axis=1)].astype(np.int64)


def train_net(reader: NetReader, images: np.ndarray, targets: np.ndarray, probabilities: np.ndarray | None,
              steps: int, config: QualityConfig, seed: int) -> NetReader:
    """Train `reader.net` for `steps` Adam steps (at most config.max_epochs passes) on batches
    drawn (with replacement, by `probabilities`, uniform when None) from `images`; inputs are
    prepared once up front."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = min(steps, -(-config.max_epochs * len(images) // config.batch_size))
    with one_thread():
        reader.net = reader.network()
        inputs = torch.cat([reader.prepare(images[i:i + CHUNK]) for i in range(0, len(images), CHUNK)])
        targets = torch.from_numpy(np.asarray(targets, dtype=np.int64))
        net = reader.net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
        for _ in range(steps):
            batch = torch.from_numpy(rng.choice(len(inputs), size=config.batch_size, p=probabilities))
            x = inputs[batch]
            if config.shift:
                dy, dx = (int(v) for v in rng.integers(-config.shift, config.shift + 1, size=2))
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(x), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
    return reader


# ---- the pair of oracles -----------------------------------------------------------------
@dataclass
class Oracles:
    """A dataset's class and bias readers and their accuracy on held-out real (valid) images."""

    kind: str
    class_reader: NetReader
    bias_reader: NetReader | ColourReader
    accuracy: dict
    config: QualityConfig

    def read(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(read class, read bias) of uint8 N x H x W x 3 images."""
        return self.class_reader.read(images), self.bias_reader.read(images)

    def held_out_accuracy(self, valid: ArraySplit) -> dict[str, float]:
        """class_oracle_acc / bias_oracle_acc on `valid`, and `*_conflicting_acc` on its
        bias-conflicting images when it has any."""
        read_class, read_bias = self.read(valid.images)
        out = {"class_oracle_acc": float(np.mean(read_class == valid.labels)),
               "bias_oracle_acc": float(np.mean(read_bias == valid.biases))}
        conflicting = ~valid.aligned
        if conflicting.any():
            out["class_oracle_conflicting_acc"] = float(np.mean(read_class[conflicting] == valid.labels[conflicting]))
            out["bias_oracle_conflicting_acc"] = float(np.mean(read_bias[conflicting] == valid.biases[conflicting]))
        return out

    def save(self, path: Path) -> Path:
        """One file `torch.load(..., weights_only=True)` reads back (`load_oracles`)."""
        payload = {"kind": self.kind, "config": asdict(self.config), "accuracy": self.accuracy,
                   "class_outputs": self.class_reader.num_outputs, "class_state": self.class_reader.net.state_dict()}
        if isinstance(self.bias_reader, ColourReader):
            payload["bias_values"] = torch.from_numpy(self.bias_reader.biases.astype(np.int64))
            payload["bias_centroids"] = torch.from_numpy(self.bias_reader.centroids.astype(np.float64))
        else:
            payload["bias_outputs"] = self.bias_reader.num_outputs
            payload["bias_state"] = self.bias_reader.net.state_dict()
        torch.save(payload, path)
        return Path(path)


def load_oracles(path: Path) -> Oracles:
    """The oracles `Oracles.save` wrote (CheckpointError when the file is not such a file)."""
    from diffinject.nets.diffusion.checkpoint_file import read_checkpoint_file

    payload = read_checkpoint_file(path)
    try:
        config = QualityConfig(**payload["config"])
        kind = payload["kind"]
        class_reader = NetReader("colourless" if kind == "colour" else "downsized", payload["class_outputs"],
                                 config.image_size)
        class_reader.net.load_state_dict(payload["class_state"])
        if kind == "colour":
            bias_reader = ColourReader(payload["bias_values"].numpy(), payload["bias_centroids"].numpy(),
                                       config.stroke_threshold)
        else:
            bias_reader = NetReader("downsized", payload["bias_outputs"], config.image_size)
            bias_reader.net.load_state_dict(payload["bias_state"])
        accuracy = {k: float(v) for k, v in payload["accuracy"].items()}
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not an oracle file ({type(exc).__name__}: {str(exc)[:160]})") from None
    return Oracles(kind, class_reader, bias_reader, accuracy, config)


def train_oracles(kind: str, train: ArraySplit, valid: ArraySplit, num_classes: int, num_biases: int,
                  config: QualityConfig = QualityConfig(), seed: int = 0) -> Oracles:
    """Train both oracles of `kind` on the real `train` split; measure them on `valid`."""
    if kind == "colour":
        class_reader = train_net(NetReader("colourless", num_classes, config.image_size), train.images,
                                 train.labels, None, config.steps, config, seed)
        bias_reader = ColourReader.fit(train, config.stroke_threshold)
    elif kind == "balanced":
        weights = group_weights(train.labels, train.biases)
        class_reader = train_net(NetReader("downsized", num_classes, config.image_size), train.images,
                                 train.labels, weights, config.balanced_steps, config, seed)
        bias_reader = train_net(NetReader("downsized", num_biases, config.image_size), train.images,
                                train.biases, weights, config.balanced_steps, config, seed + 1)
    else:
        raise ConfigError(f"unknown oracle kind {kind!r}; expected colour or balanced")
    oracles = Oracles(kind, class_reader, bias_reader, {}, config)
    oracles.accuracy = oracles.held_out_accuracy(valid)
    return oracles


def dataset_oracles(dataset: str, train: ArraySplit, valid: ArraySplit, config: QualityConfig = QualityConfig(),
                    seed: int = 0) -> Oracles:
    """The oracles of a registered dataset (its kind from ORACLE_KINDS)."""
    spec = get_dataset_spec(dataset)
    return train_oracles(oracle_kind(dataset), train, valid, spec.num_classes, spec.num_biases, config, seed)


def score_with(oracles: Oracles, train: ArraySplit, synthetic: ArraySplit, original_ids=None,
               content_ids=None, reads: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """The quality report of `synthetic` (images and the labels they are trained with): the
    metrics of `metrics.quality_metrics` plus the oracles' held-out accuracy. original_ids /
    content_ids (the provenance columns) are looked up among the training split's ids; `reads`
    is what the oracles read of its images, when the caller has it already."""
    read_class, read_bias = reads if reads is not None else oracles.read(synthetic.images)
    originals = None if original_ids is None else labels_of(original_ids, train.ids, train.labels)
    contents = None if content_ids is None else labels_of(content_ids, train.ids, train.labels)
    return {**quality_metrics(read_class, read_bias, synthetic.labels, originals, contents), **oracles.accuracy}


def load_synthetic(folder: Path) -> tuple[ArraySplit, np.ndarray, np.ndarray]:
    """A synthetic set (inject/synthetic.py) as (split, original_ids, content_ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffinject.data.parquet import load_split

    split = load_split(folder, "train")
    files = sorted(Path(folder).glob("train-*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["original_id", "content_id"]) for f in files])
    return (split, np.asarray(table["original_id"].to_pylist(), dtype=object),
            np.asarray(table["content_id"].to_pylist(), dtype=object))


def score_folder(oracles: Oracles, train: ArraySplit, folder: Path, figure: Path | None = None, title: str = "",
                 shown: int = 20) -> dict[str, float]:
    """The quality report of the synthetic set in `folder`, with its first `shown` images in a
    captioned grid at `figure` when given."""
    synthetic, originals, contents = load_synthetic(folder)
    read_class, read_bias = oracles.read(synthetic.images)
    report = score_with(oracles, train, synthetic, originals, contents, (read_class, read_bias))
    if figure is not None and len(synthetic):
        quality_figure(figure, synthetic.images[:shown], synthetic.labels[:shown], read_class[:shown],
                       read_bias[:shown], report, title)
    return report
