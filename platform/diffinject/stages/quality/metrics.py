"""The quality metrics of a synthetic set, as pure functions of what the oracles read."""
from __future__ import annotations

import numpy as np


def _share(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else float("nan")


def quality_metrics(read_class, read_bias, labels, original_labels=None, content_labels=None) -> dict[str, float]:
    """Shares of synthetic images (rows) by what the oracles read.

    label_fidelity: the read class is the label the image is trained with; conflict_rate: the
    read bias is not the one aligned with that label (the aligned bias of class c is bias c);
    useful_rate: both. shows_original / shows_content: the read class is the original's / the
    content's label (given when those labels are); with both given, useful_as_original /
    useful_as_content: the useful share the same images would have, labelled with the original's
    / the content's label (injection.label_from), so both labellings are read from one set."""
    read_class, read_bias, labels = (np.asarray(a, dtype=np.int64) for a in (read_class, read_bias, labels))
    right = read_class == labels
    conflicting = read_bias != labels
    out = {"label_fidelity": _share(right), "conflict_rate": _share(conflicting),
           "useful_rate": _share(right & conflicting)}
    if original_labels is not None:
        out["shows_original"] = _share(read_class == np.asarray(original_labels, dtype=np.int64))
    if content_labels is not None:
        out["shows_content"] = _share(read_class == np.asarray(content_labels, dtype=np.int64))
    if original_labels is not None and content_labels is not None:
        for name, given in (("original", original_labels), ("content", content_labels)):
            given = np.asarray(given, dtype=np.int64)
            out[f"useful_as_{name}"] = _share((read_class == given) & (read_bias != given))
    return out


def labels_of(ids, known_ids, known_labels) -> np.ndarray:
    """The labels of `ids` looked up among (known_ids, known_labels); -1 where an id is unknown."""
    index = {str(k): int(v) for k, v in zip(known_ids, known_labels)}
    return np.asarray([index.get(str(i), -1) for i in ids], dtype=np.int64)


PREFIX = "quality."  # how the report's numbers are named as MLflow / cell metrics


def prefixed(report: dict) -> dict[str, float]:
    return {PREFIX + name: float(value) for name, value in report.items()}


def unprefixed(metrics: dict) -> dict[str, float]:
    """The quality report held in a run's or cell's metrics (empty when it has none)."""
    return {name[len(PREFIX):]: float(value) for name, value in metrics.items() if name.startswith(PREFIX)}


def quality_figure(path, images: np.ndarray, labels, read_class, read_bias, report: dict, title: str):
    """A captioned grid of synthetic images: label / read class / read bias, * = useful (read as
    its label, with a conflicting bias)."""
    from diffinject.core.plots import image_grid

    captions = [f"y={y} c={c} b={b}{' *' if c == y and b != y else ''}"
                for y, c, b in zip(labels, read_class, read_bias)]
    return image_grid(path, images, captions, f"{title}: label fidelity {report['label_fidelity']:.2f}, conflict "
                                              f"rate {report['conflict_rate']:.2f} (y label, c read class, b read "
                                              f"bias, * useful)")
