"""Train a method class: build it for the data (seeded initialisation) and run the loop."""
from __future__ import annotations

from diffinject.config.schema import ClassifierConfig
from diffinject.methods.base import Method
from diffinject.training.loop import FitResult, Preprocess, TrainContext, TrainData, fit, seed_everything


def build_and_fit(cls: type[Method], cfg: ClassifierConfig, data: TrainData, ctx: TrainContext, seed: int,
                  options: dict | None = None, eval_offset: int = 0) -> FitResult:
    """Build method `cls` for `data` (seeded init) and fit it."""
    shape = Preprocess(cfg, ctx.device).output_shape(data.train.images.shape[1:])
    seed_everything(seed)
    method = cls(cfg, data.num_classes, shape, len(data.train), options)
    method.prepare(data, ctx, seed)
    return fit(method, data, cfg, ctx, seed=seed, eval_offset=eval_offset)
