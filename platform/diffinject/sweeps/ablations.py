"""Ablation sweeps: the axes a sweep can vary, the settings of a sweep, one setting evaluated
over seeds (one MLflow "trial" run), the best setting, and the accuracy-vs-value plot.

Knows nothing of Ray: `sweeps.tune` runs the settings as Ray Tune trials, each evaluated by
`evaluate_setting` with cells from the artifact cache (a gamma sweep trains one diffusion model
and one bias classifier per seed, and injects once per gamma).

A setting assigns a value to every swept axis. Axes swept alone vary one at a time around the
preset (the others at the preset's value, so the preset itself is one shared setting); crossed
axes give every combination.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffinject.config.overrides import apply_overrides
from diffinject.config.overrides import distinct
from diffinject.config.schema import ExperimentConfig, flatten
from diffinject.core.atomic import atomic_file
from diffinject.core.errors import ConfigError
from diffinject.experiment.cache import artifact_key
from diffinject.experiment.cells import CellResult
from diffinject.experiment.run_context import with_seed
from diffinject.reporting.runs import mean_std, per_seed_difference
from diffinject.stages.quality.metrics import PREFIX as QUALITY_PREFIX
from diffinject.tracking.client import Tracker


@dataclass(frozen=True)
class AxisKind:
    fields: tuple[str, ...]   # config fields the axis sets (all to the same value)
    about: str
    fixed: tuple[str, ...] = ()  # `section.field=value` overrides every value of the axis comes with


# The named axes; any other `section.field` of the config can be swept too.
AXES = {
    "gamma": AxisKind(("injection.gamma",), "slerp weight of the content's h (0: no injection)"),
    "k": AxisKind(("bias.k",), "size of the top-K bias-conflict set (stage 1)"),
    "ratio": AxisKind(("injection.conflict_ratio",), "N_syn / |train|: synthetic samples per training sample"),
    "scope": AxisKind(("bias.scope",), "top-K over the whole set (global) or per class"),
    "steps": AxisKind(("injection.inversion_steps", "injection.generation_steps"), "DDIM steps of both passes"),
    "inversion_steps": AxisKind(("injection.inversion_steps",), "DDIM inversion steps"),
    "generation_steps": AxisKind(("injection.generation_steps",), "DDIM generation steps"),
    "t_edit": AxisKind(("injection.t_edit",), "inject at generation steps with t >= t_edit"),
    "mode": AxisKind(("injection.mode",), "local (masked region of h) or global injection"),
    "label_from": AxisKind(("injection.label_from",), "whose label a synthetic sample gets: content or original"),
    "k_per_class": AxisKind(("bias.k",), "top-K per class (sets bias.scope=per_class)", ("bias.scope=per_class",)),
    "p2_gamma": AxisKind(("diffusion.gamma",), "P2 weighting of the diffusion loss (one model per value)"),
    "baselines": AxisKind(("baselines.protocol",), "how the classifiers train: reference (as the reference "
                                                    "repositories) or uniform (all alike)"),
    "adapt_steps": AxisKind(("stylegan2.adapt_steps",), "A²: steps of the CDC few-shot adaptation to the top-K set"),
    "project_steps": AxisKind(("stylegan2.project_steps",), "A²: steps of each original's W projection"),
    "fastgan_k": AxisKind(("fastgan.k_per_class",), "AmpliBias: top-K per class its FastGANs train on"),
    "fastgan_steps": AxisKind(("fastgan.num_steps",), "AmpliBias: training steps of each class's FastGAN"),
}


@dataclass(frozen=True)
class Axis:
    """A swept axis: a list of values (grid or Optuna choice), or a low:high range (Optuna only)."""

    name: str
    fields: tuple[str, ...]
    values: tuple = ()
    low: Any = None
    high: Any = None
    fixed: tuple[str, ...] = ()  # overrides that come with every value (AxisKind.fixed)

    def overrides(self, value: Any) -> list[str]:
        return [*self.fixed, *(f"{f}={value}" for f in self.fields)]

    @property
    def is_range(self) -> bool:
        return self.low is not None


def _field_value(cfg: ExperimentConfig, dotted: str) -> Any:
    target = cfg
    for part in dotted.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"unknown config field {dotted!r} (named axes: {', '.join(AXES)})")
        target = getattr(target, part)
    if dataclasses.is_dataclass(target):
        raise ConfigError(f"{dotted} is a config section; sweep one of its fields")
    return target


def parse_axis(text: str, base: ExperimentConfig) -> Axis:
    """'gamma=0.5,0.9', 'injection.t_edit=100,300' or, for Optuna, 'gamma=0.2:1.0'. Values are
    checked against the config field's type and range at once, naming the axis."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise ConfigError(f"--sweep {text!r}: expected NAME=V1,V2,... or NAME=LOW:HIGH, e.g. gamma=0.5,0.7,0.9")
    named = AXES.get(name)
    axis = Axis(name, named.fields, fixed=named.fixed) if named else Axis(name, (name,))
    kind = type(_field_value(base, axis.fields[0]))
    if ":" in spec:
        low, high = (_typed(v, kind, axis, base) for v in spec.split(":", 1))
        if kind is str or not low < high:
            raise ConfigError(f"--sweep {text!r}: a range needs numbers LOW < HIGH")
        return dataclasses.replace(axis, low=low, high=high)
    values = tuple(distinct([_typed(v, kind, axis, base) for v in spec.split(",")], f"--sweep {name}"))
    return dataclasses.replace(axis, values=values)


def _typed(text: str, kind: type, axis: Axis, base: ExperimentConfig) -> Any:
    """The value as the field's type, validated by applying it to a copy of the config."""
    try:
        cfg = apply_overrides(copy.deepcopy(base), axis.overrides(text.strip()))
    except ConfigError as exc:
        raise ConfigError(f"--sweep {axis.name}: {exc}") from None
    return kind(_field_value(cfg, axis.fields[0]))


def base_value(base: ExperimentConfig, axis: Axis) -> Any:
    return _field_value(base, axis.fields[0])


def grid_settings(axes: list[Axis], base: ExperimentConfig, crossed: bool) -> list[dict]:
    """Every setting of a grid sweep, each a full {axis: value} assignment, without repeats."""
    ranged = [a.name for a in axes if a.is_range]
    if ranged:
        raise ConfigError(f"grid search needs lists of values; {', '.join(ranged)} given as a range "
                          f"(use --search optuna, or list the values: NAME=V1,V2,...)")
    defaults = {a.name: base_value(base, a) for a in axes}
    if crossed:
        combos = itertools.product(*(a.values for a in axes))
        settings = [dict(zip(defaults, combo)) for combo in combos]
    else:
        settings = [{**defaults, a.name: v} for a in axes for v in a.values]
    unique = {json.dumps(s, sort_keys=True): s for s in settings}
    return list(unique.values())


def apply_setting(base: ExperimentConfig, axes: list[Axis], setting: dict) -> ExperimentConfig:
    by_name = {a.name: a for a in axes}
    overrides = [item for name in setting for item in by_name[name].overrides(setting[name])]
    return apply_overrides(copy.deepcopy(base), overrides)


def setting_label(setting: dict) -> str:
    return ",".join(f"{k}={_short(v)}" for k, v in setting.items())


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


QUALITY_SHOWN = ("label_fidelity", "conflict_rate")  # of the synthetic sets, per seed in a trial


@dataclass
class SettingResult:
    """One setting (or the reference method) over seeds; accuracies in %, and for methods on
    synthetic data the synthetic sets' label fidelity and conflict rate (fractions)."""

    method: str
    setting: dict
    test: dict[int, float] = field(default_factory=dict)
    valid: dict[int, float] = field(default_factory=dict)
    label_fidelity: dict[int, float] = field(default_factory=dict)
    conflict_rate: dict[int, float] = field(default_factory=dict)
    cell_runs: dict[int, str] = field(default_factory=dict)
    run_id: str = ""

    @property
    def label(self) -> str:
        return f"{self.method}[{setting_label(self.setting)}]" if self.setting else self.method

    def mean(self, split: str = "test") -> float:
        return float(np.mean(list(getattr(self, split).values())))

    def std(self, split: str = "test") -> float:
        values = list(getattr(self, split).values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    def metrics(self) -> dict[str, float]:
        """What a trial reports to Tune and MLflow: means, stds and every seed's accuracies (and
        quality numbers, as `label_fidelity_mean`, `seed0.label_fidelity`, ...)."""
        out = {"seeds_done": len(self.test)}
        for split in ("test", "valid"):
            if getattr(self, split):
                out[f"{split}_acc_mean"], out[f"{split}_acc_std"] = self.mean(split), self.std(split)
            out.update({f"seed{s}.{split}_acc": v for s, v in getattr(self, split).items()})
        for name in QUALITY_SHOWN:
            if getattr(self, name):
                out[f"{name}_mean"] = self.mean(name)
            out.update({f"seed{s}.{name}": v for s, v in getattr(self, name).items()})
        return out

    @classmethod
    def from_metrics(cls, method: str, setting: dict, metrics: dict, run_id: str = "") -> "SettingResult":
        out = cls(method, dict(setting), run_id=run_id)
        for key, value in metrics.items():
            if key.startswith("seed") and "." in key:
                seed, split = key[4:].split(".", 1)
                getattr(out, split.removesuffix("_acc"))[int(seed)] = float(value)
        return out


def trial_key(method: str, setting: dict, base: ExperimentConfig) -> str:
    """Names a setting's trial run: the method, the setting and the base config it varies."""
    return artifact_key("trial", {"method": method, "setting": setting, "base": flatten(base)})


def evaluate_setting(cfg: ExperimentConfig, method: str, setting: dict, seeds: list[int], tracker: Tracker,
                     run_cell: Callable[[ExperimentConfig, str], CellResult], key: str,
                     on_seed: Callable[[SettingResult], None] | None = None) -> SettingResult:
    """Run `method` with `cfg` over `seeds` (cells come from the cache when built before), as one
    MLflow trial run (role "trial") with every seed's accuracy; `on_seed` sees partial results."""
    exp = tracker.experiment(cfg.run.experiment)
    tracker.kill_running(exp, f"tags.`trial.key` = '{key}'")  # its process died before ending it; this reruns it
    label = setting_label(setting)
    run_id = tracker.start_run(
        exp, f"{method}[{label}]" if setting else method,
        {"dataset": cfg.data.dataset, "ratio": cfg.data.ratio, "method": method, "diffinject.role": "trial",
         "variant": label, "setting": json.dumps(setting, sort_keys=True), "trial.key": key},
        {**flatten(cfg), **{f"sweep.{k}": v for k, v in setting.items()}})
    result = SettingResult(method, dict(setting), run_id=run_id)
    with tracker.ending(run_id):
        for seed in seeds:
            cell = run_cell(with_seed(cfg, seed), method)
            result.test[seed] = 100.0 * cell.metrics["reported_acc"]
            result.valid[seed] = 100.0 * cell.metrics.get("valid_acc", float("nan"))
            result.cell_runs[seed] = cell.run_id
            for name in QUALITY_SHOWN:
                if f"{QUALITY_PREFIX}{name}" in cell.metrics:
                    getattr(result, name)[seed] = float(cell.metrics[f"{QUALITY_PREFIX}{name}"])
            tracker.log_metrics(run_id, result.metrics())
            if on_seed:
                on_seed(result)
        tracker.set_tags(run_id, {"cell_runs": json.dumps(result.cell_runs)})
        return result


def end_stopped_runs(tracker: Tracker, experiment: str, since_ms: int) -> list[str]:
    """After an interrupted sweep, mark the experiment's runs started since `since_ms` (epoch
    ms) that are still RUNNING as KILLED. Ctrl-C reaches the trial processes too, and a trial's
    process can exit before the thread running the trial ends its run."""
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return tracker.kill_running(found.experiment_id, f"attributes.start_time >= {since_ms}")


def finished_trial(tracker: Tracker, experiment: str, key: str) -> SettingResult | None:
    """The latest finished trial run with this key in the experiment, if any."""
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = tracker.client.search_runs([found.experiment_id], f"attributes.status = 'FINISHED' and "
                                      f"tags.`trial.key` = '{key}'", order_by=["attributes.start_time DESC"],
                                      max_results=1)
    if not runs:
        return None
    tags = runs[0].data.tags
    return SettingResult.from_metrics(tags["method"], json.loads(tags["setting"]), runs[0].data.metrics,
                                      runs[0].info.run_id)


def best_setting(results: list[SettingResult]) -> SettingResult:
    """The setting with the best mean validation accuracy (the test split is not for choosing)."""
    return max(results, key=lambda r: (r.mean("valid"), r.mean("test")))


def format_results(results: list[SettingResult], axes: list[Axis], reference: SettingResult | None) -> str:
    """One line per setting, best validation accuracy first; the best is marked, the reference
    (if any) is the first line and every Δ is paired by seed against it."""
    best = best_setting(results)
    header = [a.name for a in axes] + ["seeds", "valid acc", "test acc", "Δ test vs " + reference.method
                                       if reference else ""]
    rows = []
    if reference:
        rows.append(["(" + reference.method + ")"] + [""] * (len(axes) - 1) +
                    [str(len(reference.test)), mean_std(reference.valid.values()), mean_std(reference.test.values()), ""])
    for r in sorted(results, key=lambda r: -r.mean("valid")):
        diff = list(per_seed_difference(r.test, reference.test).values()) if reference else []
        rows.append([_short(r.setting[a.name]) for a in axes] +
                    [str(len(r.test)), mean_std(r.valid.values()), mean_std(r.test.values()),
                     mean_std(diff, signed=True) if reference else ""] + (["<- best"] if r is best else []))
    widths = [max(len(row[i]) for row in [header] + rows if i < len(row)) for i in range(len(header) + 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_csv(path: Path, results: list[SettingResult], axes: list[Axis], reference: SettingResult | None) -> Path:
    with atomic_file(path) as handle:
        out = csv.writer(handle)
        out.writerow(["method"] + [a.name for a in axes] + ["seed", "test_acc", "valid_acc", "cell_run_id",
                                                             *QUALITY_SHOWN])
        for r in ([reference] if reference else []) + results:
            for seed in sorted(r.test):
                quality = [f"{getattr(r, n)[seed]:.4f}" if seed in getattr(r, n) else "" for n in QUALITY_SHOWN]
                out.writerow([r.method] + [r.setting.get(a.name, "") for a in axes] +
                             [seed, f"{r.test[seed]:.4f}", f"{r.valid[seed]:.4f}", r.cell_runs.get(seed, ""), *quality])
    return path


def ablation_plot(path: Path, results: list[SettingResult], axes: list[Axis], base: ExperimentConfig,
                  reference: SettingResult | None, title: str) -> Path:
    """Unbiased test accuracy vs. each swept value: mean with std error bars over seeds, every
    seed a dot. One panel per axis with a line through the settings whose other axes keep the
    preset's value (a sweep alone), plus one line per other combination that varies this axis
    (crossed sweeps); settings no line connects (Optuna's) are drawn as points. The reference
    method is a grey band (mean ± std); the preset's value a dotted line. Where the settings'
    synthetic sets have a quality report, a second y axis shows their label fidelity and
    conflict rate (mean over seeds, dashed) along the preset's line, or the trials' points."""
    from diffinject.core.plots import pyplot, save_figure

    plt = pyplot()
    fig, panels = plt.subplots(1, len(axes), figsize=(4.4 * len(axes), 3.6), squeeze=False)
    for ax, axis in zip(panels[0], axes):
        others = [a for a in axes if a is not axis]
        values = sorted({r.setting[axis.name] for r in results}, key=lambda v: (str(type(v)), v))
        numeric = all(isinstance(v, (int, float)) for v in values)
        position = (lambda v: v) if numeric else values.index
        lines: dict[tuple, list[SettingResult]] = {}
        for r in results:
            lines.setdefault(tuple(r.setting[o.name] for o in others), []).append(r)
        preset = tuple(base_value(base, o) for o in others)
        loose, main = [], None
        for rest, group in sorted(lines.items(), key=lambda kv: (kv[0] != preset, str(kv[0]))):
            if len(group) < 2:
                loose += group
                continue
            group.sort(key=lambda r: values.index(r.setting[axis.name]))
            name = ", ".join(f"{o.name}={_short(v)}" for o, v in zip(others, rest)) or axis.name
            _errorbar(ax, group, axis, position, name + (" (preset)" if rest == preset and others else ""),
                      linewidth=2 if rest == preset else 1)
            main = main or group
        if loose and not any(len(g) > 1 for g in lines.values()):
            _errorbar(ax, loose, axis, position, "trials", linestyle="none")
            main = sorted(loose, key=lambda r: values.index(r.setting[axis.name]))
        _quality_axis(ax, main or [], axis, position)
        if reference:
            m, s = reference.mean(), reference.std()
            ax.axhspan(m - s, m + s, color="gray", alpha=0.2)
            ax.axhline(m, color="gray", linewidth=1, label=f"{reference.method} (mean ± std)")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        if base_value(base, axis) in values or numeric:
            ax.axvline(position(base_value(base, axis)), color="black", linestyle=":", linewidth=0.8)
        ax.set_xlabel(f"{axis.name} ({', '.join(axis.fields)}); dotted: preset")
        ax.set_ylabel("unbiased test accuracy (%)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _quality_axis(ax, group: list[SettingResult], axis: Axis, position) -> None:
    """Label fidelity and conflict rate of `group`'s synthetic sets on a second y axis (0-1)."""
    shown = [(name, [r for r in group if getattr(r, name)]) for name in QUALITY_SHOWN]
    if not any(rows for _, rows in shown):
        return
    twin = ax.twinx()
    for (name, rows), colour in zip(shown, ("tab:green", "tab:red")):
        if rows:
            twin.plot([position(r.setting[axis.name]) for r in rows], [r.mean(name) for r in rows], linestyle="--",
                      marker="s", markersize=4, color=colour, label=name.replace("_", " ") + " (stage 3)")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("synthetic set: fidelity / conflict rate", fontsize=8)
    twin.legend(fontsize=7, loc="lower right")


def _errorbar(ax, group: list[SettingResult], axis: Axis, position, label: str, **style) -> None:
    x = [position(r.setting[axis.name]) for r in group]
    handle = ax.errorbar(x, [r.mean() for r in group], yerr=[r.std() for r in group], capsize=3, marker="o",
                         label=label, **style)
    for xi, r in zip(x, group):
        ax.scatter([xi] * len(r.test), list(r.test.values()), s=8, color=handle.lines[0].get_color(), alpha=0.5,
                   zorder=3)
