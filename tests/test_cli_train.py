"""`diffinject train|topk|results`: exit codes and one-line errors."""
import pytest

from diffinject.cli.main import main


@pytest.mark.parametrize("argv,message", [
    (["train", "nomethod"], "error: unknown method 'nomethod'; expected one of"),
    (["train", "vanilla", "--dataset", "imagenet"], "error: unknown dataset 'imagenet'"),
    (["train", "vanilla", "--dataset", "colored_digits", "--ratio", "3"], "error: invalid conflict ratio '3' for colored_digits"),
    (["topk", "--set", "bias.k=0"], "error: bias.k must be a positive number of samples, got 0"),
    (["topk", "--set", "bias.k=-3"], "error: bias.k must be a positive number of samples, got -3"),
    (["topk", "--set", "injection.generation_steps=20"],  # the release protocol's 50-step injection grid
     "error: injection.inject_grid = 50 leaves no injected step below t = 999"),
])
def test_bad_arguments_exit_non_zero_with_one_line(argv, message, capsys, tmp_path):
    assert main(argv + ["--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize("argv,protocol", [([], "release"), (["--protocol", "paper"], "paper")])
def test_run_commands_build_their_config_with_the_protocol(argv, protocol):
    from diffinject.cli.main import _config, build_parser

    cfg = _config(build_parser().parse_args(["topk", *argv]))
    assert cfg.injection.protocol == protocol and cfg.bias.scope == ("per_class" if protocol == "release" else "global")


def test_missing_dataset_folder_names_the_path_and_the_source(capsys, tmp_path, mlflow_uri):
    assert main(["train", "vanilla", "--dataset", "cmnist", "--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere' / 'cmnist'}: dataset folder not found" in err
    assert "`diffinject data build cmnist --source DIR`" in err and "--mnist" not in err  # the flag that exists


def test_nan_loss_ends_the_command_with_the_step(ray_session, capsys, digits_root, tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "vanilla", "--quick", "--dataset", "colored_digits", "--data-root", str(digits_root / "data"), "--cache-root",
            str(digits_root / "cache"), "--set", "classifier.lr=1e30", "--set", "classifier.num_steps=20"]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # MLflow may log its database setup first
    assert last.startswith("error: non-finite loss") and "at step" in last


def test_train_and_results_commands(ray_session, capsys, digits_root, tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--quick", "--dataset", "colored_digits", "--data-root", str(digits_root / "data"), "--cache-root", str(digits_root / "cache"),
              "--experiment", "t-cli", "--set", "classifier.num_steps=20", "--set", "bias.classifier.num_steps=20"]
    assert main(["train", "vanilla"] + common) == 0
    assert "test_acc=" in capsys.readouterr().out
    assert main(["topk"] + common) == 0
    assert "precision_at_10=" in capsys.readouterr().out
    assert main(["results", "--experiment", "t-cli"]) == 0
    out = capsys.readouterr().out
    assert "colored_digits @ 1%" in out and "vanilla" in out and "(n=1)" in out
