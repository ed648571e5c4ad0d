"""The method registry (DomainBed style: one small class per algorithm, listed here in Table 1's
row order), and what the code asks of it: a method by name, the table's methods, and a
method's own classifier regime and stage-1 config."""
from __future__ import annotations

from diffinject.config.schema import ClassifierConfig, ExperimentConfig
from diffinject.core.errors import ConfigError
from diffinject.methods.base import Method
from diffinject.methods.diffinject import DiffInject
from diffinject.methods.disent import DisEnt, DisEntBiasEnsemble
from diffinject.methods.gce import BiasGCE
from diffinject.methods.generative import A2, AmpliBias
from diffinject.methods.lff import LfF, LfFBiasEnsemble
from diffinject.methods.train import build_and_fit
from diffinject.methods.vanilla import Vanilla
from diffinject.training.loop import FitResult, TrainContext, TrainData

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    BiasGCE, Vanilla, LfF, LfFBiasEnsemble, DisEnt, DisEntBiasEnsemble, A2, AmpliBias, DiffInject)}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; expected one of {', '.join(sorted(METHODS))}") from None


def train_method(name: str, cfg: ClassifierConfig, data: TrainData, ctx: TrainContext, seed: int,
                 options: dict | None = None, eval_offset: int = 0) -> FitResult:
    """Build registered method `name` for `data` (seeded init) and fit it."""
    return build_and_fit(get_method(name), cfg, data, ctx, seed, options, eval_offset)


def method_classifier(cfg: ExperimentConfig, method: str) -> ClassifierConfig:
    """The classifier settings registered method `method` trains with (Method.classifier_config)."""
    return get_method(method).classifier_config(cfg)


def stage1_config(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    """The config whose stage 1 serves registered method `method` (Method.stage1_config)."""
    return get_method(method).stage1_config(cfg)


def table_methods() -> list[str]:
    return [name for name, cls in METHODS.items() if cls.in_table]
