"""The quick run's shipped diffusion checkpoints (one per embedded dataset): present, the
recorded hash, strictly loadable, trained with the quick preset's settings, and used by --quick
unless retrained or replaced."""
import dataclasses

import pytest

from diffinject.config.builder import experiment_config
from diffinject.config.quick import QUICK_DATASET
from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.core.integrity import file_digest
from diffinject.experiment import shipped_diffusion as shipped
from diffinject.experiment.keys import DIFFUSION_LOGGING
from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint


@pytest.mark.parametrize("dataset", sorted(shipped.SHIPPED))
def test_each_shipped_file_has_its_hash_fits_10_mb_and_its_quick_preset(dataset):
    path = shipped.quick_checkpoint(dataset)
    assert file_digest(path) == shipped.SHIPPED[dataset].sha256
    assert path.stat().st_size <= 10_000_000
    quick = experiment_config(dataset, "1", quick=True).diffusion
    unet, meta = load_unet_checkpoint(path, quick.preset)
    # the quick preset's settings are the ones it was trained with (--retrain-diffusion retrains it)
    assert meta["step"] == quick.num_steps
    assert meta["config"]["train_data"] == f"{dataset}@1"
    trained = {k: v for k, v in meta["config"].items() if k not in DIFFUSION_LOGGING + ("num_steps",)}
    assert trained == {k: v for k, v in dataclasses.asdict(quick).items() if k in trained}
    # the speed levers (channels_last, compile, fused_adam) came after the first file; all are off in the preset
    levers = {"channels_last", "compile", "fused_adam"}
    assert {k: dataclasses.asdict(quick)[k] for k in levers} == {"channels_last": False, "compile": "none",
                                                                  "fused_adam": False}
    assert set(trained) | levers >= set(dataclasses.asdict(quick)) - set(DIFFUSION_LOGGING) - {"num_steps"}


def test_the_main_job_has_a_shipped_model():
    assert QUICK_DATASET in shipped.SHIPPED


def test_a_damaged_or_missing_file_is_a_clear_error(tmp_path):
    model = shipped.SHIPPED[QUICK_DATASET]
    damaged = tmp_path / "ckpt.pt"
    damaged.write_bytes(model.path.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match="expected " + model.sha256):
        shipped.verified(damaged, model.sha256)
    with pytest.raises(CheckpointError, match="missing"):
        shipped.verified(tmp_path / "absent.pt", model.sha256)


def test_quick_runs_use_the_model_of_each_of_their_datasets_unless_retrained_or_given():
    digits, mnist = experiment_config("colored_digits", quick=True), experiment_config("colored_mnist_5k", quick=True)
    assert shipped.with_quick_checkpoint({}, False, False, [digits]) == {}
    assert shipped.with_quick_checkpoint({}, True, True, [digits]) == {}
    assert shipped.with_quick_checkpoint({}, True, False, [digits, mnist]) == {
        "colored_digits": str(shipped.SHIPPED["colored_digits"].path),
        "colored_mnist_5k": str(shipped.SHIPPED["colored_mnist_5k"].path)}
    mine = {"colored_digits": "/elsewhere/diffusion.pt"}
    assert shipped.with_quick_checkpoint(mine, True, False, [digits]) == mine
    assert shipped.with_quick_checkpoint({}, True, False, [experiment_config("cmnist", quick=True)]) == {}  # none shipped


def test_a_diffusion_override_or_sweep_on_the_shipped_model_says_to_retrain():
    cfg = experiment_config("colored_digits", "5", quick=True)
    assert shipped.with_quick_checkpoint({}, True, False, [cfg]) == {
        "colored_digits": str(shipped.SHIPPED["colored_digits"].path)}
    cfg.diffusion.num_steps = 3
    with pytest.raises(ConfigError, match=r"so diffusion.num_steps=3 would change nothing; add --retrain-diffusion"):
        shipped.with_quick_checkpoint({}, True, False, [cfg, cfg])
    assert shipped.with_quick_checkpoint({}, True, True, [cfg]) == {}
    with pytest.raises(ConfigError, match=r"so a sweep of diffusion.gamma would change nothing"):
        shipped.with_quick_checkpoint({}, True, False, [experiment_config("colored_digits", quick=True)],
                                      swept=["injection.gamma", "diffusion.gamma"])
    # the Colored Digits model was trained on Colored Digits: the Colored MNIST 5k preset differs
    assert experiment_config("colored_mnist_5k", quick=True).diffusion != experiment_config("colored_digits", quick=True).diffusion
