"""The protocols: which fields the DiffInject protocols (`release`, `paper`) and the baseline
protocols (`reference`, `uniform`) set, per dataset (and ratio), and how a config takes one."""
from __future__ import annotations

import dataclasses
from typing import Any

from diffinject.config.presets import baselines_preset, classifier_preset, recipe
from diffinject.config.quick import QUICK_INJECTION, QUICK_INJECTION_BY_DATASET, quick_lengths
from diffinject.config.rules import OneOf
from diffinject.config.schema import ExperimentConfig
from diffinject.core.errors import ConfigError
from diffinject.data.registry import DATASETS, recipes


# How the comparison methods are trained (docs/design.md 2.4): the fields each protocol sets, one
# value, one per dataset, or one per dataset and ratio. `reference` follows the reference
# repositories' code (alinlab/LfF, kakaoenterprise/Learning-Debiased-Disentangled = DisEnt,
# kakaoenterprise/BiasEnsemble = BE), `uniform` trains every method with the classifier preset.
# `classifier.*` is Vanilla's regime, and the stage-4 classifier's of DiffInject (its paired
# difference to Vanilla then measures the synthetic data alone); stage 1 keeps its own.
BASELINE_PROTOCOLS: dict[str, dict[str, Any]] = {
    "reference": {
        # LfF, DisEnt and BE module/mlp.py: forward() divides the ToTensor() input by 255 again
        "classifier.mlp_divide_by_255": {"cmnist": True, "cifar10c": False, "bffhq": False, "dogs_and_cats": False},
        # DisEnt scripts/run_{cmnist,cifar10c,bffhq}_vanilla.sh --lr; BE train_dnc.sh --lr
        "classifier.lr": {"cmnist": 0.01, "cifar10c": 1e-3, "bffhq": 1e-4, "dogs_and_cats": 1e-4},
        "classifier.num_steps": 50_000,          # DisEnt and BE train.py --num_steps default 500 * 100
        # BE data/util.py transforms_preprcs["dogs_and_cats"]["train"]: RandomCrop(224, padding=4) + flip
        "classifier.augment": {"cmnist": "none", "cifar10c": "crop_flip", "bffhq": "crop_flip",
                               "dogs_and_cats": "crop_flip"},
        # LfF config.py: Adam 1e-3 and main_num_steps 235 * 100 (ColoredMNIST), 196 * 200 (CorruptedCIFAR10);
        # LfF has no BFFHQ / Dogs & Cats setting: those train as BE's LfF + BE does (classifier.*)
        "baselines.lff_lr": {"cmnist": 1e-3, "cifar10c": 1e-3, "bffhq": 0.0, "dogs_and_cats": 0.0},
        "baselines.lff_num_steps": {"cmnist": 23_500, "cifar10c": 39_200, "bffhq": 0, "dogs_and_cats": 0},
        # DisEnt scripts/run_*_ours.sh --lr (Corrupted CIFAR-10: 5e-4 at 0.5 %, 1e-3 above); BE train_dnc.sh
        "baselines.disent_lr": {"cmnist": 0.01, "cifar10c": {"0.5": 5e-4, "1": 1e-3, "2": 1e-3, "5": 1e-3},
                                "bffhq": 1e-4, "dogs_and_cats": 1e-4},
        "baselines.committee_steps": 1_000,      # BE train.py --biased_model_train_iter
        # BE learner.py pretrain_b_ensemble_best: board_pretrain_best_acc at step % valid_freq == 0 (0-based
        # steps 0 and 500: after updates 1 and 501) keeps a deep copy of the best-on-valid model ...
        "baselines.committee_select": "valid",
        "baselines.committee_eval_every": 500,   # BE train.py --valid_freq
        # ... and scores p(y|x) with pretrain_loader over the training set, whose transform is "train"
        "baselines.committee_augment": True,
        # A2-Adaptive-Augmentation... 3.training-ours.py: criterion_GCE on original + augmented, whatever --loss
        "baselines.a2_loss": "gce",
    },
    "uniform": {
        "classifier.mlp_divide_by_255": False,   # inputs in [0, 1] for every network
        "baselines.lff_lr": 0.0,                 # every method at classifier.lr ...
        "baselines.lff_num_steps": 0,            # ... for classifier.num_steps
        "baselines.disent_lr": 0.0,
        "baselines.committee_select": "last",    # each committee model's last weights (of the 1,000 steps) ...
        "baselines.committee_eval_every": 1_000,  # (evaluated once, at its end)
        "baselines.committee_augment": False,    # ... scored on the training images as they are
        "baselines.a2_loss": "ce",               # A²'s final classifier with cross-entropy, as every stage 4
    },
}


def by_resolution(small: Any, large: Any) -> dict[str, Any]:
    """One value for the recipes whose images are at most 32 px (cmnist, cifar10c: 32x32 diffusion
    models), another for the others (bffhq, dogs_and_cats: 256x256), per the data registry."""
    return {name: small if (DATASETS[name].image_size or 256) <= 32 else large for name in recipes()}


# The two DiffInject protocols (docs/design.md 2.3): the fields each sets, one value or one per
# dataset. `release` follows the authors' released code (seanko29/DiffInject), `paper` its text.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "release": {
        # train_classifier.py BaseDataset.__getitem__ reads the label from the synthetic file name:
        # field -2 (the original's) for new-cmnist / cifar10c, field -6 (the content's) otherwise
        "injection.label_from": by_resolution("original", "content"),
        "bias.scope": "per_class",               # top_k_loss.py: the K highest-loss samples of each class
        "bias.k": 10,                            # top_k_loss.py --K default
        "bias.classifier.select": "valid",       # top_k_loss.py loads best.path.tar, the best-on-valid GCE model
        "injection.mode": "global",              # no released script passes --use_mask
        "injection.calibrate_t_edit": False,     # the synthetic-set scripts pass no t_edit ...
        "injection.t_edit": 400,                 # ... so main.py's user_defined_t_edit default, 400
        "injection.lpips_threshold": 0.33,       # (unused: nothing is calibrated)
        "injection.dt_lambda": 0.9985,           # every released script
        "injection.inversion_steps": 1000,       # the released scripts' step counts
        "injection.generation_steps": 1000,
        "injection.inject_grid": 50,             # main.py content_replace_step: only the 50-step grid's steps inject
        "injection.boost_grid": 50,              # main.py: eta = 1 only at those on-grid steps
    },
    "paper": {
        "injection.label_from": "content",       # paper Sec. 3: a synthetic sample keeps its content's label
        "bias.scope": "global",                  # paper Sec. 3, Eq. 3-4: top-K over the whole training set
        "bias.k": 10,
        "bias.classifier.select": "last",        # the paper names no model selection for f_B
        "injection.mode": {"cmnist": "local", "cifar10c": "global", "bffhq": "local", "dogs_and_cats": "local"},  # paper App. B
        "injection.calibrate_t_edit": True,      # paper App. B: t_edit where LPIPS reaches 0.33
        "injection.t_edit": 500,                 # (used only with calibrate_t_edit=false)
        "injection.lpips_threshold": 0.33,       # paper App. B
        "injection.dt_lambda": 1.0,              # the paper has no direction scaling
        "injection.inversion_steps": 50,         # the paper names no count; at 50 the release's injection
        "injection.generation_steps": 50,        # grid is the generation grid
        "injection.inject_grid": 0,              # every step with t >= t_edit injects (paper Sec. 3)
        "injection.boost_grid": 0,               # every step with t <= t_boost boosts
    },
}


def set_field(cfg: Any, dotted: str, value: Any) -> None:
    *sections, name = dotted.split(".")
    target = cfg
    for section in sections:
        target = getattr(target, section)
    setattr(target, name, value)


def _protocol_value(table: str, protocol: str, dotted: str, value: Any, dataset: str, ratio: str) -> Any:
    """A protocol table's value for `dataset`'s recipe (and `ratio`, where it has one per ratio)."""
    for key, kind in ((recipe(dataset), "dataset"), (ratio, "ratio")):
        if not isinstance(value, dict):
            break
        if key not in value:
            raise ConfigError(f"{table}={protocol}: {dotted} has no value for {kind} {key!r} (known: {', '.join(value)})")
        value = value[key]
    return value


def apply_protocol(cfg: ExperimentConfig, protocol: str) -> ExperimentConfig:
    """Set `protocol`'s PROTOCOLS fields for cfg's dataset (in place), then the quick layer again on a quick preset."""
    OneOf(tuple(PROTOCOLS)).check("injection.protocol", protocol)
    for dotted, value in PROTOCOLS[protocol].items():
        set_field(cfg, dotted, _protocol_value("injection.protocol", protocol, dotted, value, cfg.data.dataset,
                                                cfg.data.ratio))
    cfg.injection.protocol = protocol
    if cfg.quick_preset:
        cfg.injection = dataclasses.replace(cfg.injection, **{**QUICK_INJECTION,
                                                               **QUICK_INJECTION_BY_DATASET.get(cfg.data.dataset, {})})
    return cfg


# The classifier fields a baseline protocol may change: it starts from the dataset's preset.
CLASSIFIER_REGIME = ("lr", "num_steps", "augment", "mlp_divide_by_255")


def apply_baseline_protocol(cfg: ExperimentConfig, protocol: str) -> ExperimentConfig:
    """Set `protocol`'s BASELINE_PROTOCOLS fields for cfg's dataset and ratio (in place), on top of
    the dataset's classifier and baselines presets; then the quick lengths on a quick preset."""
    from diffinject.data.registry import get_dataset_spec, normalize_ratio

    OneOf(tuple(BASELINE_PROTOCOLS)).check("baselines.protocol", protocol)
    dataset = cfg.data.dataset
    ratio = normalize_ratio(get_dataset_spec(dataset), cfg.data.ratio)
    base = classifier_preset(dataset)
    cfg.classifier = dataclasses.replace(cfg.classifier, **{name: getattr(base, name) for name in CLASSIFIER_REGIME})
    cfg.baselines = baselines_preset(dataset, ratio)
    for dotted, value in BASELINE_PROTOCOLS[protocol].items():
        set_field(cfg, dotted, _protocol_value("baselines.protocol", protocol, dotted, value, dataset, ratio))
    cfg.baselines.protocol = protocol
    if cfg.quick_preset:
        quick = quick_lengths(dataset)
        own = quick.disent_steps if protocol == "reference" else 0  # uniform: every method at `steps`
        scale = (own or quick.steps) / cfg.classifier.num_steps
        b = cfg.baselines
        cfg.baselines = dataclasses.replace(
            b, lff_num_steps=quick.lff_steps if b.lff_num_steps else 0, disent_num_steps=own,
            curr_step=round(b.curr_step * scale),
            lr_decay_step=round(b.lr_decay_step * scale) if quick.disent_decay_scaled else b.lr_decay_step,
            committee_steps=quick.committee_steps, committee_eval_every=quick.committee_eval_every)
        cfg.classifier = dataclasses.replace(cfg.classifier, num_steps=quick.steps, eval_every=quick.eval_every,
                                             checkpoint_every=quick.checkpoint_every, log_every=quick.log_every)
    return cfg

