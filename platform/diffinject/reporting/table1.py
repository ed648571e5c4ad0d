"""Table 1 reports: the paper's shape (methods x dataset/ratio, unbiased accuracy mean ± std
over seeds, best in bold), the paper's own numbers beside ours, Markdown, CSV and a bar chart.

Every cell carries its reported test accuracy (BFFHQ: the bias-conflicting test images only)
under three model selections from the same run (core.vocabulary.SELECTIONS): the valid-selected weights
(the table), the best test accuracy of any evaluation (the reference repositories' practice:
a second table, like for like with the paper) and the last weights.
"""
from __future__ import annotations

import csv
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from diffinject.core.atomic import atomic_file
from diffinject.core.plots import pyplot, save_figure
from diffinject.core.vocabulary import SELECTIONS
from diffinject.data.registry import DATASETS, get_dataset_spec
from diffinject.reporting.runs import mean_std, paired_difference
from diffinject.stages.quality.metrics import unprefixed
from diffinject.tracking.descriptions import HEADLINE, run_link

# Table 1 of the paper: unbiased test accuracy (%), at 1% and 5% bias-conflicting samples.
PAPER_TABLE1 = {
    "vanilla": {"cmnist": (32.59, 82.44), "cifar10c": (23.62, 41.68), "bffhq": (60.68, 83.36),
                "dogs_and_cats": (73.01, 83.51)},
    "lff": {"cmnist": (74.23, 85.33), "cifar10c": (33.57, 49.47), "bffhq": (69.89, 78.31),
            "dogs_and_cats": (69.92, 82.92)},
    "disent": {"cmnist": (78.89, 89.60), "cifar10c": (36.49, 51.88), "bffhq": (66.00, 80.68),
               "dogs_and_cats": (69.49, 82.78)},
    "lff_be": {"cmnist": (81.17, 90.04), "cifar10c": (34.77, 52.16), "bffhq": (75.08, 85.48),
               "dogs_and_cats": (81.52, 88.60)},
    "a2": {"cmnist": (83.92, 91.64), "cifar10c": (27.54, 37.60), "bffhq": (78.98, 86.22),
           "dogs_and_cats": (71.15, 83.07)},
    "amplibias": {"cmnist": (67.79, 74.88), "cifar10c": (45.95, 52.22), "bffhq": (81.80, 87.34),
                  "dogs_and_cats": (73.30, 84.67)},
    "diffinject": {"cmnist": (85.58, 92.29), "cifar10c": (28.24, 33.11), "bffhq": (81.90, 89.90),
                   "dogs_and_cats": (82.35, 93.60)},
}
PAPER_RATIOS = ("1", "5")
DISPLAY = {"vanilla": "Vanilla", "lff": "LfF", "disent": "DisEnt", "lff_be": "LfF + BE", "disent_be": "DisEnt + BE",
           "a2": "A²", "amplibias": "AmpliBias", "diffinject": "DiffInject", "cmnist": "Colored MNIST",
           "cifar10c": "Corrupted CIFAR-10", "bffhq": "BFFHQ", "dogs_and_cats": "Dogs & Cats",
           "colored_digits": "Colored Digits", "colored_mnist_5k": "Colored MNIST 5k"}
# the reported test accuracy under each selection, then the whole test split's, its aligned and conflicting parts
METRICS = ("reported_acc", "reported_acc_best_test", "reported_acc_last", "test_acc", "test_aligned_acc",
           "test_conflicting_acc")
# what the note under the table says of each baseline protocol (baselines.protocol)
BASELINES_NOTES = {"reference": " Every method trains as its reference repository trains it (`--baselines reference`; "
                                "DiffInject's stage 4 as Vanilla).",
                   "uniform": " Every method trains with the same classifier settings (`--baselines uniform`)."}
SELECTION_TITLES = {"selected": "valid-selected", "best_test": "best on test (references)", "last": "last weights"}
# the paired per-seed differences the table reports: every other method's, against Vanilla
PAIRED_REFERENCE = "vanilla"
# training images of the paper's datasets an embedded stand-in is compared with (LfF's Colored MNIST:
# the MNIST training set), said beside the paper's numbers
PAPER_TRAIN_IMAGES = {"cmnist": 60_000}
# the synthetic sets' quality report (fractions, from the cells of methods on synthetic data): one row
# per method with its set's three shares, and one with the oracles' accuracy (the dataset's)
QUALITY = ("label_fidelity", "conflict_rate", "useful_rate", "class_oracle_acc", "bias_oracle_acc")
SET_QUALITY = ("label_fidelity", "conflict_rate", "useful_rate")
ORACLE_QUALITY = ("class_oracle_acc", "bias_oracle_acc")


def column_title(dataset: str, ratio: str) -> str:
    """"Colored Digits 1%"; "BFFHQ 1% (conflicting)" where the test accuracy is the bias-conflicting images'."""
    conflicting = get_dataset_spec(dataset).reported_test == "conflicting_acc"
    return f"{DISPLAY.get(dataset, dataset)} {ratio}%" + (" (conflicting)" if conflicting else "")


def stood_in_for(dataset: str) -> str | None:
    """The paper's dataset an embedded one is compared with (DatasetSpec.paper_dataset), else None."""
    return DATASETS[dataset].paper_dataset if dataset in DATASETS else None


def paper_number(method: str, dataset: str, ratio: str) -> float | None:
    row = PAPER_TABLE1.get(method, {}).get(stood_in_for(dataset) or dataset)
    if row is None or ratio not in PAPER_RATIOS:
        return None
    return row[PAPER_RATIOS.index(ratio)]


class Table1:
    """Per-seed results: (dataset, ratio) -> method -> metric -> [values in %]."""

    def __init__(self, methods: list[str], protocol: str | None = None, baselines: str | None = None,
                 quick: bool = False):
        self.methods = list(methods)
        self.quick = quick  # trained at the quick lengths (said in the note under the table)
        self.protocol = protocol  # DiffInject's (injection.protocol), shown beside its name
        self.baselines = baselines  # how the methods trained (baselines.protocol), said under the table
        self.values: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        self.precision: dict = defaultdict(list)  # (dataset, ratio) -> [precision@K over seeds]
        # (dataset, ratio) -> method -> quality metric -> [fraction over seeds]
        self.quality: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        # (dataset, ratio) -> metric -> method -> seed -> accuracy (%), for the paired differences
        self.by_seed: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
        self.valid_conflict: dict = defaultdict(list)  # (dataset, ratio) -> conflict share of the valid split

    def add(self, dataset: str, ratio: str, method: str, metrics: dict, seed: int | None = None) -> None:
        """A cell's metrics: its accuracies, and the quality report of its synthetic set if any;
        `seed` pairs it with the other methods' cells of that seed (`paired`)."""
        if seed is not None:
            for metric in SELECTIONS.values():
                if metric in metrics:
                    self.by_seed[(dataset, ratio)][metric][method][int(seed)] = 100.0 * float(metrics[metric])
        if "valid_conflict_share" in metrics:
            self.valid_conflict[(dataset, ratio)].append(float(metrics["valid_conflict_share"]))
        for metric in METRICS:
            if metric in metrics:
                self.values[(dataset, ratio)][method][metric].append(100.0 * float(metrics[metric]))
        for name, value in unprefixed(metrics).items():
            if name in QUALITY:
                self.quality[(dataset, ratio)][method][name].append(value)

    def quality_mean(self, column, name: str, method: str | None = None) -> float | None:
        """Mean over seeds (and over the methods on synthetic data, unless `method`)."""
        per_method = self.quality.get(column, {})
        values = [v for m, got in per_method.items() if method in (None, m) for v in got.get(name, [])]
        return float(np.mean(values)) if values else None

    def add_precision(self, dataset: str, ratio: str, precision: float) -> None:
        self.precision[(dataset, ratio)].append(float(precision))

    @property
    def columns(self) -> list[tuple[str, str]]:
        return sorted(self.values, key=lambda c: (c[0], float(c[1])))

    def _seeds(self, column, method, metric="reported_acc") -> list[float]:
        return self.values.get(column, {}).get(method, {}).get(metric, [])

    def stats(self, column, method, metric="reported_acc") -> tuple[float, float, int] | None:
        v = self._seeds(column, method, metric)
        if not v:
            return None
        return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)

    def paired(self, column, method: str, reference: str = PAIRED_REFERENCE,
               metric: str = "reported_acc") -> tuple[float, float, int] | None:
        """Mean and std (ddof 1) over the seeds both ran of `method`'s accuracy (`metric`: a
        selection's) minus `reference`'s, and the number of those seeds (None when they share none)."""
        if method == reference:
            return None
        seeds = self.by_seed.get(column, {}).get(metric, {})
        return paired_difference(seeds.get(method, {}), seeds.get(reference, {}))

    def inflation(self, column, method: str) -> tuple[float, float, int] | None:
        """Per seed, the best-on-test accuracy minus the valid-selected one: what the references'
        selection adds (mean, std ddof 1, seeds)."""
        seeds = self.by_seed.get(column, {})
        return paired_difference(seeds.get("reported_acc_best_test", {}).get(method, {}),
                                  seeds.get("reported_acc", {}).get(method, {}))

    def _paired_methods(self) -> list[str]:
        return [m for m in self.methods if m != PAIRED_REFERENCE] if PAIRED_REFERENCE in self.methods else []

    def _best(self, column, metric: str = "reported_acc") -> str | None:
        means = {m: s[0] for m in self.methods if (s := self.stats(column, m, metric))}
        return max(means, key=means.get) if means else None

    def metrics(self) -> dict[str, float]:
        """The table's numbers (%, rounded as it shows them) as MLflow metric names:
        `<dataset>/<ratio>/<method>/unbiased_acc_pct_mean` and `_std`, `aligned_acc_pct_mean`,
        `conflicting_acc_pct_mean`, `seeds`; `<dataset>/<ratio>/top_k_precision` (stage 1);
        `<dataset>/<ratio>/<method>/quality/<name>` (its synthetic set's quality report, stage 3) and
        `<dataset>/<ratio>/quality/<oracle>_acc` (the scoring oracles' accuracy)."""
        out = {}
        for column in self.columns:
            prefix = "/".join(column)
            for method in self.methods:
                unbiased = self.stats(column, method)
                if unbiased is None:
                    continue
                out[f"{prefix}/{method}/{HEADLINE}_mean"] = round(unbiased[0], 2)
                out[f"{prefix}/{method}/{HEADLINE}_std"] = round(unbiased[1], 2)
                out[f"{prefix}/{method}/seeds"] = unbiased[2]
                for name, metric in (("aligned", "test_aligned_acc"), ("conflicting", "test_conflicting_acc"),
                                     ("best_test", "reported_acc_best_test"), ("last", "reported_acc_last")):
                    if (stats := self.stats(column, method, metric)) is not None:
                        out[f"{prefix}/{method}/{name}_acc_pct_mean"] = round(stats[0], 2)
            for method in self._paired_methods():
                if (d := self.paired(column, method)) is not None:
                    out[f"{prefix}/{method}/minus_{PAIRED_REFERENCE}_pct_mean"] = round(d[0], 2)
                    out[f"{prefix}/{method}/minus_{PAIRED_REFERENCE}_pct_std"] = round(d[1], 2)
                if (d := self.paired(column, method, metric="reported_acc_best_test")) is not None:
                    out[f"{prefix}/{method}/best_test_minus_{PAIRED_REFERENCE}_pct_mean"] = round(d[0], 2)
                    out[f"{prefix}/{method}/best_test_minus_{PAIRED_REFERENCE}_pct_std"] = round(d[1], 2)
            if self.precision.get(column):
                out[f"{prefix}/top_k_precision"] = round(float(np.mean(self.precision[column])), 2)
            for name in ORACLE_QUALITY:
                if (mean := self.quality_mean(column, name)) is not None:
                    out[f"{prefix}/quality/{name}"] = round(mean, 2)
            for method in self.methods:
                for name in SET_QUALITY:
                    if (mean := self.quality_mean(column, name, method)) is not None:
                        out[f"{prefix}/{method}/quality/{name}"] = round(mean, 2)
        return out

    def markdown(self, selection: str = "selected") -> str:
        """The paper-shaped table: unbiased accuracy, ours (mean ± std, best in bold) and the paper's;
        of the valid-selected weights, or under another `selection` (SELECTIONS: then
        without the stage rows); each method's paired difference to Vanilla under it."""
        metric = SELECTIONS[selection]
        cols = self.columns
        header = ["method"] + [column_title(d, r) for d, r in cols]
        rows = []
        best = {column: self._best(column, metric) for column in cols}
        paper_only = [m for m in PAPER_TABLE1 if m not in self.methods]
        for method in self.methods + paper_only:
            row = [self.label(method) + (" (paper only)" if method in paper_only else "")]
            for column in cols:
                ours = mean_std(self._seeds(column, method, metric))
                if method == best[column]:
                    ours = f"**{ours}**"
                paper = paper_number(method, *column)
                row.append(ours + (f" ({paper:.2f})" if paper is not None else ""))
            rows.append(row)
        for method in self._paired_methods():
            row = [f"{DISPLAY.get(method, method)} − {DISPLAY[PAIRED_REFERENCE]} (paired per seed)"]
            for column in cols:
                d = self.paired(column, method, metric=metric)
                row.append("—" if d is None else f"{d[0]:+.2f} ± {d[1]:.2f} ({d[2]} seeds)")
            rows.append(row)
        if selection != "selected":
            return _markdown_table(header, rows)
        if self.precision:  # only when a method of the table runs stage 1
            precision = ["top-K precision (stage 1)"]
            for column in cols:
                p = self.precision.get(column)
                precision.append(f"{np.mean(p):.2f}" if p else "—")
            rows.append(precision)
        if self.quality:  # only when a method of the table trains on a synthetic set
            synthetic = [m for m in self.methods if any(m in self.quality.get(c, {}) for c in cols)]
            rows += [[f"{self.label(m)} set: label fidelity / conflict rate / useful (stage 3)",
                      *(self._quality_cell(c, SET_QUALITY, m) for c in cols)] for m in synthetic]
            rows.append(["oracle accuracy class / bias", *(self._quality_cell(c, ORACLE_QUALITY) for c in cols)])
        return _markdown_table(header, rows)

    def _quality_cell(self, column, names, method: str | None = None) -> str:
        return " / ".join("—" if (m := self.quality_mean(column, name, method)) is None else f"{m:.2f}" for name in names)

    def selection_markdown(self) -> str:
        """Per column and method, the reported accuracy under each selection, and per seed what
        the references' best-on-test selection adds to the valid-selected number."""
        header = ["dataset", "ratio", "method", *SELECTION_TITLES.values(), "best on test − valid-selected"]
        rows = []
        for column in self.columns:
            for method in self.methods:
                if self.stats(column, method) is None:
                    continue
                d = self.inflation(column, method)
                rows.append([DISPLAY.get(column[0], column[0]), f"{column[1]}%", self.label(method),
                             *(mean_std(self._seeds(column, method, SELECTIONS[s])) for s in SELECTION_TITLES),
                             "—" if d is None else f"{d[0]:+.2f} ± {d[1]:.2f}"])
        return _markdown_table(header, rows)

    def label(self, method: str) -> str:
        """The method's display name; DiffInject's with its protocol, e.g. "DiffInject (release)"."""
        name = DISPLAY.get(method, method)
        return f"{name} ({self.protocol})" if method == "diffinject" and self.protocol and method in self.methods else name

    def notes(self, seeds: int) -> str:
        stand_ins = list(dict.fromkeys(d for d, _ in self.columns if stood_in_for(d)))
        compared = sorted({stood_in_for(d) for d in stand_ins})
        text = (f"Unbiased test accuracy (%), mean ± std over {seeds} seed(s), of the weights with the best "
                f"validation accuracy; best of ours in bold; the paper's Table 1 number in parentheses.")
        if stand_ins:
            text += f" {self.differences(stand_ins, compared)}"
        if self.baselines:
            text += BASELINES_NOTES[self.baselines]
        if any(d == "bffhq" for d, _ in self.columns):
            text += (" BFFHQ: accuracy on the bias-conflicting test images only, as DisEnt, BiasEnsemble and the "
                     "DiffInject release score it (the whole test folder's is in the detail table).")
        shares = [f"{DISPLAY.get(d, d)} {r}% {np.mean(v):.2f}" for (d, r), v in sorted(self.valid_conflict.items())]
        if shares:
            text += (" Selected on the validation split; its share of bias-conflicting images: "
                     + ", ".join(shares) + " (a split as biased as the training one favours the most biased weights).")
        return text

    def differences(self, stand_ins: list[str], compared: list[str]) -> str:
        """One sentence: what differs between the embedded stand-ins' columns and the paper's."""
        ours = " and ".join(_with_images(DISPLAY.get(d, d), _train_images(d)) for d in stand_ins)
        theirs = ", ".join(_with_images(DISPLAY[c], PAPER_TRAIN_IMAGES.get(c)) for c in compared)
        lengths = ", at the quick lengths (docs/table1.md)," if self.quick else ""
        return (f"What differs from the paper: ours train on the embedded {ours}{lengths} and are selected on the "
                f"validation split, while the paper's numbers are for its {theirs} and are the best test accuracy "
                f"during training (ours so selected: the next table).")

    def chart_caption(self) -> str:
        """What the chart's bars and marks are: whose numbers, on what data, under which selection."""
        seeds = max((s[2] for c in self.columns for m in self.methods if (s := self.stats(c, m))), default=0)
        ours = ", ".join(dict.fromkeys(_with_images(DISPLAY.get(d, d), _train_images(d)) for d, _ in self.columns))
        papers = ", ".join(dict.fromkeys(_with_images(DISPLAY.get(p, p), PAPER_TRAIN_IMAGES.get(p))
                                         for d, _ in self.columns if (p := stood_in_for(d) or d)))
        return (f"Bars: ours on {ours}, mean ± std over {seeds} seed(s), the weights with the best validation "
                f"accuracy. Diamonds: ours, best test accuracy during training. Black dashes: the paper's Table 1 "
                f"({papers}; best test accuracy during training).")

    def references_notes(self) -> str:
        return ("As the references report: the best test accuracy of any evaluation during training, from the same "
                "runs. It selects on the test set, so it is optimistic; the valid-selected table is this platform's "
                "number. The selection table gives all three per method.")

    def detail_markdown(self) -> str:
        """Per method and column, of the valid-selected weights: the reported accuracy, the whole
        test split's, and its aligned and conflicting parts."""
        shown = ("reported_acc", "test_acc", "test_aligned_acc", "test_conflicting_acc")
        lines = ["| dataset | ratio | method | seeds | reported | whole test | aligned | conflicting |",
                 "|---|---|---|---|---|---|---|---|"]
        for column in self.columns:
            for method in self.methods:
                first = self.stats(column, method)
                if first is None:
                    continue
                cells = [mean_std(self._seeds(column, method, m)) for m in shown]
                lines.append(f"| {column[0]} | {column[1]}% | {method} | {first[2]} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def write_csv(self, path: Path) -> Path:
        with atomic_file(path) as handle:
            writer = csv.writer(handle)
            writer.writerow(["dataset", "ratio", "method", "seeds", "unbiased_mean", "unbiased_std", "aligned_mean",
                             "conflicting_mean", "paper_unbiased", "unbiased_per_seed", *QUALITY,
                             f"minus_{PAIRED_REFERENCE}_mean", f"minus_{PAIRED_REFERENCE}_std",
                             "best_test_mean", "best_test_std", "last_mean", "last_std", "whole_test_mean",
                             "valid_conflict_share", f"best_test_minus_{PAIRED_REFERENCE}_mean",
                             f"best_test_minus_{PAIRED_REFERENCE}_std"])
            for column in self.columns:
                for method in self.methods:
                    s = self.stats(column, method)
                    if s is None:
                        continue
                    aligned, conflicting = (self.stats(column, method, m) for m in ("test_aligned_acc",
                                                                                    "test_conflicting_acc"))
                    extra = [self.stats(column, method, m) for m in ("reported_acc_best_test", "reported_acc_last")]
                    whole = self.stats(column, method, "test_acc")
                    share = self.valid_conflict.get(column)
                    paper = paper_number(method, *column)
                    writer.writerow([column[0], column[1], method, s[2], f"{s[0]:.4f}", f"{s[1]:.4f}",
                                     f"{aligned[0]:.4f}" if aligned else "", f"{conflicting[0]:.4f}" if conflicting else "",
                                     "" if paper is None else f"{paper:.2f}",
                                     " ".join(f"{v:.4f}" for v in self.values[column][method]["reported_acc"]),
                                     *("" if (q := self.quality_mean(column, name, method)) is None else f"{q:.4f}"
                                       for name in QUALITY),
                                     *(("", "") if (d := self.paired(column, method)) is None
                                       else (f"{d[0]:.4f}", f"{d[1]:.4f}")),
                                     *(v for e in extra for v in (("", "") if e is None else (f"{e[0]:.4f}", f"{e[1]:.4f}"))),
                                     "" if whole is None else f"{whole[0]:.4f}",
                                     "" if not share else f"{np.mean(share):.4f}",
                                     *(("", "") if (d := self.paired(column, method, metric="reported_acc_best_test"))
                                       is None else (f"{d[0]:.4f}", f"{d[1]:.4f}"))])
        return Path(path)

    def bar_chart(self, path: Path, title: str) -> Path:
        """Grouped bars per dataset/ratio: ours (valid-selected) with std error bars, ours best on
        test as a diamond, the paper's number as a dash; title and caption wrapped to the width."""
        plt = pyplot()
        cols, methods = self.columns, self.methods
        width_in = max(6.4, 1.2 * len(cols) * len(methods) / 3 + 2)
        caption = textwrap.fill(self.chart_caption(), _chars(width_in, 7))
        fig, ax = plt.subplots(figsize=(width_in, 4.6 + 0.14 * caption.count("\n")))
        width = 0.8 / max(len(methods), 1)
        colors = plt.get_cmap("tab10")
        for j, method in enumerate(methods):
            xs, means, stds, best, paper_x, paper_y = [], [], [], [], [], []
            for i, column in enumerate(cols):
                x = i + (j - (len(methods) - 1) / 2) * width
                s = self.stats(column, method)
                if s is not None:
                    xs.append(x)
                    means.append(s[0])
                    stds.append(s[1])
                    best.append(self.stats(column, method, "reported_acc_best_test"))
                p = paper_number(method, *column)
                if p is not None:
                    paper_x.append(x)
                    paper_y.append(p)
            ax.bar(xs, means, width, yerr=stds, capsize=2, color=colors(j % 10), label=self.label(method))
            shown = [(x, b[0]) for x, b in zip(xs, best) if b is not None]
            ax.scatter([x for x, _ in shown], [y for _, y in shown], marker="D", s=18, color="white",
                       edgecolors="black", linewidths=0.8, zorder=4,
                       label="ours, best on test" if j == 0 and shown else None)
            ax.scatter(paper_x, paper_y, marker="_", s=120, color="black", zorder=3,
                       label="paper (best on test)" if j == 0 and paper_x else None)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([f"{DISPLAY.get(d, d)}\n{r}%" for d, r in cols], fontsize=8)
        ax.set_ylabel("unbiased test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(textwrap.fill(title, _chars(width_in, 9)), fontsize=9)
        ax.legend(fontsize=7, ncol=4, loc="upper left")
        fig.text(0.01, 0.01, caption, fontsize=7, va="bottom", ha="left")
        fig.tight_layout(rect=(0, 0.03 + 0.025 * (caption.count("\n") + 1), 1, 1))
        return save_figure(fig, path)


def _chars(width_in: float, fontsize: float) -> int:
    """About how many characters of a `fontsize` text fit a `width_in` inch wide figure."""
    return int(width_in * 72 / (0.55 * fontsize)) - 4


def _train_images(dataset: str) -> int | None:
    return DATASETS[dataset].train_images if dataset in DATASETS else None


def _with_images(name: str, images: int | None) -> str:
    return name if images is None else f"{name} ({images:,} training images)"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table_note(table: Table1, text: str, results: list, experiment_id: str) -> str:
    """The table run's description: the table (`text`), where its numbers are, and links to its cell runs
    (`results`: the cells' results, each with dataset, ratio, method, seed and run_id)."""
    lines = [text, "", f"This run's metrics are the table's numbers (`<dataset>/<ratio>/<method>/{HEADLINE}_mean`, "
             "`_std`, ...): over the cell runs below, the mean and sample std of `reported_acc` in %, rounded as "
             "in the table.", "", "| dataset | ratio | method | cell runs |", "|---|---|---|---|"]
    by_row: dict = {}
    for r in sorted(results, key=lambda r: (r.dataset, float(r.ratio), table.methods.index(r.method), r.seed)):
        by_row.setdefault((r.dataset, r.ratio, r.method), []).append(run_link(experiment_id, r.run_id, f"s{r.seed}"))
    lines += [f"| {d} | {ratio}% | {m} | {' '.join(links)} |" for (d, ratio, m), links in by_row.items()]
    return "\n".join(lines) + "\n"
