"""Command lines argparse refuses: one `error:` line and exit 2 (not the usage block), from
`diffinject` and every experiments/ script."""
from __future__ import annotations

import pytest

from diffinject.cli import main
from scripts import load_script


def _refused(parse, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    return err


@pytest.mark.parametrize("argv,message", [
    (["nosuch"], "argument command: invalid choice: 'nosuch'"),
    ([], "the following arguments are required: command"),
    (["train", "vanilla", "--protocol", "x"], "argument --protocol: invalid choice: 'x' (choose from 'release', 'paper')"),
    (["train"], "the following arguments are required: method"),
    (["diffusion", "sample", "--checkpoint", "c.pt", "--num", "many"], "argument --num: invalid int value: 'many'"),
    (["diffusion", "sample"], "the following arguments are required: --checkpoint"),
    (["diffusion", "export", "--checkpoint", "c.pt", "--out", "o.pt", "--dtype", "int8"],
     "argument --dtype: invalid choice: 'int8'"),
    (["results", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_diffinject_usage_errors_are_one_line(argv, message, capsys):
    assert message in _refused(main, argv, capsys)


@pytest.mark.parametrize("script,argv,message", [
    ("table1", ["--protocol", "x"], "argument --protocol: invalid choice: 'x'"),
    ("table1", ["--seeds", "one"], "argument --seeds: invalid int value: 'one'"),
    ("ablations", ["--search", "random"], "argument --search: invalid choice: 'random'"),
    ("compare", [], "the following arguments are required: --experiments"),
])
def test_experiment_script_usage_errors_are_one_line(script, argv, message, capsys):
    module = load_script(script)
    assert message in _refused(module.main if script == "compare" else module.parse_args, argv, capsys)
