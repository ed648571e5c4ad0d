"""Accuracy metrics from (label, bias) cell counts, so shards can be summed across ranks."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist


def cell_counts(predictions: torch.Tensor, labels: torch.Tensor, biases: torch.Tensor,
                num_classes: int, num_biases: int) -> torch.Tensor:
    """2 x C x B tensor: [correct, total] per (label, bias) cell."""
    cells = labels * num_biases + biases
    total = torch.bincount(cells, minlength=num_classes * num_biases)
    correct = torch.bincount(cells, weights=(predictions == labels).double(), minlength=num_classes * num_biases)
    return torch.stack([correct.double(), total.double()]).view(2, num_classes, num_biases)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_ranks_finite(value: float, device: torch.device) -> bool:
    """Whether `value` is finite on every rank. All ranks learn the answer together, so on a
    non-finite loss they stop together and none is left waiting in a gradient all-reduce."""
    finite = torch.tensor([1.0 if math.isfinite(value) else 0.0], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() == 1.0)


def accuracy_metrics(counts: torch.Tensor | np.ndarray) -> dict[str, float]:
    """acc (on the unbiased test set: the unbiased accuracy), aligned_acc (label == bias),
    conflicting_acc (label != bias), cell_mean_acc (mean over non-empty (label, bias) cells)."""
    counts = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    correct, total = counts[0], counts[1]
    diagonal = np.eye(correct.shape[0], correct.shape[1], dtype=bool)

    def ratio(mask: np.ndarray) -> float:
        n = total[mask].sum()
        return float(correct[mask].sum() / n) if n else float("nan")

    filled = total > 0
    return {
        "acc": ratio(np.ones_like(diagonal)),
        "aligned_acc": ratio(diagonal),
        "conflicting_acc": ratio(~diagonal),
        "cell_mean_acc": float((correct[filled] / total[filled]).mean()) if filled.any() else float("nan"),
    }
