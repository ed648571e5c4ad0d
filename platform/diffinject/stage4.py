"""Stage 4 (and every baseline): a registered method trained on one or more datasets."""
from __future__ import annotations

from .config import ExperimentConfig
from .methods import get_method
from .train import seed_everything, FitResult, Preprocess, TrainContext, TrainData, fit


def train_classifier(method_name: str, cfg: ExperimentConfig, data: TrainData, ctx: TrainContext) -> FitResult:
    clf = cfg.classifier
    shape = Preprocess(clf, ctx.device).output_shape(data.train.images.shape[1:])
    seed_everything(cfg.run.seed)
    method = get_method(method_name)(clf, data.num_classes, shape, len(data.train))
    return fit(method, data, clf, ctx, seed=cfg.run.seed)
