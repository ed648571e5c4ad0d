"""Stage 2's training loop (in-process): exact resume, errors, pixels, and that it learns."""
import io

import numpy as np
import pytest
import torch

from diffinject.config.builder import experiment_config
from diffinject.config.overrides import apply_overrides
from diffinject.config.schema import DiffusionConfig
from diffinject.core.errors import CheckpointError, ConfigError, TrainingError
from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
from diffinject.nets.diffusion.models import PRESETS, UNetPreset
from diffinject.nets.diffusion.pixels import to_model_pixels, to_uint8
from diffinject.stages import stage2
from diffinject.stages.stage2 import check_image_size, train_diffusion
from diffinject.training.loop import TrainContext

# tiny_32 plus dropout, so exact resume also covers the dropout masks
DROPOUT_PRESET = UNetPreset("tiny_dropout_32", 32, (16, 32), 1, (), False, "conv", 16, norm_num_groups=8, dropout=0.3)


def _images(n=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)


def _cfg(**overrides):
    base = dict(preset="tiny_32", batch_size=8, num_steps=6, lr=1e-3, log_every=1, checkpoint_every=3,
                sample_every=0, hflip=True)
    return DiffusionConfig(**{**base, **overrides})


class Recorder:
    """A TrainContext whose report() keeps serialised copies of every checkpoint state."""

    def __init__(self, resume_state=None):
        self.states, self.logs, self.artifacts = {}, [], {}
        self.ctx = TrainContext(resume_state=resume_state, report=self.report, log=self.log,
                                last_checkpoint=lambda: f"step{max(self.states)}" if self.states else None,
                                log_artifact=self.log_artifact)

    def report(self, metrics, state):
        if state is not None:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            self.states[metrics["step"]] = buffer.getvalue()

    def log(self, step, metrics):
        self.logs.append((step, metrics))

    def log_artifact(self, name, payload, folder):
        self.artifacts[f"{folder}/{name}"] = payload

    def state(self, step):
        return torch.load(io.BytesIO(self.states[step]), weights_only=True)


def test_resume_from_a_checkpoint_continues_exactly(monkeypatch):
    monkeypatch.setitem(PRESETS, DROPOUT_PRESET.name, DROPOUT_PRESET)
    cfg, images = _cfg(preset=DROPOUT_PRESET.name), _images()
    straight = Recorder()
    full = train_diffusion(cfg, images, straight.ctx, seed=3)
    resumed = Recorder(resume_state=straight.state(3))
    again = train_diffusion(cfg, images, resumed.ctx, seed=3)
    assert sorted(straight.states) == [3, 6] and sorted(resumed.states) == [6]
    end_a, end_b = straight.state(6), resumed.state(6)
    for key in end_a["unet"]:
        assert torch.equal(end_a["unet"][key], end_b["unet"][key]), key
    for a, b in zip(end_a["ema"]["shadow_params"], end_b["ema"]["shadow_params"]):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(full.ema_unet.state_dict().values(), again.ema_unet.state_dict().values()))
    # and the resumed run logged only the steps it trained
    assert [s for s, m in resumed.logs if "loss" in m] == [4, 5, 6]


def test_checkpoint_holds_model_ema_optimizer_and_step():
    rec = Recorder()
    train_diffusion(_cfg(), _images(), rec.ctx, seed=0)
    state = rec.state(3)
    assert state["step"] == 3 and state["ema"]["optimization_step"] == 3
    assert state["optimizer"]["state"], "AdamW moments must be in the checkpoint"
    assert set(state["unet"]) == set(stage2.build_unet("tiny_32").state_dict())
    # the EMA weights are also logged (for MLflow) as a loadable diffinject checkpoint
    assert "checkpoint/diffusion.pt" in rec.artifacts


def test_training_lowers_the_loss_and_ema_differs_from_raw_weights():
    rec = Recorder()
    cfg = _cfg(num_steps=30, lr=2e-3, log_every=5, checkpoint_every=30, ema_decay=0.9)
    result = train_diffusion(cfg, _images(64), rec.ctx, seed=0)
    losses = [m["loss"] for _, m in rec.logs if "loss" in m]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    raw = rec.state(30)["unet"]
    ema = result.ema_unet.state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_final_checkpoint_loads_back_with_its_preset(tmp_path):
    result = train_diffusion(_cfg(num_steps=2, checkpoint_every=2), _images(), Recorder().ctx, seed=0)
    path = tmp_path / "diffusion.pt"
    path.write_bytes(result.checkpoint)
    unet, meta = load_unet_checkpoint(path)
    assert meta["preset"] == "tiny_32" and meta["step"] == 2 and meta["config"]["num_steps"] == 2
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 800])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, result.ema_unet(x, t).sample)
    with pytest.raises(CheckpointError, match="holds a tiny_32 model, but small_32 was asked for"):
        load_unet_checkpoint(path, expect_preset="small_32")


def test_sample_grids_are_logged_every_n_steps_and_at_the_end():
    rec = Recorder()
    train_diffusion(_cfg(num_steps=5, sample_every=2, sample_images=4, sample_steps=2), _images(), rec.ctx, seed=0)
    assert sorted(k for k in rec.artifacts if k.startswith("samples/")) == [
        "samples/step_0000002.png", "samples/step_0000004.png", "samples/step_0000005.png"]
    assert rec.artifacts["samples/step_0000002.png"].startswith(b"\x89PNG")


def test_kept_checkpoints_are_the_models_a_shorter_run_ends_with(tmp_path):
    """keep_checkpoints logs every checkpoint's EMA weights under its step; training does not
    depend on num_steps, so the step-3 file is the model a 3-step run ends with."""
    rec = Recorder()
    train_diffusion(_cfg(num_steps=6, checkpoint_every=3, keep_checkpoints=True), _images(), rec.ctx, seed=0)
    assert sorted(k for k in rec.artifacts if k.startswith("checkpoints/")) == [
        "checkpoints/step_0000003.pt", "checkpoints/step_0000006.pt"]
    assert rec.artifacts["checkpoints/step_0000006.pt"] == rec.artifacts["checkpoint/diffusion.pt"]
    path = tmp_path / "step3.pt"
    path.write_bytes(rec.artifacts["checkpoints/step_0000003.pt"])
    kept, meta = load_unet_checkpoint(path)
    short = train_diffusion(_cfg(num_steps=3, checkpoint_every=3), _images(), Recorder().ctx, seed=0).ema_unet
    assert meta["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), short.state_dict().values()))
    plain = Recorder()
    train_diffusion(_cfg(num_steps=3, checkpoint_every=3), _images(), plain.ctx, seed=0)
    assert not any(k.startswith("checkpoints/") for k in plain.artifacts)


def test_non_finite_loss_names_the_step_and_the_last_checkpoint(monkeypatch):
    calls = {"n": 0}
    real = stage2.diffusion_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(stage2, "diffusion_loss", poisoned)
    rec = Recorder()
    with pytest.raises(TrainingError, match=r"non-finite diffusion loss nan at step 5; last good checkpoint: step3"):
        train_diffusion(_cfg(), _images(), rec.ctx, seed=0)


def test_image_size_must_match_the_preset_unless_resized():
    with pytest.raises(ConfigError, match=r"training images are 28x28 but preset tiny_32 is 32x32; set diffusion.resize"):
        train_diffusion(_cfg(resize=False), _images(), Recorder().ctx, seed=0)
    with pytest.raises(ConfigError, match=r"N x H x W x 3"):
        check_image_size((4, 32, 32), PRESETS["tiny_32"], resize=True)
    check_image_size((4, 32, 32, 3), PRESETS["tiny_32"], resize=False)


def test_unknown_preset_and_bad_values_are_config_errors():
    cfg = experiment_config("colored_digits", "1")
    with pytest.raises(ConfigError, match="unknown U-Net preset 'huge'; expected one of"):
        apply_overrides(cfg, ["diffusion.preset=huge"])
    with pytest.raises(ConfigError, match="diffusion.ema_decay must be in"):
        apply_overrides(experiment_config("colored_digits", "1"), ["diffusion.ema_decay=1.5"])
    with pytest.raises(ConfigError, match="diffusion.train_data must be 'train' or 'DATASET@RATIO'"):
        apply_overrides(experiment_config("colored_digits", "1"), ["diffusion.train_data=mnist"])


def test_pixels_map_to_minus_one_one_and_back_exactly():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    x = to_model_pixels(images, 16, torch.device("cpu"))
    assert x.shape == (1, 3, 16, 16) and x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(to_uint8(x), images)
    assert to_model_pixels(_images(2), 32, torch.device("cpu")).shape == (2, 3, 32, 32)
