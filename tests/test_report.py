"""diffinject.reporting.table1: the paper-shaped Table 1 (Markdown, CSV, bar chart)."""
import csv

import numpy as np
import pytest

from diffinject.reporting.table1 import PAPER_TABLE1, Table1, paper_number

# (dataset, ratio) -> method -> per-seed reported accuracy of the valid-selected weights (fractions, as
# the trainers report them)
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


def _best_test(acc, seed):
    return acc + 0.02 + seed / 100  # what the references' selection adds: 2 points at seed 0, 3 at seed 1


def _cell_metrics(acc, seed, ratio):
    """A cell's final metrics: `acc` the reported accuracy of the valid-selected weights; the other
    selections, the whole test split's accuracy and the valid split's conflict share differ from it."""
    return {"reported_acc": acc, "reported_acc_best_test": _best_test(acc, seed), "reported_acc_last": acc - 0.01,
            "test_acc": acc + 0.01, "test_aligned_acc": 0.99 - seed / 100, "test_conflicting_acc": acc - 0.05,
            "valid_conflict_share": float(ratio) / 100, "other": 1.0}


@pytest.fixture
def table():
    t = Table1(["vanilla", "diffinject", "disent_be"])
    for (dataset, ratio), methods in RESULTS.items():
        for method, accs in methods.items():
            for seed, acc in enumerate(accs):
                t.add(dataset, ratio, method, _cell_metrics(acc, seed, ratio), seed)
    t.add("colored_digits", "1", "disent_be", {"reported_acc": 0.5, "test_acc": 0.4})
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


def test_the_other_selections_tables_read_their_own_accuracy(table):
    """markdown("best_test") is the references' selection, markdown("last") the last weights':
    the same table, bold and paper numbers included, with its own paired differences to Vanilla and
    without the stage rows."""
    md = table.markdown("best_test")
    assert md.splitlines()[:2] == table.markdown().splitlines()[:2]
    best = {key: [_best_test(acc, seed) for seed, acc in enumerate(accs)]
            for key, accs in RESULTS["colored_digits", "1"].items()}
    assert _cells(md, "Vanilla")[0] == f"{_ours(best['vanilla'])} (32.59)"
    assert _cells(md, "DiffInject")[0] == f"**{_ours(best['diffinject'])}** (85.58)"
    assert _cells(md, "DisEnt + BE") == ["—", "—"]  # its one cell has no best-on-test number
    assert md.count("**") == 4 and "top-K precision" not in md
    paired = [b - v for b, v in zip(_pct(best["diffinject"]), _pct(best["vanilla"]))]
    assert _cells(md, "DiffInject − Vanilla (paired per seed)")[0] == (
        f"{np.mean(paired):+.2f} ± {np.std(paired, ddof=1):.2f} ({len(paired)} seeds)")
    last = table.markdown("last")
    assert _cells(last, "Vanilla")[1] == f"**{_ours([a - 0.01 for a in RESULTS['colored_digits', '5']['vanilla']])}** (82.44)"
    assert "paired per seed" in table.markdown()


def test_selection_markdown_gives_each_selection_and_the_inflation_paired_per_seed():
    t = Table1(["vanilla", "lff", "disent"])
    for seed, (selected, best) in enumerate(((0.40, 0.45), (0.50, 0.53), (0.60, None))):
        metrics = {"reported_acc": selected, "reported_acc_last": selected - 0.01}
        if best is not None:  # seed 2 has no best-on-test number: it is left out of the difference
            metrics["reported_acc_best_test"] = best
        t.add("colored_digits", "1", "vanilla", metrics, seed)
    t.add("colored_digits", "1", "lff", {"reported_acc": 0.3, "reported_acc_best_test": 0.4})  # no seed: unpaired
    mean, std, n = t.inflation(("colored_digits", "1"), "vanilla")
    assert n == 2 and mean == pytest.approx(4.0) and std == pytest.approx(np.std([5.0, 3.0], ddof=1))
    assert t.inflation(("colored_digits", "1"), "lff") is None
    lines = t.selection_markdown().splitlines()
    assert lines[0] == ("| dataset | ratio | method | valid-selected | best on test (references) | last weights | "
                        "best on test − valid-selected |")
    assert lines[2] == (f"| Colored Digits | 1% | Vanilla | 50.00 ± 10.00 | 49.00 ± {np.std([45, 53], ddof=1):.2f} | "
                        f"49.00 ± 10.00 | +4.00 ± {np.std([5.0, 3.0], ddof=1):.2f} |")
    assert lines[3] == "| Colored Digits | 1% | LfF | 30.00 ± 0.00 | 40.00 ± 0.00 | — | — |"
    assert len(lines) == 4  # DisEnt ran no cell


def test_bffhq_columns_say_conflicting_and_the_notes_say_why():
    from diffinject.reporting.table1 import column_title

    assert column_title("bffhq", "1") == "BFFHQ 1% (conflicting)"
    assert column_title("cifar10c", "0.5") == "Corrupted CIFAR-10 0.5%"
    t = Table1(["vanilla"])
    t.add("colored_digits", "1", "vanilla", {"reported_acc": 0.5, "reported_acc_best_test": 0.6})
    assert "BFFHQ" not in t.notes(1) and "(conflicting)" not in t.markdown()
    t.add("bffhq", "1", "vanilla", {"reported_acc": 0.5, "reported_acc_best_test": 0.6})
    for selection in ("selected", "best_test"):
        assert t.markdown(selection).splitlines()[0] == "| method | BFFHQ 1% (conflicting) | Colored Digits 1% |"
    assert "BFFHQ: accuracy on the bias-conflicting test images only" in t.notes(1)


def test_notes_give_the_valid_splits_conflict_share_and_the_baselines_protocol(table):
    notes = table.notes(2)
    assert "share of bias-conflicting images: Colored Digits 1% 0.01, Colored Digits 5% 0.05" in notes
    assert "--baselines" not in notes
    assert "Selected on the validation split" not in Table1(["vanilla"]).notes(1)
    assert "(`--baselines reference`" in Table1(["vanilla"], baselines="reference").notes(1)
    assert "(`--baselines uniform`)" in Table1(["vanilla"], baselines="uniform").notes(1)


def test_columns_sorted_by_ratio_number():
    t = Table1(["vanilla"])
    for ratio in ("5", "0.5", "10", "1"):
        t.add("colored_digits", ratio, "vanilla", {"reported_acc": 0.5})
    assert t.columns == [("colored_digits", r) for r in ("0.5", "1", "5", "10")]


def test_csv_rows_per_column_and_method(table, tmp_path):
    path = table.write_csv(tmp_path / "out" / "table1.csv")
    assert path == tmp_path / "out" / "table1.csv"
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["dataset", "ratio", "method", "seeds", "unbiased_mean", "unbiased_std", "aligned_mean",
                       "conflicting_mean", "paper_unbiased", "unbiased_per_seed", "label_fidelity", "conflict_rate",
                       "useful_rate", "class_oracle_acc", "bias_oracle_acc", "minus_vanilla_mean", "minus_vanilla_std",
                       "best_test_mean", "best_test_std", "last_mean", "last_std", "whole_test_mean",
                       "valid_conflict_share", "best_test_minus_vanilla_mean", "best_test_minus_vanilla_std"]
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
    best = _pct([_best_test(acc, seed) for seed, acc in enumerate(RESULTS["colored_digits", "1"]["vanilla"])])
    assert float(row["best_test_mean"]) == pytest.approx(np.mean(best), abs=1e-4)
    assert float(row["best_test_std"]) == pytest.approx(np.std(best, ddof=1), abs=1e-4)
    assert float(row["last_mean"]) == pytest.approx(np.mean(v) - 1, abs=1e-4) and float(row["last_std"]) > 0
    assert float(row["whole_test_mean"]) == pytest.approx(np.mean(v) + 1, abs=1e-4)
    assert float(row["valid_conflict_share"]) == pytest.approx(0.01)
    assert float(body["colored_digits", "5", "vanilla"]["valid_conflict_share"]) == pytest.approx(0.05)
    assert body["colored_digits", "5", "diffinject"]["paper_unbiased"] == "92.29"
    only = body["colored_digits", "1", "disent_be"]
    assert only["paper_unbiased"] == "" and only["seeds"] == "1" and only["unbiased_std"] == "0.0000"
    assert only["aligned_mean"] == "" and only["conflicting_mean"] == ""
    assert only["best_test_mean"] == only["last_std"] == "" and float(only["whole_test_mean"]) == pytest.approx(40.0)
    assert [p.name for p in path.parent.iterdir()] == ["table1.csv"]


def test_bar_chart_writes_a_png_and_no_temporaries(table, tmp_path):
    (tmp_path / "charts").mkdir()
    path = table.bar_chart(tmp_path / "charts" / "table1.png", "Table 1")
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "charts").iterdir()] == ["table1.png"]


def test_detail_markdown_has_aligned_and_conflicting(table):
    lines = table.detail_markdown().splitlines()
    assert lines[0] == "| dataset | ratio | method | seeds | reported | whole test | aligned | conflicting |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    row = next(l for l in lines if l.startswith("| colored_digits | 1% | vanilla |"))
    v = _pct(RESULTS["colored_digits", "1"]["vanilla"])
    whole, conflicting = [x + 1 for x in v], [x - 5 for x in v]
    assert row == (f"| colored_digits | 1% | vanilla | 2 | {np.mean(v):.2f} ± {np.std(v, ddof=1):.2f} | "
                   f"{np.mean(whole):.2f} ± {np.std(whole, ddof=1):.2f} | "
                   f"98.50 ± 0.71 | {np.mean(conflicting):.2f} ± {np.std(conflicting, ddof=1):.2f} |")
    assert "| colored_digits | 1% | disent_be | 1 | 50.00 ± 0.00 | 40.00 ± 0.00 | — | — |" in lines
    assert len(lines) == 2 + 5


def test_notes_name_the_compared_paper_column(table):
    assert "Colored MNIST" in table.notes(3) and "3 seed(s)" in table.notes(3)


def test_stats_of_a_missing_column_does_not_add_it():
    t = Table1(["vanilla"])
    t.add("colored_digits", "1", "vanilla", {"reported_acc": 0.5})
    assert t.stats(("colored_digits", "5"), "vanilla") is None
    assert t.columns == [("colored_digits", "1")]


def test_no_precision_row_when_no_method_ran_stage_1():
    t = Table1(["vanilla", "lff"])
    t.add("colored_digits", "1", "vanilla", {"reported_acc": 0.5})
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
            aligned, conflicting = (c.split(" ± ")[0].strip() for c in detail.strip("|").split("|")[6:8])
            assert f"{metrics[f'{prefix}/aligned_acc_pct_mean']:.2f}" == aligned
            assert f"{metrics[f'{prefix}/conflicting_acc_pct_mean']:.2f}" == conflicting
            for selection, name in (("best_test", "best_test"), ("last", "last")):
                shown = _cells(table.markdown(selection), label)[column].strip("*").split(" (")[0].strip("*")
                assert f"{metrics[f'{prefix}/{name}_acc_pct_mean']:.2f}" == shown.split(" ± ")[0]
    assert metrics["colored_digits/1/disent_be/seeds"] == 1 and "colored_digits/5/disent_be/seeds" not in metrics
    assert f"{metrics['colored_digits/1/top_k_precision']:.2f}" == _cells(md, "top-K precision (stage 1)")[0]
    assert "colored_digits/5/top_k_precision" not in metrics


def test_quality_rows_under_precision_in_markdown_csv_and_metrics(tmp_path):
    """The DiffInject cells' synthetic-set quality: mean over seeds per column, in the table's
    rows under precision@K, the CSV's columns and the table run's metrics."""
    t = Table1(["vanilla", "diffinject"])
    t.add("colored_digits", "1", "vanilla", {"reported_acc": 0.5})
    for seed, (fidelity, conflict) in enumerate(((0.8, 0.5), (0.6, 0.7))):
        t.add("colored_digits", "1", "diffinject", {
            "reported_acc": 0.7, "quality.label_fidelity": fidelity, "quality.conflict_rate": conflict,
            "quality.useful_rate": fidelity * conflict, "quality.class_oracle_acc": 0.96 + 2 * seed / 100,
            "quality.bias_oracle_acc": 1.0, "quality.shows_original": 0.1})
    t.add("colored_digits", "5", "diffinject", {"reported_acc": 0.8})  # a cell without a report
    t.add_precision("colored_digits", "1", 0.9)
    t.add("colored_digits", "1", "amplibias", {"reported_acc": 0.6, "quality.label_fidelity": 0.9,
                                                "quality.conflict_rate": 0.2, "quality.useful_rate": 0.1,
                                                "quality.class_oracle_acc": 0.97, "quality.bias_oracle_acc": 1.0})
    md = t.markdown()
    names = [line.split("|")[1].strip() for line in md.splitlines()[2:]]
    diffinject_row = "DiffInject set: label fidelity / conflict rate / useful (stage 3)"
    assert names[-3:] == ["top-K precision (stage 1)", diffinject_row, "oracle accuracy class / bias"]
    assert _cells(md, diffinject_row) == [f"0.70 / 0.60 / {(0.4 + 0.42) / 2:.2f}", "— / — / —"]
    assert _cells(md, "oracle accuracy class / bias") == ["0.97 / 1.00", "— / —"]
    both = Table1(["vanilla", "amplibias", "diffinject"])
    for method, metrics in t.values[("colored_digits", "1")].items():
        both.add("colored_digits", "1", method, {"reported_acc": metrics["reported_acc"][0] / 100,
                 **{f"quality.{k}": v[0] for k, v in t.quality[("colored_digits", "1")][method].items()}})
    assert _cells(both.markdown(), "AmpliBias set: label fidelity / conflict rate / useful (stage 3)") == [
        "0.90 / 0.20 / 0.10"]  # each method's set in its own row
    metrics = t.metrics()
    assert metrics["colored_digits/1/diffinject/quality/label_fidelity"] == 0.7
    assert metrics["colored_digits/1/quality/class_oracle_acc"] == 0.97
    assert not any(k.startswith("colored_digits/5/quality") or "5/diffinject/quality" in k for k in metrics)
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
        t.add("colored_digits", "1", "vanilla", {"reported_acc": acc, "test_acc": 0.1}, seed)
    for seed, acc in reversed(list(diffinject.items())):  # the order cells finish in does not matter
        t.add("colored_digits", "1", "diffinject", {"reported_acc": acc, "test_acc": 0.9}, seed)
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


def test_every_method_is_paired_with_vanilla_under_each_selection(tmp_path):
    """LfF's (a baseline's) paired difference too, valid-selected and best on test, in the
    Markdown, the metrics and the CSV."""
    t = Table1(["vanilla", "lff"])
    for seed, (v, lff) in enumerate([(0.30, 0.40), (0.32, 0.47), (0.28, 0.45)]):
        t.add("colored_mnist_5k", "1", "vanilla", {"reported_acc": v, "reported_acc_best_test": v + 0.02}, seed)
        t.add("colored_mnist_5k", "1", "lff", {"reported_acc": lff, "reported_acc_best_test": lff + 0.05 * seed}, seed)
    selected, best = np.array([10.0, 15.0, 17.0]), np.array([8.0, 18.0, 25.0])
    assert _cells(t.markdown(), "LfF − Vanilla (paired per seed)") == [
        f"+{selected.mean():.2f} ± {selected.std(ddof=1):.2f} (3 seeds)"]
    assert _cells(t.markdown("best_test"), "LfF − Vanilla (paired per seed)") == [
        f"+{best.mean():.2f} ± {best.std(ddof=1):.2f} (3 seeds)"]
    metrics = t.metrics()
    assert metrics["colored_mnist_5k/1/lff/minus_vanilla_pct_mean"] == round(selected.mean(), 2)
    assert metrics["colored_mnist_5k/1/lff/best_test_minus_vanilla_pct_std"] == round(best.std(ddof=1), 2)
    (row,) = [r for r in csv.DictReader(t.write_csv(tmp_path / "t.csv").open()) if r["method"] == "lff"]
    assert float(row["best_test_minus_vanilla_mean"]) == pytest.approx(best.mean(), abs=1e-4)


def test_the_note_and_the_chart_say_whose_numbers_on_what_data_under_which_selection():
    t = Table1(["vanilla"], quick=True)
    t.add("colored_mnist_5k", "1", "vanilla", {"reported_acc": 0.3}, 0)
    note = t.notes(1)
    assert ("What differs from the paper: ours train on the embedded Colored MNIST 5k (3,500 training images), at "
            "the quick lengths (docs/table1.md), and are selected on the validation split, while the paper's numbers "
            "are for its Colored MNIST (60,000 training images) and are the best test accuracy during training") in note
    caption = t.chart_caption()
    assert caption.startswith("Bars: ours on Colored MNIST 5k (3,500 training images), mean ± std over 1 seed(s), "
                              "the weights with the best validation accuracy.")
    assert "the paper's Table 1 (Colored MNIST (60,000 training images); best test accuracy" in caption
    assert "quick lengths" not in Table1(["vanilla"]).differences(["colored_mnist_5k"], ["cmnist"])
