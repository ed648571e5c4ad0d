"""The quick run's shipped diffusion checkpoint: present, the documented hash, strictly loadable,
and used by --quick unless retrained or replaced."""
import dataclasses

import pytest

from diffinject.cells import DIFFUSION_LOGGING

from diffinject.diffusion import shipped
from diffinject.diffusion.checkpoint import load_unet_checkpoint
from diffinject.config import preset
from diffinject.errors import CheckpointError, ConfigError
from diffinject.integrity import file_digest


def test_the_shipped_file_has_its_hash_fits_10_mb_and_the_quick_preset():
    path = shipped.quick_checkpoint()
    assert file_digest(path) == shipped.QUICK_CHECKPOINT_SHA256
    assert path.stat().st_size <= 10_000_000
    quick = preset("colored_digits", "1", quick=True).diffusion
    unet, meta = load_unet_checkpoint(path, quick.preset)
    # the quick preset's settings are the ones it was trained with (--retrain-diffusion retrains it)
    assert meta["step"] == quick.num_steps
    trained = {k: v for k, v in meta["config"].items() if k not in DIFFUSION_LOGGING + ("num_steps",)}
    assert trained == {k: v for k, v in dataclasses.asdict(quick).items() if k in trained}
    # the speed levers (channels_last, compile, fused_adam) came after the file; all are off in the preset
    levers = {"channels_last", "compile", "fused_adam"}
    assert {k: dataclasses.asdict(quick)[k] for k in levers} == {"channels_last": False, "compile": "none",
                                                                  "fused_adam": False}
    assert set(trained) == set(dataclasses.asdict(quick)) - set(DIFFUSION_LOGGING) - {"num_steps"} - levers


def test_a_damaged_or_missing_file_is_a_clear_error(tmp_path):
    damaged = tmp_path / "ckpt.pt"
    damaged.write_bytes(shipped.QUICK_CHECKPOINT.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match="expected " + shipped.QUICK_CHECKPOINT_SHA256):
        shipped.quick_checkpoint(damaged)
    with pytest.raises(CheckpointError, match="missing"):
        shipped.quick_checkpoint(tmp_path / "absent.pt")


def test_quick_runs_use_it_unless_retrained_or_given():
    assert shipped.with_quick_checkpoint({}, quick=False, retrain=False) == {}
    assert shipped.with_quick_checkpoint({}, quick=True, retrain=True) == {}
    assert shipped.with_quick_checkpoint({}, quick=True, retrain=False) == {
        "colored_digits": str(shipped.QUICK_CHECKPOINT)}
    mine = {"colored_digits": "/elsewhere/diffusion.pt"}
    assert shipped.with_quick_checkpoint(mine, quick=True, retrain=False) == mine


def test_a_diffusion_override_or_sweep_on_the_shipped_model_says_to_retrain():
    cfg = preset("colored_digits", "5", quick=True)
    assert shipped.with_quick_checkpoint({}, True, False, [cfg]) == {"colored_digits": str(shipped.QUICK_CHECKPOINT)}
    cfg.diffusion.num_steps = 3
    with pytest.raises(ConfigError, match=r"so diffusion.num_steps=3 would change nothing; add --retrain-diffusion"):
        shipped.with_quick_checkpoint({}, True, False, [cfg, cfg])
    assert shipped.with_quick_checkpoint({}, True, True, [cfg]) == {}
    with pytest.raises(ConfigError, match=r"so a sweep of diffusion.gamma would change nothing"):
        shipped.with_quick_checkpoint({}, True, False, [preset("colored_digits", quick=True)],
                                      swept=["injection.gamma", "diffusion.gamma"])
