"""experiments/table1.py: the printed table covers this invocation's runs only."""
import importlib.util
import json
from pathlib import Path

import pytest

from diffinject.config.quick import QUICK_DATASET, quick_lengths

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "table1.py"


@pytest.fixture
def table1():
    spec = importlib.util.spec_from_file_location("table1", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_table_of_one_seed_twice(table1, ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--quick", "--datasets", "colored_digits", "--ratios", "1", "--seeds", "0", "--methods", "vanilla", "lff", "--data-root", str(digits_root / "data"),
            "--cache-root", str(digits_root / "cache"), "--out", str(tmp_path / "results"),
            "--set", "classifier.num_steps=20", "--set", "bias.classifier.num_steps=20",
            "--set", "baselines.lff_num_steps=20"]  # LfF's own length (the reference protocol's) would be 470
    assert table1.main(argv) == 0
    first = capsys.readouterr().out
    assert "[2/2" in first and "this run built: stage4 x2;" in first  # no stage 1: neither method needs it
    table = (tmp_path / "results" / "table1-quick.md").read_text()
    assert "Colored Digits 1%" in table and "5%" not in table
    # the valid-selected table, then the references' best-on-test one and every selection, printed and written
    main_table, _, references = table.partition("As the references report (best test accuracy during training):")
    printed = references.split("## Detail")[0].strip()
    assert "Each selection, from the same runs:" in printed and "| Colored Digits | 1% | LfF |" in printed
    assert printed in first
    rows = {line.split(" | ")[0].strip("| "): line for line in main_table.splitlines() if line.startswith("| ")}
    header = (tmp_path / "results" / "table1-quick.csv").read_text().splitlines()[0].split(",")
    assert {"unbiased_mean", "best_test_mean", "last_mean", "valid_conflict_share"} <= set(header)
    assert "± 0.00" in rows["Vanilla"] and "(32.59)" in rows["Vanilla"] and "(74.23)" in rows["LfF"]  # 1 seed; CMNIST
    assert "top-K precision (stage 1)" not in rows
    # the table run holds the table's numbers as metrics, and links the cell runs behind them
    from diffinject.tracking.client import Tracker

    tracker = Tracker(mlflow_uri)
    exp = tracker.client.get_experiment_by_name("table1-quick")
    (table_run,) = tracker.client.search_runs([exp.experiment_id], "tags.`diffinject.role` = 'table'")
    cells = json.loads((tmp_path / "results" / "table1-quick-runs.json").read_text())
    for method, label in (("vanilla", "Vanilla"), ("lff", "LfF")):
        mean = table_run.data.metrics[f"colored_digits/1/{method}/unbiased_acc_pct_mean"]
        assert rows[label].split(" | ")[1].strip("*").startswith(f"{mean:.2f} ± 0.00")
        (cell,) = [c for c in cells if c["method"] == method]
        assert mean == round(100 * cell["reported_acc"], 2)
        run = tracker.client.get_run(cell["run_id"])
        assert run.data.metrics["unbiased_acc_pct"] == mean and run.data.params["method"] == method
        assert f"[s0](#/experiments/{exp.experiment_id}/runs/{cell['run_id']})" in \
            table_run.data.tags["mlflow.note.content"]
    # the second invocation computes nothing and prints the same table
    assert table1.main(argv) == 0
    second = capsys.readouterr().out
    assert "this run built: nothing; 2 of 2 cells came from the cache" in second
    assert (tmp_path / "results" / "table1-quick.md").read_text() == table


def test_unknown_method_fails_before_any_training(table1, capsys):
    assert table1.main(["--quick", "--methods", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown method 'nope'")


def test_the_table_shows_diffinjects_protocol():
    from diffinject.reporting.table1 import Table1

    table = Table1(["vanilla", "diffinject"], protocol="paper")
    for method in ("vanilla", "diffinject"):
        table.add("colored_digits", "1", method, {"reported_acc": 0.5})
    labels = [line.split(" | ")[0].strip("| ") for line in table.markdown().splitlines()[2:]]
    assert "DiffInject (paper)" in labels and "Vanilla" in labels
    assert "DiffInject (paper only)" in [line.split(" | ")[0].strip("| ") for line in
                                         Table1(["vanilla"], protocol="paper").markdown().splitlines()[2:]]


@pytest.mark.parametrize("argv,protocol,baselines", [
    ([], "release", "reference"), (["--protocol", "paper"], "paper", "reference"),
    (["--set", "injection.protocol=paper"], "paper", "reference"), (["--baselines", "uniform"], "release", "uniform"),
    (["--set", "baselines.protocol=uniform"], "release", "uniform")])
def test_protocol_reaches_every_config(table1, monkeypatch, capsys, argv, protocol, baselines):
    from diffinject.core.errors import ConfigError

    seen = []

    def stop(folder, what):  # the first check after the configs are built
        raise ConfigError("stopped here")

    real_apply = table1.apply_overrides
    monkeypatch.setattr(table1, "apply_overrides", lambda cfg, items: seen.append(real_apply(cfg, items)) or seen[-1])
    monkeypatch.setattr(table1, "check_output_dir", stop)
    assert table1.main(["--quick", "--methods", "vanilla", *argv]) == 2
    assert "stopped here" in capsys.readouterr().err
    assert [cfg.injection.protocol for cfg in seen] == [protocol]  # --quick: 1% only
    assert [(cfg.baselines.protocol, cfg.baselines.lff_num_steps) for cfg in seen] == \
        [(baselines, quick_lengths(QUICK_DATASET).lff_steps if baselines == "reference" else 0)]
