"""`diffinject inject` end to end on Colored Digits with a tiny checkpoint; resolution errors."""
import pytest
from mlflow.tracking import MlflowClient

from diffinject.cli.main import main
from diffinject.config.quick import QUICK_INJECTION
from diffinject.data.parquet import conversion_counts, load_split
from diffinject.nets.diffusion import build_unet, get_preset
from diffinject.nets.diffusion.checkpoint import unet_checkpoint_bytes
from diffinject.tracking.client import Tracker


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("inject-ckpt") / "diffusion.pt"
    path.write_bytes(unet_checkpoint_bytes(build_unet("tiny_32").state_dict(), get_preset("tiny_32"), 0, {}))
    return path


def _argv(digits_root, checkpoint, *extra):
    argv = ["inject", "--quick", "--dataset", "colored_digits", "--data-root", str(digits_root / "data"), "--cache-root", str(digits_root / "cache"),
            "--checkpoint", str(checkpoint), "--experiment", "t-inject"]
    for item in ("diffusion.preset=tiny_32", "injection.inversion_steps=3", "injection.generation_steps=3",
                 "injection.conflict_ratio=0.005", "injection.batch_size=4", "bias.classifier.num_steps=20",
                 "bias.k=5", *extra):
        argv += ["--set", item]
    return argv


def test_inject_runs_stage1_then_writes_the_synthetic_set(ray_session, digits_root, tiny_checkpoint, tmp_path,
                                                        mlflow_uri, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "synthetic"
    assert main(_argv(digits_root, tiny_checkpoint) + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "running stage 1" in printed and f"wrote 6 synthetic samples to {out}" in printed
    assert "quality (scoring oracles, held-out accuracy class 0.9" in printed and "label fidelity " in printed
    synthetic = load_split(out, "train")
    assert conversion_counts(out)["train"] == 6 and synthetic.images.shape == (6, 28, 28, 3)
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("t-inject").experiment_id],
                              "tags.`diffinject.role` = 'stage3'")
    assert len(runs) == 1 and runs[0].data.metrics["n_syn"] == 6 and runs[0].data.metrics["t_edit"] == QUICK_INJECTION["t_edit"]
    assert "triptych.png" in [a.path for a in Tracker(mlflow_uri).list_artifacts(runs[0].info.run_id)]
    assert "quality_grid.png" in [a.path for a in Tracker(mlflow_uri).list_artifacts(runs[0].info.run_id)]
    assert 0 <= runs[0].data.metrics["quality.label_fidelity"] <= 1 and runs[0].data.metrics["quality.class_oracle_acc"] > 0.9


def test_checkpoint_of_another_resolution_is_refused(digits_root, tiny_checkpoint, tmp_path, mlflow_uri,
                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = _argv(digits_root, tiny_checkpoint, "diffusion.preset=p2_256")
    assert main(argv) == 2
    assert "is a 32x32 model (tiny_32), but colored_digits uses 256x256 diffusion models" in \
        capsys.readouterr().err.strip().splitlines()[-1]


def test_calibrate_prints_t_edit_and_writes_the_curve(digits_root, tiny_checkpoint, tmp_path, mlflow_uri,
                                                      monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # proves nothing is downloaded
    argv = ["calibrate", "--quick", "--dataset", "colored_digits", "--data-root", str(digits_root / "data"), "--cache-root",
            str(digits_root / "cache"), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "figs"),
            "--set", "diffusion.preset=tiny_32", "--set", "injection.inversion_steps=6",
            "--set", "injection.calibration_images=4"]
    assert main(argv + ["--random-lpips-backbone", "--set", "injection.lpips_threshold=0.01"]) == 0
    out = capsys.readouterr().out
    assert "t_edit = " in out and (tmp_path / "figs" / "t_edit_calibration.png").is_file()
    assert main(argv) == 2  # no AlexNet weights in the empty TORCH_HOME: say where they go
    assert "alexnet-owt-7be5be79.pth, which is missing: put it at" in capsys.readouterr().err
