"""experiments/table1.py: the printed table covers this invocation's runs only."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "table1.py"


@pytest.fixture
def table1():
    spec = importlib.util.spec_from_file_location("table1", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_table_of_one_seed_twice(table1, ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--quick", "--ratios", "1", "--seeds", "0", "--methods", "vanilla", "lff", "--data-root", str(digits_root / "data"),
            "--cache-root", str(digits_root / "cache"), "--out", str(tmp_path / "results"),
            "--set", "classifier.num_steps=20", "--set", "bias.classifier.num_steps=20"]
    for _ in range(2):  # the second invocation logs to the same experiment
        assert table1.main(argv) == 0
        table = (tmp_path / "results" / "table1-quick.txt").read_text()
        assert "colored_digits @ 1%" in table and "5%" not in table
        vanilla = next(line for line in table.splitlines() if line.startswith("vanilla"))
        stage1 = next(line for line in table.splitlines() if line.startswith("stage-1"))
        lff = next(line for line in table.splitlines() if line.startswith("lff"))
        assert vanilla.count("(n=1)") == 3 and lff.count("(n=1)") == 3 and stage1.count("(n=1)") == 4
    assert "[3/3" in capsys.readouterr().out


def test_unknown_method_fails_before_any_training(table1, capsys):
    assert table1.main(["--quick", "--methods", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown method 'nope'")
