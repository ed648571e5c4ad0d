"""Stage 4 (and every baseline): a registered method trained on one or more datasets."""
from __future__ import annotations

import dataclasses

from .config import ExperimentConfig, method_classifier
from .train import FitResult, TrainContext, TrainData, train_method


def train_classifier(method_name: str, cfg: ExperimentConfig, data: TrainData, ctx: TrainContext) -> FitResult:
    """The baselines read their hyperparameters (cfg.baselines) from the method options; LfF may
    train with its own lr and length (config.method_classifier)."""
    return train_method(method_name, method_classifier(cfg, method_name), data, ctx, cfg.run.seed,
                        options=dataclasses.asdict(cfg.baselines))
