"""Stage 4 (and every baseline): a registered method trained on one or more datasets."""
from __future__ import annotations

import dataclasses

from .config import ExperimentConfig
from .train import FitResult, TrainContext, TrainData, train_method


def train_classifier(method_name: str, cfg: ExperimentConfig, data: TrainData, ctx: TrainContext) -> FitResult:
    """The baselines read their hyperparameters (cfg.baselines) from the method options."""
    return train_method(method_name, cfg.classifier, data, ctx, cfg.run.seed,
                        options=dataclasses.asdict(cfg.baselines))
