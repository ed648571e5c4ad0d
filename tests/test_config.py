import dataclasses
import math
from typing import get_type_hints

import pytest

from diffinject.config.builder import experiment_config
from diffinject.config.overrides import apply_overrides
from diffinject.config.rules import Range, Text
from diffinject.config.schema import ExperimentConfig, flatten, from_dict, to_dict
from diffinject.config.validation import FIELD_RULES, validate
from diffinject.core.errors import ConfigError
from diffinject.data.registry import DATASETS
from diffinject.methods import method_classifier


@pytest.mark.parametrize("dataset,arch,lr,batch,augment,normalize,resize", [
    ("cmnist", "mlp", 1e-3, 256, "none", False, 0),
    ("cifar10c", "resnet18", 1e-3, 256, "crop_flip", True, 0),
    ("bffhq", "resnet18", 1e-4, 64, "crop_flip", True, 224),
    ("dogs_and_cats", "resnet18", 1e-4, 64, "none", True, 224),
])
def test_presets_carry_the_paper_hyperparameters(dataset, arch, lr, batch, augment, normalize, resize):
    """The paper's classifier: stage 1's under either baseline protocol, and the uniform one's."""
    cfg = experiment_config(dataset, "5", protocol="paper", baselines="uniform")
    for c in (cfg.classifier, cfg.bias.classifier, experiment_config(dataset, "5", protocol="paper").bias.classifier):
        assert (c.arch, c.lr, c.batch_size, c.augment, c.normalize, c.resize) == (arch, lr, batch, augment, normalize,
                                                                                 resize)
    assert cfg.classifier.select == "valid" and cfg.bias.classifier.select == "last"
    assert cfg.bias.q == 0.7 and cfg.bias.k == 10 and cfg.bias.scope == "global"


def _protocol_fields(cfg):
    i, b = cfg.injection, cfg.bias
    return dict(protocol=i.protocol, label_from=i.label_from, scope=b.scope, k=b.k, select=b.classifier.select,
                mode=i.mode, t_edit=i.t_edit, calibrate=i.calibrate_t_edit, lpips=i.lpips_threshold,
                dt_lambda=i.dt_lambda, steps=(i.inversion_steps, i.generation_steps),
                grids=(i.inject_grid, i.boost_grid))


PAPER_MODES = {"cmnist": "local", "colored_digits": "local", "cifar10c": "global", "bffhq": "local",
               "dogs_and_cats": "local"}


@pytest.mark.parametrize("dataset", sorted(PAPER_MODES))
def test_protocol_presets_per_dataset(dataset):
    ratio = DATASETS[dataset].ratios[0]
    release, paper = experiment_config(dataset, ratio), experiment_config(dataset, ratio, protocol="paper")
    assert to_dict(release) == to_dict(experiment_config(dataset, ratio, protocol="release"))  # release is the default
    small = dataset in ("cmnist", "colored_digits", "cifar10c")
    assert _protocol_fields(release) == dict(
        protocol="release", label_from="original" if small else "content", scope="per_class", k=10, select="valid",
        mode="global", t_edit=400, calibrate=False, lpips=0.33, dt_lambda=0.9985, steps=(1000, 1000), grids=(50, 50))
    assert _protocol_fields(paper) == dict(
        protocol="paper", label_from="content", scope="global", k=10, select="last", mode=PAPER_MODES[dataset],
        t_edit=500, calibrate=True, lpips=0.33, dt_lambda=1.0, steps=(50, 50), grids=(0, 0))
    for name in ("gamma", "t_boost", "conflict_ratio"):  # the paper's per-dataset values in both
        assert getattr(release.injection, name) == getattr(paper.injection, name)
    assert release.injection.t_boost == 200
    # nothing outside the protocol table differs
    differ = {k for k, v in flatten(release).items() if flatten(paper)[k] != v}
    assert differ <= {"injection." + f for f in ("protocol", "label_from", "mode", "t_edit", "calibrate_t_edit",
                                                 "dt_lambda", "inversion_steps", "generation_steps", "inject_grid",
                                                 "boost_grid")} | {"bias.scope", "bias.classifier.select"}


def test_quick_presets_keep_the_cpu_injection_on_top_of_the_protocol():
    quick = experiment_config("colored_digits", "1", quick=True)
    assert _protocol_fields(quick) == dict(
        protocol="release", label_from="content", scope="per_class", k=10, select="valid", mode="global",
        t_edit=200, calibrate=False, lpips=0.33, dt_lambda=0.9985, steps=(20, 20), grids=(0, 0))
    assert quick.injection.gamma == 1.0 and quick.bias.classifier.num_steps == 300
    paper = experiment_config("colored_digits", "1", quick=True, protocol="paper")
    assert _protocol_fields(paper) == dict(
        protocol="paper", label_from="content", scope="global", k=10, select="last", mode="global",
        t_edit=200, calibrate=False, lpips=0.33, dt_lambda=1.0, steps=(20, 20), grids=(0, 0))


@pytest.mark.parametrize("protocol,label_from,scope,select,dt_lambda", [
    ("release", "original", "per_class", "valid", 0.9985), ("paper", "content", "global", "last", 1.0)])
def test_the_quick_colored_mnist_5k_injects_locally_with_the_protocols_labelling(protocol, label_from, scope, select,
                                                                                 dt_lambda):
    quick = experiment_config("colored_mnist_5k", "1", quick=True, protocol=protocol)
    assert _protocol_fields(quick) | {"gamma": quick.injection.gamma} == dict(
        protocol=protocol, label_from=label_from, scope=scope, k=10, select=select, mode="local", t_edit=200,
        calibrate=False, lpips=0.33, dt_lambda=dt_lambda, steps=(20, 20), grids=(0, 0), gamma=1.0)
    assert quick.injection.mask == experiment_config("colored_mnist_5k", "1").injection.mask  # the default region


@pytest.mark.parametrize("quick", [False, True])
def test_a_protocol_override_applies_the_protocol_first(quick):
    want = apply_overrides(experiment_config("cmnist", "1", quick=quick, protocol="paper"), [])  # paths made absolute too
    want.injection.t_edit, want.bias.k = 300, 7
    for order in (["injection.protocol=paper", "injection.t_edit=300", "bias.k=7"],
                  ["injection.t_edit=300", "bias.k=7", "injection.protocol=paper"]):
        assert to_dict(apply_overrides(experiment_config("cmnist", "1", quick=quick), order)) == to_dict(want)
    back = apply_overrides(experiment_config("cmnist", "1", quick=quick, protocol="paper"), ["injection.protocol=release"])
    assert to_dict(back) == to_dict(apply_overrides(experiment_config("cmnist", "1", quick=quick), []))
    with pytest.raises(ConfigError, match="^injection.protocol must be release or paper, got 'code'"):
        apply_overrides(experiment_config("cmnist"), ["injection.protocol=code"])


# The reference repositories' settings per dataset and ratio (config.BASELINE_PROTOCOLS["reference"]):
# classifier (lr, num_steps, augment, MLP /255), LfF (lr, steps), DisEnt (lr, lambdas dis/swap_b/swap, lr_gamma)
SMALL = dict(lr=0.01, augment="none", divide=True, lff=(1e-3, 23_500), disent_lr=0.01, lambdas=(10, 10, 1), gamma=0.5)
REFERENCE = {
    ("cmnist", "1"): SMALL, ("colored_digits", "1"): SMALL, ("colored_digits", "5"): SMALL,
    **{("cifar10c", r): dict(lr=1e-3, augment="crop_flip", divide=False, lff=(1e-3, 39_200),
                             disent_lr=5e-4 if r == "0.5" else 1e-3,
                             lambdas=(5, 5, 1) if r in ("1", "2") else (1, 1, 1), gamma=0.5)
       for r in ("0.5", "1", "2", "5")},
    ("bffhq", "1"): dict(lr=1e-4, augment="crop_flip", divide=False, lff=(0.0, 0), disent_lr=1e-4,
                         lambdas=(2, 2, 0.1), gamma=0.1),
    ("dogs_and_cats", "1"): dict(lr=1e-4, augment="crop_flip", divide=False, lff=(0.0, 0), disent_lr=1e-4,
                                 lambdas=(1, 1, 1), gamma=0.1),
}


def _baseline_fields(cfg):
    c, b = cfg.classifier, cfg.baselines
    return dict(lr=c.lr, augment=c.augment, divide=c.mlp_divide_by_255, lff=(b.lff_lr, b.lff_num_steps),
                disent_lr=b.disent_lr, lambdas=(b.lambda_dis_align, b.lambda_swap_align, b.lambda_swap),
                gamma=b.lr_gamma)


def _committee(cfg):
    b = cfg.baselines
    return b.committee_steps, b.committee_select, b.committee_eval_every, b.committee_augment


@pytest.mark.parametrize("dataset,ratio", sorted(REFERENCE))
def test_the_reference_baseline_protocol_per_dataset_and_ratio(dataset, ratio):
    cfg = experiment_config(dataset, ratio)  # reference is the default
    assert to_dict(cfg) == to_dict(experiment_config(dataset, ratio, baselines="reference"))
    assert cfg.baselines.protocol == "reference" and _baseline_fields(cfg) == REFERENCE[dataset, ratio]
    assert cfg.classifier.num_steps == 50_000
    assert (cfg.baselines.curr_step, cfg.baselines.lr_decay_step) == (10_000, 10_000)
    assert _committee(cfg) == (1_000, "valid", 500, True)


@pytest.mark.parametrize("dataset,ratio", sorted(REFERENCE))
def test_the_uniform_baseline_protocol_trains_every_method_with_the_classifier_preset(dataset, ratio):
    uniform, reference = experiment_config(dataset, ratio, baselines="uniform"), experiment_config(dataset, ratio)
    stage1 = uniform.bias.classifier
    assert uniform.baselines.protocol == "uniform"
    assert _baseline_fields(uniform) == dict(REFERENCE[dataset, ratio], lr=stage1.lr, augment=stage1.augment,
                                             divide=False, lff=(0.0, 0), disent_lr=0.0)
    assert uniform.classifier.num_steps == stage1.num_steps
    assert _committee(uniform) == (1_000, "last", 1_000, False)
    # stage 1 trains alike under both: the baseline protocol changes the stage-4 / baseline copy only
    assert to_dict(uniform)["bias"] == to_dict(reference)["bias"]
    assert flatten(uniform)["injection.protocol"] == flatten(reference)["injection.protocol"] == "release"


def test_dogs_and_cats_augments_only_under_the_reference_protocol():
    assert experiment_config("dogs_and_cats", "1", baselines="uniform").classifier.augment == "none"
    assert experiment_config("dogs_and_cats", "1").classifier.augment == "crop_flip"
    assert experiment_config("dogs_and_cats", "1").bias.classifier.augment == "none"


@pytest.mark.parametrize("quick", [False, True])
def test_a_baselines_protocol_override_applies_the_protocol_first(quick):
    want = apply_overrides(experiment_config("colored_digits", "1", quick=quick, baselines="uniform"), [])
    want.classifier.lr, want.baselines.disent_lr, want.baselines.committee_select = 0.05, 0.002, "valid"
    others = ["classifier.lr=0.05", "baselines.disent_lr=0.002", "baselines.committee_select=valid"]
    for order in (["baselines.protocol=uniform", *others], [*others, "baselines.protocol=uniform"]):
        assert to_dict(apply_overrides(experiment_config("colored_digits", "1", quick=quick), order)) == to_dict(want)
    back = apply_overrides(experiment_config("colored_digits", "1", quick=quick, baselines="uniform"),
                           ["baselines.protocol=reference"])
    assert to_dict(back) == to_dict(apply_overrides(experiment_config("colored_digits", "1", quick=quick), []))


def test_the_quick_preset_scales_the_reference_lengths_to_its_steps():
    cfg = experiment_config("colored_digits", "1", quick=True)
    c, b = cfg.classifier, cfg.baselines
    assert (c.num_steps, c.eval_every, c.log_every, c.lr, c.mlp_divide_by_255) == (1_000, 50, 10, 0.01, True)
    assert (b.lff_lr, b.lff_num_steps, b.curr_step, b.lr_decay_step) == (1e-3, 470, 200, 200)  # x 1,000 / 50,000
    assert (b.committee_steps, b.committee_eval_every, b.committee_select) == (200, 100, "valid")
    uniform = experiment_config("colored_digits", "1", quick=True, baselines="uniform")  # x 1,000 / 20,000
    assert uniform.classifier.num_steps == 1_000 and uniform.classifier.lr == 1e-3
    assert (uniform.baselines.lff_num_steps, uniform.baselines.curr_step, uniform.baselines.lr_decay_step) == (0, 500, 500)
    assert cfg.bias.classifier.num_steps == uniform.bias.classifier.num_steps == 300


def test_the_quick_colored_mnist_5k_gives_disent_its_own_length_and_unscaled_decay():
    from diffinject.methods import method_classifier

    cfg = experiment_config("colored_mnist_5k", "1", quick=True)
    b = cfg.baselines
    lengths = {m: method_classifier(cfg, m).num_steps for m in ("vanilla", "lff", "lff_be", "disent", "disent_be")}
    assert lengths == {"vanilla": 2_500, "lff": 5_000, "lff_be": 2_500, "disent": 10_000, "disent_be": 10_000}
    assert (b.curr_step, b.lr_decay_step) == (2_000, 10_000)  # 10,000 x 10,000 / 50,000; the reference's decay
    assert (b.committee_steps, b.committee_eval_every) == (250, 125)
    uniform = experiment_config("colored_mnist_5k", "1", quick=True, baselines="uniform")  # every method alike
    assert uniform.baselines.disent_num_steps == 0
    assert {method_classifier(uniform, m).num_steps for m in ("vanilla", "disent", "disent_be")} == {2_500}


def test_method_classifier_gives_lff_its_own_lr_and_length():
    cfg = experiment_config("colored_digits", "1")
    lff = method_classifier(cfg, "lff")
    assert (lff.lr, lff.num_steps) == (1e-3, 23_500)
    assert lff == dataclasses.replace(cfg.classifier, lr=1e-3, num_steps=23_500)  # nothing else differs
    for method in ("vanilla", "lff_be", "disent", "disent_be", "diffinject"):
        assert method_classifier(cfg, method) is cfg.classifier
    cfg.baselines.lff_lr = 0.0  # 0: the classifier's lr, keeping LfF's length
    assert (method_classifier(cfg, "lff").lr, method_classifier(cfg, "lff").num_steps) == (0.01, 23_500)
    uniform = experiment_config("colored_digits", "1", baselines="uniform")
    assert method_classifier(uniform, "lff") is uniform.classifier
    bffhq = experiment_config("bffhq", "1")  # LfF has no BFFHQ setting: it trains as the classifier
    assert method_classifier(bffhq, "lff") is bffhq.classifier


def test_stage_4_trains_each_method_with_its_classifier(monkeypatch):
    from diffinject.stages import stage4

    seen = {}
    monkeypatch.setattr(stage4, "train_method", lambda name, clf, *args, **kw: seen.setdefault(name, clf))
    cfg = experiment_config("colored_digits", "1")
    for method in ("lff", "vanilla"):
        stage4.train_classifier(method, cfg, data=None, ctx=None)
    assert seen == {"lff": method_classifier(cfg, "lff"), "vanilla": cfg.classifier}
    assert seen["lff"].num_steps == 23_500


def test_an_unknown_baselines_protocol_is_an_error_naming_the_field():
    with pytest.raises(ConfigError, match="^baselines.protocol must be reference or uniform, got 'code'"):
        apply_overrides(experiment_config("cmnist"), ["baselines.protocol=code"])
    with pytest.raises(ConfigError, match="^baselines.protocol must be reference or uniform, got 'code'"):
        experiment_config("cmnist", baselines="code")


def test_an_inject_grid_that_leaves_no_injected_step_is_an_error():
    with pytest.raises(ConfigError, match=r"^injection.inject_grid = 50 leaves no injected step below t = 999"):
        apply_overrides(experiment_config("cmnist"), ["injection.generation_steps=20"])
    apply_overrides(experiment_config("cmnist"), ["injection.generation_steps=50"])        # the grid itself
    apply_overrides(experiment_config("cmnist"), ["injection.generation_steps=20", "injection.inject_grid=0"])
    with pytest.raises(ConfigError, match=r"^injection.inject_grid must be in \[2, 1000\] \(or 0 to disable\)"):
        apply_overrides(experiment_config("cmnist"), ["injection.inject_grid=1"])
    with pytest.raises(ConfigError, match="unknown config field 'quick_preset'"):
        apply_overrides(experiment_config("cmnist"), ["quick_preset=true"])


def test_quick_preset_is_smaller():
    assert experiment_config("colored_digits", quick=True).classifier.num_steps < experiment_config("colored_digits").classifier.num_steps


def test_overrides_are_typed():
    cfg = apply_overrides(experiment_config("cmnist"), ["classifier.lr=1e-4", "bias.k=20", "classifier.normalize=true",
                                            "bias.classifier.num_steps=5", "data.ratio=5pct"])
    assert cfg.classifier.lr == 1e-4 and cfg.bias.k == 20 and cfg.classifier.normalize is True
    assert cfg.bias.classifier.num_steps == 5 and cfg.data.ratio == "5"


@pytest.mark.parametrize("override,message", [
    ("classifier.nope=1", "unknown config field 'classifier.nope'"),
    ("classifier.lr=fast", "invalid value 'fast' for classifier.lr"),
    ("bias.k=0", "bias.k must be a positive"),
    ("bias.scope=local", "bias.scope must be global or per_class"),
    ("data.ratio=3", "invalid conflict ratio '3'"),
    ("data.dataset=imagenet", "unknown dataset 'imagenet'"),
    ("classifier.select=best", "classifier.select must be"),
    ("classifier", "expected section.field=value"),
    ("bias=3", "bias is a section"),
    ("classifier.lr=nan", "classifier.lr must be a finite number, got nan"),
    ("diffusion.lr=inf", "diffusion.lr must be a finite number, got inf"),
    ("classifier.weight_decay=-1", r"classifier.weight_decay must be >= 0, got -1.0"),
    ("classifier.lr.x=1", "unknown config field 'classifier.lr.x': classifier.lr is a value, not a section"),
    ("run.max_failures=-1", "run.max_failures must be >= 0, got -1"),
    ("run.seed=-1", r"run.seed must be in \[0, 4294967295\], got -1"),
    ("diffusion.seed=-1", r"diffusion.seed must be in \[0, 4294967295\], got -1"),
    ("diffusion.sample_steps=5000", r"diffusion.sample_steps must be in \[1, 1000\], got 5000"),
    ("injection.inversion_steps=1001", r"injection.inversion_steps must be in \[2, 1000\], got 1001"),
    ("diffusion.train_data=cmnist@3", "diffusion.train_data=cmnist@3: invalid conflict ratio '3' for cmnist"),
    ("run.experiment=", "run.experiment must not be empty"),
    ("injection.conflict_ratio=50", r"injection.conflict_ratio must be in \(0, 10\], got 50.0 \(it queues "
                                    r"N_syn = round\(conflict_ratio x \|train\|\) synthetic pairs"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(experiment_config("cmnist"), [override])


def test_a_conflict_ratio_above_1_is_accepted_with_one_warning(monkeypatch, capsys):
    import diffinject.config.rules

    monkeypatch.setattr(diffinject.config.rules, "_warned", set(), raising=False)
    for _ in range(2):
        assert apply_overrides(experiment_config("cmnist"), ["injection.conflict_ratio=5"]).injection.conflict_ratio == 5
    err = capsys.readouterr().err
    assert err.startswith("warning: injection.conflict_ratio=5 queues N_syn = round(conflict_ratio x |train|) = 5 x "
                          "the training split") and err.count("\n") == 1
    apply_overrides(experiment_config("cmnist"), ["injection.conflict_ratio=1"])
    assert capsys.readouterr().err == ""


def test_flatten_and_round_trip():
    cfg = experiment_config("cifar10c", "1")
    flat = flatten(cfg)
    assert flat["classifier.lr"] == 1e-3 and flat["bias.classifier.select"] == "valid" and flat["data.ratio"] == "1"
    assert flat["injection.protocol"] == "release"  # MLflow params and the stage-3 key see the protocol
    assert from_dict(to_dict(cfg)) == cfg


def _sections(cls=ExperimentConfig, prefix=""):
    """(section class, dotted prefix) of every config section, nested ones included."""
    yield cls, prefix
    for name, kind in get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            yield from _sections(kind, f"{prefix}{name}.")


def _leaf_fields():
    for cls, prefix in _sections():
        for name, kind in get_type_hints(cls).items():
            if not dataclasses.is_dataclass(kind):
                yield cls, prefix + name, name, kind


def test_every_config_field_has_a_declared_rule():
    missing = [key for cls, key, name, _ in _leaf_fields() if name not in FIELD_RULES.get(cls, {})]
    assert not missing, f"config fields without an entry in config.FIELD_RULES: {missing}"
    numeric = [key for cls, key, name, kind in _leaf_fields() if kind in (int, float)
               and not isinstance(FIELD_RULES[cls][name], Range)]
    assert not numeric, f"numeric fields without a range: {numeric}"


def _set(cfg, key, value):
    *path, name = key.split(".")
    target = cfg
    for part in path:
        target = getattr(target, part)
    setattr(target, name, value)


def _bad_values(rule, kind):
    """Values just outside each bound of a Range, a non-member of OneOf, blank Text; NaN for floats."""
    out = [math.nan, math.inf] if kind is float else []
    if isinstance(rule, Range):
        step = 1 if kind is int else 1e-9
        if rule.low is not None:
            out.append(rule.low if rule.low_open else rule.low - step)
        if rule.high is not None:
            out.append(rule.high if rule.high_open else rule.high + step)
        out = [v for v in out if v not in rule.also]
    elif isinstance(rule, Text):
        out.append(" ")
    elif kind is str:  # OneOf, or a registry name / format that a function checks
        out.append("bogus")
    if kind in (int, float, bool):
        out.append("3")  # a string where a number or flag belongs
    return out


def test_every_field_rejects_values_outside_its_rule_naming_the_field():
    for cls, key, name, kind in _leaf_fields():
        rule = FIELD_RULES[cls][name]
        for value in _bad_values(rule, kind):
            cfg = experiment_config("colored_digits", "1")
            _set(cfg, key, value)
            with pytest.raises(ConfigError, match=f"^{key}[ =:]"):
                validate(cfg)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_every_preset_validates_at_every_ratio(dataset):
    for ratio in DATASETS[dataset].ratios:
        validate(experiment_config(dataset, ratio))
    validate(experiment_config(dataset, DATASETS[dataset].ratios[0], quick=True))


def test_the_quick_preset_validates():
    cfg = experiment_config("colored_digits", "1", quick=True)
    validate(cfg)
    assert cfg.data.ratio == "1"


@pytest.mark.parametrize("stand_in", ["colored_digits", "colored_mnist_5k"])
@pytest.mark.parametrize("protocol,baselines", [("release", "reference"), ("paper", "uniform")])
def test_an_embedded_dataset_trains_with_colored_mnist_s_presets(stand_in, protocol, baselines):
    from diffinject.config.schema import to_dict

    ours, theirs = (to_dict(experiment_config(d, "1", protocol=protocol, baselines=baselines)) for d in (stand_in, "cmnist"))
    assert ours["data"]["dataset"] == stand_in
    ours["data"]["dataset"] = "cmnist"
    assert ours == theirs


def test_every_quick_gan_ema_half_life_is_shorter_than_its_run():
    """An EMA that outlives its run stays at its initialisation (the old quick source kept ~97 % of it)."""
    import math

    from diffinject.config.quick import QUICK_FASTGAN_INIT

    cfg = experiment_config("colored_mnist_5k", "1", quick=True)
    s, f = cfg.stylegan2, cfg.fastgan
    assert s.ema_half_life < s.num_steps * s.batch_size          # images
    assert s.adapt_ema_half_life < s.adapt_steps                # steps
    half_life = lambda decay: math.log(0.5) / math.log(decay)   # steps of an EMA with this decay per step
    assert half_life(f.ema_decay) < f.num_steps
    assert half_life(QUICK_FASTGAN_INIT["ema_decay"]) < QUICK_FASTGAN_INIT["num_steps"]
    # the projection's lr warm-up is a share of its run: more than one step has a non-zero lr
    assert s.project_steps * 0.05 >= 1
    assert s.source_checkpoint == f.init_checkpoint == "shipped"
    digits = experiment_config("colored_digits", "1", quick=True)
    assert digits.stylegan2.source_checkpoint == digits.fastgan.init_checkpoint == ""  # nothing shipped for it
