"""Command lines argparse refuses: one `error:` line and exit 2 (not the usage block), from
`diffinject` and every experiments/ script; help texts name defaults and the registered names."""
from __future__ import annotations

import pytest

from diffinject.cli.main import main
from diffinject.data.registry import DATASETS
from diffinject.methods import METHODS
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


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_names_the_registered_methods_and_datasets_and_the_defaults(capsys):
    assert f"the method: {' | '.join(METHODS)}" in _help(["train"], capsys)
    assert f"the dataset: {' | '.join(DATASETS)}" in _help(["data", "check"], capsys)
    sample = _help(["diffusion", "sample"], capsys)
    for text in ("at most 10,000 (default: 64)", "seed of the noise (default: 0)", "per grid row (default: 8)",
                 "1 to 16 times", "the PNG grid (default: samples.png)"):
        assert text in sample, text
    assert "(default: the one whose finished run ended last)" in _help(["results"], capsys)
