"""The quick run's shipped diffusion checkpoint: present, the documented hash, strictly loadable,
and used by --quick unless retrained or replaced."""
import pytest

from diffinject.diffusion import shipped
from diffinject.diffusion.checkpoint import load_unet_checkpoint
from diffinject.config import preset
from diffinject.errors import CheckpointError
from diffinject.integrity import file_digest


def test_the_shipped_file_has_its_hash_fits_10_mb_and_the_quick_preset():
    path = shipped.quick_checkpoint()
    assert file_digest(path) == shipped.QUICK_CHECKPOINT_SHA256
    assert path.stat().st_size <= 10_000_000
    unet, meta = load_unet_checkpoint(path, preset("colored_digits", "1", quick=True).diffusion.preset)
    assert meta["config"]["train_data"] == "colored_digits@1"


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
