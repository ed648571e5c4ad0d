"""Stage 4 (and every baseline): a registered method trained on one or more datasets."""
from __future__ import annotations

import dataclasses

from diffinject.config.schema import ExperimentConfig
from diffinject.methods import method_classifier
from diffinject.methods.registry import train_method
from diffinject.training.loop import FitResult, TrainContext, TrainData


def train_classifier(method_name: str, cfg: ExperimentConfig, data: TrainData, ctx: TrainContext) -> FitResult:
    """The baselines read their hyperparameters (cfg.baselines) from the method options; LfF may
    train with its own lr and length (Method.classifier_config)."""
    return train_method(method_name, method_classifier(cfg, method_name), data, ctx, cfg.run.seed,
                        options=dataclasses.asdict(cfg.baselines))
