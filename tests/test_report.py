"""diffinject.report: the paper-shaped Table 1 (Markdown, CSV, bar chart)."""
import csv

import numpy as np
import pytest

from diffinject.report import PAPER_TABLE1, Table1, paper_number

# (dataset, ratio) -> method -> per-seed unbiased accuracy (fractions, as the trainers report them)
RESULTS = {
    ("colored_digits", "1"): {"vanilla": (0.41, 0.45), "diffinject": (0.80, 0.84)},
    ("colored_digits", "5"): {"vanilla": (0.90, 0.86), "diffinject": (0.70, 0.74)},
}


def test_paper_number():
    assert paper_number("diffinject", "cmnist", "1") == 85.58
    assert paper_number("diffinject", "cmnist", "5") == 92.29
    assert paper_number("lff", "bffhq", "5") == 78.31
    assert paper_number("vanilla", "colored_digits", "1") == PAPER_TABLE1["vanilla"]["cmnist"][0]
    assert paper_number("diffinject", "nosuchdata", "1") is None
    assert paper_number("diffinject", "cmnist", "2") is None
    assert paper_number("disent_be", "cmnist", "1") is None


def _pct(values):
    return [100.0 * v for v in values]


def _ours(values):
    v = _pct(values)
    return f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}"


@pytest.fixture
def table():
    t = Table1(["vanilla", "diffinject", "disent_be"])
    for (dataset, ratio), methods in RESULTS.items():
        for method, accs in methods.items():
            for seed, acc in enumerate(accs):
                t.add(dataset, ratio, method, {"test_acc": acc, "test_aligned_acc": 0.99 - seed / 100,
                                               "test_conflicting_acc": acc - 0.05, "other": 1.0})
    t.add("colored_digits", "1", "disent_be", {"test_acc": 0.5})
    t.add_precision("colored_digits", "1", 0.9)
    t.add_precision("colored_digits", "1", 0.6)
    return t


def _cells(markdown, label):
    line = next(l for l in markdown.splitlines() if l.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_markdown_means_bold_best_and_paper_numbers(table):
    md = table.markdown()
    lines = md.splitlines()
    assert lines[0] == "| method | Colored Digits 1% | Colored Digits 5% |"
    assert lines[1] == "|---|---|---|"

    vanilla, diffinject = _cells(md, "Vanilla"), _cells(md, "DiffInject")
    assert vanilla[0] == f"{_ours(RESULTS['colored_digits', '1']['vanilla'])} (32.59)"
    assert diffinject[0] == f"**{_ours(RESULTS['colored_digits', '1']['diffinject'])}** (85.58)"
    assert vanilla[1] == f"**{_ours(RESULTS['colored_digits', '5']['vanilla'])}** (82.44)"
    assert diffinject[1] == f"{_ours(RESULTS['colored_digits', '5']['diffinject'])} (92.29)"
    assert _ours(RESULTS["colored_digits", "1"]["vanilla"]) == "43.00 ± 2.83"
    assert md.count("**") == 4  # one bold cell per column

    # one seed: std 0, no paper number for a method the paper lacks
    assert _cells(md, "DisEnt + BE") == ["50.00 ± 0.00", "—"]
    assert _cells(md, "A² (paper only)") == ["— (83.92)", "— (91.64)"]
    for label in ("LfF", "DisEnt", "LfF + BE", "AmpliBias"):
        assert len(_cells(md, f"{label} (paper only)")) == 2
    assert md.count("(paper only)") == len(set(PAPER_TABLE1) - set(table.methods))
    assert "Vanilla (paper only)" not in md and "DiffInject (paper only)" not in md
    assert _cells(md, "top-K precision (stage 1)") == ["0.75", "—"]


def test_columns_sorted_by_ratio_number():
    t = Table1(["vanilla"])
    for ratio in ("5", "0.5", "10", "1"):
        t.add("colored_digits", ratio, "vanilla", {"test_acc": 0.5})
    assert t.columns == [("colored_digits", r) for r in ("0.5", "1", "5", "10")]


def test_csv_rows_per_column_and_method(table, tmp_path):
    path = table.write_csv(tmp_path / "out" / "table1.csv")
    assert path == tmp_path / "out" / "table1.csv"
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["dataset", "ratio", "method", "seeds", "unbiased_mean", "unbiased_std", "aligned_mean",
                       "conflicting_mean", "paper_unbiased", "unbiased_per_seed", "label_fidelity", "conflict_rate",
                       "useful_rate", "class_oracle_acc", "bias_oracle_acc", "minus_vanilla_mean", "minus_vanilla_std"]
    body = {(r[0], r[1], r[2]): dict(zip(rows[0], r)) for r in rows[1:]}
    assert list(body) == [("colored_digits", "1", "vanilla"), ("colored_digits", "1", "diffinject"),
                          ("colored_digits", "1", "disent_be"), ("colored_digits", "5", "vanilla"),
                          ("colored_digits", "5", "diffinject")]
    row = body["colored_digits", "1", "vanilla"]
    v = _pct(RESULTS["colored_digits", "1"]["vanilla"])
    assert row["seeds"] == "2"
    assert float(row["unbiased_mean"]) == pytest.approx(np.mean(v), abs=1e-4)
    assert float(row["unbiased_std"]) == pytest.approx(np.std(v, ddof=1), abs=1e-4)
    assert float(row["aligned_mean"]) == pytest.approx(98.5, abs=1e-4)
    assert float(row["conflicting_mean"]) == pytest.approx(np.mean(v) - 5, abs=1e-4)
    assert row["paper_unbiased"] == "32.59"
    assert [float(x) for x in row["unbiased_per_seed"].split()] == pytest.approx(v, abs=1e-4)
    assert body["colored_digits", "5", "diffinject"]["paper_unbiased"] == "92.29"
    only = body["colored_digits", "1", "disent_be"]
    assert only["paper_unbiased"] == "" and only["seeds"] == "1" and only["unbiased_std"] == "0.0000"
    assert only["aligned_mean"] == "" and only["conflicting_mean"] == ""
    assert [p.name for p in path.parent.iterdir()] == ["table1.csv"]


def test_bar_chart_writes_a_png_and_no_temporaries(table, tmp_path):
    (tmp_path / "charts").mkdir()
    path = table.bar_chart(tmp_path / "charts" / "table1.png", "Table 1")
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "charts").iterdir()] == ["table1.png"]


def test_detail_markdown_has_aligned_and_conflicting(table):
    lines = table.detail_markdown().splitlines()
    assert lines[0] == "| dataset | ratio | method | seeds | unbiased | aligned | conflicting |"
    row = next(l for l in lines if l.startswith("| colored_digits | 1% | vanilla |"))
    v = _pct(RESULTS["colored_digits", "1"]["vanilla"])
    conflicting = [x - 5 for x in v]
    assert row == (f"| colored_digits | 1% | vanilla | 2 | {np.mean(v):.2f} ± {np.std(v, ddof=1):.2f} | "
                   f"98.50 ± 0.71 | {np.mean(conflicting):.2f} ± {np.std(conflicting, ddof=1):.2f} |")
    assert "| colored_digits | 1% | disent_be | 1 | 50.00 ± 0.00 | — | — |" in lines
    assert len(lines) == 2 + 5


def test_notes_name_the_compared_paper_column(table):
    assert "Colored MNIST" in table.notes(3) and "3 seed(s)" in table.notes(3)


def test_stats_of_a_missing_column_does_not_add_it():
    t = Table1(["vanilla"])
    t.add("colored_digits", "1", "vanilla", {"test_acc": 0.5})
    assert t.stats(("colored_digits", "5"), "vanilla") is None
    assert t.columns == [("colored_digits", "1")]


def test_no_precision_row_when_no_method_ran_stage_1():
    t = Table1(["vanilla", "lff"])
    t.add("colored_digits", "1", "vanilla", {"test_acc": 0.5})
    assert "top-K precision" not in t.markdown()
    t.add_precision("colored_digits", "1", 0.8)
    assert _cells(t.markdown(), "top-K precision (stage 1)") == ["0.80"]


def test_metrics_of_the_table_run_are_the_numbers_the_table_shows(table):
    metrics, md = table.metrics(), table.markdown()
    for column, ratio in enumerate(("1", "5")):
        for method, label in (("vanilla", "Vanilla"), ("diffinject", "DiffInject")):
            shown = _cells(md, label)[column].strip("*").split(" (")[0].strip("*")
            prefix = f"colored_digits/{ratio}/{method}"
            assert f"{metrics[f'{prefix}/unbiased_acc_pct_mean']:.2f} ± " \
                   f"{metrics[f'{prefix}/unbiased_acc_pct_std']:.2f}" == shown
            assert metrics[f"{prefix}/seeds"] == 2
            detail = next(l for l in table.detail_markdown().splitlines() if f"| {ratio}% | {method} |" in l)
            aligned, conflicting = (c.split(" ± ")[0].strip() for c in detail.strip("|").split("|")[5:7])
            assert f"{metrics[f'{prefix}/aligned_acc_pct_mean']:.2f}" == aligned
            assert f"{metrics[f'{prefix}/conflicting_acc_pct_mean']:.2f}" == conflicting
    assert metrics["colored_digits/1/disent_be/seeds"] == 1 and "colored_digits/5/disent_be/seeds" not in metrics
    assert f"{metrics['colored_digits/1/top_k_precision']:.2f}" == _cells(md, "top-K precision (stage 1)")[0]
    assert "colored_digits/5/top_k_precision" not in metrics


def test_quality_rows_under_precision_in_markdown_csv_and_metrics(tmp_path):
    """The DiffInject cells' synthetic-set quality: mean over seeds per column, in the table's
    rows under precision@K, the CSV's columns and the table run's metrics."""
    t = Table1(["vanilla", "diffinject"])
    t.add("colored_digits", "1", "vanilla", {"test_acc": 0.5})
    for seed, (fidelity, conflict) in enumerate(((0.8, 0.5), (0.6, 0.7))):
        t.add("colored_digits", "1", "diffinject", {
            "test_acc": 0.7, "quality.label_fidelity": fidelity, "quality.conflict_rate": conflict,
            "quality.useful_rate": fidelity * conflict, "quality.class_oracle_acc": 0.96 + 2 * seed / 100,
            "quality.bias_oracle_acc": 1.0, "quality.shows_original": 0.1})
    t.add("colored_digits", "5", "diffinject", {"test_acc": 0.8})  # a cell without a report
    t.add_precision("colored_digits", "1", 0.9)
    md = t.markdown()
    names = [line.split("|")[1].strip() for line in md.splitlines()[2:]]
    assert names[-5:] == ["top-K precision (stage 1)", "label fidelity (stage 3)", "conflict rate (stage 3)",
                          "useful (fidelity x conflict)", "oracle accuracy class / bias"]
    assert _cells(md, "label fidelity (stage 3)") == ["0.70", "—"]
    assert _cells(md, "conflict rate (stage 3)") == ["0.60", "—"]
    assert _cells(md, "useful (fidelity x conflict)") == [f"{(0.4 + 0.42) / 2:.2f}", "—"]
    assert _cells(md, "oracle accuracy class / bias") == ["0.97 / 1.00", "— / —"]
    metrics = t.metrics()
    assert metrics["colored_digits/1/quality/label_fidelity"] == 0.7
    assert metrics["colored_digits/1/quality/class_oracle_acc"] == 0.97
    assert not any(k.startswith("colored_digits/5/quality") for k in metrics)
    with open(t.write_csv(tmp_path / "t.csv"), newline="") as handle:
        rows = {(r["ratio"], r["method"]): r for r in csv.DictReader(handle)}
    assert float(rows["1", "diffinject"]["label_fidelity"]) == pytest.approx(0.7)
    assert float(rows["1", "diffinject"]["conflict_rate"]) == pytest.approx(0.6)
    assert rows["1", "vanilla"]["label_fidelity"] == "" and rows["5", "diffinject"]["conflict_rate"] == ""
    assert "label fidelity" not in Table1(["vanilla"]).markdown()


def test_paired_difference_to_vanilla_matches_seeds_and_is_in_markdown_csv_metrics(tmp_path):
    t = Table1(["vanilla", "diffinject"])
    vanilla = {0: 0.30, 1: 0.40, 2: 0.35, 3: 0.50}
    diffinject = {0: 0.36, 1: 0.41, 2: 0.45, 4: 0.99}  # seed 3 / seed 4 ran for one method only: not paired
    for seed, acc in vanilla.items():
        t.add("colored_digits", "1", "vanilla", {"test_acc": acc}, seed)
    for seed, acc in reversed(list(diffinject.items())):  # the order cells finish in does not matter
        t.add("colored_digits", "1", "diffinject", {"test_acc": acc}, seed)
    d = np.array([6.0, 1.0, 10.0])
    mean, std, n = t.paired(("colored_digits", "1"), "diffinject")
    assert n == 3 and mean == pytest.approx(d.mean()) and std == pytest.approx(d.std(ddof=1))
    assert t.paired(("colored_digits", "1"), "vanilla") is None
    md = t.markdown()
    assert _cells(md, "DiffInject − Vanilla (paired per seed)") == [f"+{d.mean():.2f} ± {d.std(ddof=1):.2f} (3 seeds)"]
    metrics = t.metrics()
    assert metrics["colored_digits/1/diffinject/minus_vanilla_pct_mean"] == round(d.mean(), 2)
    assert metrics["colored_digits/1/diffinject/minus_vanilla_pct_std"] == round(d.std(ddof=1), 2)
    rows = list(csv.DictReader(t.write_csv(tmp_path / "t.csv").open()))
    (row,) = [r for r in rows if r["method"] == "diffinject"]
    assert float(row["minus_vanilla_mean"]) == pytest.approx(d.mean(), abs=1e-4) and [r["minus_vanilla_mean"] for r in rows
                                                                           if r["method"] == "vanilla"] == [""]
    assert "paired per seed" not in Table1(["diffinject"]).markdown()
