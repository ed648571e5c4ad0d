"""Stage 1: a deliberately biased classifier (GCE) and its top-K highest-loss samples.

No bias label is used to train or select; `precision_at_k` uses them only to score
whether the top-K really are bias-conflicting.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffinject.config.schema import ExperimentConfig
from diffinject.core.errors import ConfigError
from diffinject.data.parquet import ArraySplit
from diffinject.methods import Method
from diffinject.methods.registry import train_method
from diffinject.training.loop import FitResult, Preprocess, TrainContext, TrainData

# a stage-1 job's top-K set, beside its model.pt: the rows, ids, labels and losses, and the images
TOPK_FILE, TOPK_IMAGES_FILE = "topk.json", "topk_images.npy"


@dataclass
class TopK:
    indices: np.ndarray  # rows of the training split, highest loss first
    ids: list[str]
    labels: np.ndarray
    losses: np.ndarray
    images: np.ndarray  # uint8 K x H x W x 3, so nobody reloads the training split for a grid

    def to_json(self) -> dict:
        return {"indices": self.indices.tolist(), "ids": list(self.ids),
                "labels": self.labels.tolist(), "losses": self.losses.tolist()}


@torch.no_grad()
def per_sample_ce(method: Method, split: ArraySplit, prep: Preprocess, batch_size: int = 512) -> np.ndarray:
    """Plain cross-entropy of every sample under the (eval-mode) model."""
    method.train(False)
    losses = []
    for start in range(0, len(split), batch_size):
        sl = slice(start, start + batch_size)
        logits = method.predict(prep(split.images[sl], train=False))
        labels = torch.from_numpy(split.labels[sl]).to(logits.device)
        losses.append(F.cross_entropy(logits.float(), labels, reduction="none").cpu())
    method.train(True)
    return torch.cat(losses).numpy().astype(np.float64)


def select_topk(losses: np.ndarray, labels: np.ndarray, ids: np.ndarray, k: int, scope: str = "global") -> np.ndarray:
    """Indices of the K largest losses (paper Eq. 3-4), ties broken by sample id; with
    scope 'per_class', K per class (as A2 does), classes in label order."""
    if k <= 0:
        raise ConfigError(f"K must be a positive number of samples, got {k}")
    order = np.lexsort((np.asarray(ids, dtype=str), -losses))
    if scope == "global":
        if k > len(losses):
            raise ConfigError(f"K = {k} is larger than the training set ({len(losses)} samples)")
        return order[:k]
    if scope == "per_class":
        picked = []
        for c in np.unique(labels):
            members = order[labels[order] == c]
            if k > len(members):
                raise ConfigError(f"K = {k} per class is larger than class {c} ({len(members)} samples)")
            picked.append(members[:k])
        return np.concatenate(picked)
    raise ConfigError(f"top-K scope must be global or per_class, got {scope!r}")


def precision_at_k(indices: np.ndarray, aligned: np.ndarray) -> float:
    """Fraction of the selected samples that are truly bias-conflicting."""
    return float(np.mean(~aligned[indices]))


def train_bias_classifier(cfg: ExperimentConfig, data: TrainData, ctx: TrainContext) -> tuple[FitResult, TopK]:
    """Train f_B with GCE, then take the top-K by plain CE over the whole training split."""
    clf = cfg.bias.classifier
    result = train_method("gce", clf, data, ctx, cfg.run.seed, options={"q": cfg.bias.q})
    losses = per_sample_ce(result.method, data.train, Preprocess(clf, ctx.device))
    indices = select_topk(losses, data.train.labels, data.train.ids, cfg.bias.k, cfg.bias.scope)
    topk = TopK(indices=indices, ids=[str(i) for i in data.train.ids[indices]],
                labels=data.train.labels[indices], losses=losses[indices], images=data.train.images[indices])
    return result, topk


def topk_files(topk: TopK) -> dict[str, bytes]:
    """The top-K set's files (TOPK_FILE, TOPK_IMAGES_FILE) as bytes."""
    buffer = io.BytesIO()
    np.save(buffer, topk.images)
    return {TOPK_FILE: json.dumps(topk.to_json(), indent=1).encode(), TOPK_IMAGES_FILE: buffer.getvalue()}


def load_topk(checkpoint_dir: Path) -> dict:
    """The top-K set of a stage-1 job: indices, ids, labels, losses and images."""
    payload = json.loads((Path(checkpoint_dir) / TOPK_FILE).read_text())
    payload["indices"] = np.asarray(payload["indices"], dtype=np.int64)
    payload["images"] = np.load(Path(checkpoint_dir) / TOPK_IMAGES_FILE)
    return payload
