"""`diffinject diffusion train|sample`: output files and one-line errors."""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from diffinject.cli.main import main
from diffinject.config.schema import DiffusionConfig
from diffinject.core.errors import ConfigError
from diffinject.nets.diffusion.checkpoint import FORMAT
from diffinject.nets.diffusion.models import PRESETS
from diffinject.stages.stage2 import train_diffusion
from diffinject.training.loop import TrainContext
from test_guided_diffusion import GD_TINY, random_openai_state


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = DiffusionConfig(preset="tiny_32", batch_size=4, num_steps=2, checkpoint_every=2, sample_every=0)
    images = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("ckpt") / "diffusion.pt"
    path.write_bytes(train_diffusion(cfg, images, TrainContext(), seed=0).checkpoint)
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_sample_writes_a_png_grid(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["diffusion", "sample", "--checkpoint", str(tiny_checkpoint), "--num", "4", "--steps", "2",
                 "--columns", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (2 * 34 + 2, 2 * 34 + 2)  # 2 x 2 tiles of 32 px with 2 px gaps
    assert f"wrote {out}" in capsys.readouterr().out


def test_sample_from_a_guided_diffusion_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(PRESETS, GD_TINY.name, GD_TINY)
    path, out = tmp_path / "released.pt", tmp_path / "grid.png"
    torch.save(random_openai_state(GD_TINY), path)
    assert main(["diffusion", "sample", "--checkpoint", str(path), "--format", "guided-diffusion", "--preset",
                 GD_TINY.name, "--num", "2", "--steps", "2", "--out", str(out)]) == 0
    assert out.is_file()
    # the same file read as a diffinject checkpoint is a clear error that says what to do
    assert main(["diffusion", "sample", "--checkpoint", str(path), "--out", str(out)]) == 2
    assert "is not a diffinject diffusion checkpoint" in _error(capsys)


def test_sample_errors(tiny_checkpoint, tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 50)
    wrong_arch, no_weights, truncated = tmp_path / "wrong.pt", tmp_path / "no_weights.pt", tmp_path / "truncated.pt"
    payload = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**payload, "format": FORMAT, "preset": "small_32"}, wrong_arch)
    torch.save({k: v for k, v in payload.items() if k != "weights"}, no_weights)
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"args": argparse.Namespace(lr=1)}, unsafe)
    cases = [
        (["--checkpoint", str(tmp_path / "none.pt")], f"checkpoint {tmp_path / 'none.pt'} does not exist"),
        (["--checkpoint", str(tmp_path)], f"checkpoint {tmp_path} is a folder; expected a checkpoint file"),
        (["--checkpoint", str(garbage)], "is unreadable"),
        (["--checkpoint", str(truncated)], f"checkpoint {truncated} is truncated or corrupted"),
        (["--checkpoint", str(unsafe)], "holds a Python object of type argparse.Namespace, which is not loaded"),
        (["--checkpoint", str(no_weights)], f"{no_weights} is an incomplete diffinject checkpoint: no weights entry"),
        (["--checkpoint", str(tiny_checkpoint), "--preset", "small_32"], "holds a tiny_32 model, but small_32"),
        (["--checkpoint", str(wrong_arch)], "the weights are for another architecture"),
        (["--checkpoint", str(tiny_checkpoint), "--format", "guided-diffusion"], "needs --preset"),
        (["--checkpoint", str(tiny_checkpoint), "--steps", "0"], "--steps must be in [1, 1000], got 0"),
        (["--checkpoint", str(tiny_checkpoint), "--steps", "5000"], "--steps must be in [1, 1000], got 5000"),
        (["--checkpoint", str(tiny_checkpoint), "--num", "0"], "--num must be in [1, 10000], got 0"),
        (["--checkpoint", str(tiny_checkpoint), "--eta", "nan"], "--eta must be a finite number, got nan"),
        (["--checkpoint", str(tiny_checkpoint), "--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    ]
    for argv, message in cases:
        assert main(["diffusion", "sample", *argv, "--out", str(tmp_path / "x.png")]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)
        assert "weights_only" not in err and "Weights only load failed" not in err and "miniz" not in err, argv
    assert not (tmp_path / "x.png").exists()


def test_sample_bounds_the_grid_before_sampling(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """A count or scale whose grid cannot be held or opened is one error line before any
    sampling (it used to end in a RuntimeError or a MemoryError after it)."""
    import diffinject.nets.diffusion

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(diffinject.nets.diffusion, "ddim_sample", no_sampling)
    cases = [
        (["--num", "100000"], "--num must be in [1, 10000], got 100000"),
        (["--scale", "100000"], "--scale must be in [1, 16], got 100000"),
        (["--scale", "0"], "--scale must be in [1, 16], got 0"),
        # 10,000 tiles of 32 px (34 with the gap) in one column, enlarged 16 times
        (["--num", "10000", "--columns", "1", "--scale", "16"],
         "the grid of 10000 32-pixel images, 1 per row, at --scale 16 would be 576 x 5440032 = 3,133,458,432 "
         "pixels, over the limit of 89,478,485"),
    ]
    for argv, message in cases:
        out = tmp_path / "x.png"
        assert main(["diffusion", "sample", "--checkpoint", str(tiny_checkpoint), *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)
        assert not out.exists()


def test_png_bytes_refuses_a_picture_over_the_pixel_bound():
    from diffinject.core import plots

    image = np.zeros((36, 36, 3), dtype=np.uint8)
    with pytest.raises(ConfigError, match="the picture enlarged 100000 times would be 3600000 x 3600000"):
        plots.png_bytes(image, scale=100_000)  # before PIL allocates 39 TB
    scale = int(plots.MAX_PNG_PIXELS ** 0.5) // 36  # the largest scale within the bound still works
    assert plots.png_bytes(image, scale=scale)[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_output_is_checked_before_loading_or_sampling(tmp_path, capsys, monkeypatch):
    import errno

    from diffinject.core import preflight

    missing = tmp_path / "none.pt"  # never read: the output check comes first
    assert main(["diffusion", "sample", "--checkpoint", str(missing), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path} is a folder; expected a file name\n"

    def read_only(folder):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(preflight, "_write_probe", read_only)
    out = tmp_path / "grids" / "x.png"
    assert main(["diffusion", "sample", "--checkpoint", str(missing), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: --out {out}: its folder {out.parent} is not writable: "
                                       f"Read-only file system\n")


def test_train_command(ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["diffusion", "train", "--quick", "--dataset", "colored_digits", "--data-root", str(digits_root / "data"), "--cache-root",
            str(digits_root / "cache"), "--experiment", "t-diffusion-cli"]
    for item in ("preset=tiny_32", "num_steps=2", "batch_size=4", "sample_every=0", "log_every=1"):
        argv += ["--set", f"diffusion.{item}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    checkpoint = out.split("EMA checkpoint: ")[1].strip()
    assert torch.load(checkpoint, weights_only=True)["step"] == 2
    assert main(argv[:-2] + ["--set", "diffusion.preset=nope"]) == 2
    assert "unknown U-Net preset 'nope'" in _error(capsys)


def test_export_to_float16_halves_the_file_and_loads_back_strictly(tiny_checkpoint, tmp_path, capsys):
    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint

    out = tmp_path / "half.pt"
    assert main(["diffusion", "export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert "float16" in capsys.readouterr().out
    stored = torch.load(out, weights_only=True)["weights"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert out.stat().st_size < 0.6 * tiny_checkpoint.stat().st_size
    full, meta = load_unet_checkpoint(tiny_checkpoint)
    half, half_meta = load_unet_checkpoint(out)
    assert half_meta["preset"] == meta["preset"] and half_meta["step"] == meta["step"]
    for (name, a), b in zip(full.state_dict().items(), half.state_dict().values()):
        assert b.dtype == a.dtype  # loaded back into the float32 model
        assert torch.equal(b, a.half().to(a.dtype)), name


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk" * 10)
    out = tmp_path / "half.pt"
    assert main(["diffusion", "export", "--checkpoint", str(bad), "--out", str(out)]) == 2
    assert str(bad) in _error(capsys) and not out.exists()
