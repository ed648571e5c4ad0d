"""The quick run's shipped GAN checkpoints (A²'s source StyleGAN2, AmpliBias's per-class FastGAN
starting points, on the main job's data): present, the recorded hash, at most 10 MB, strictly
loadable, trained with the quick preset's settings, and used by --quick unless retrained."""
import pytest

from diffinject.config.builder import SOURCE_TRAINING, experiment_config, without_shipped_generators
from diffinject.config.quick import QUICK_DATASET, QUICK_FASTGAN_INIT
from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.core.integrity import file_digest
from diffinject.experiment import shipped_gans as shipped
from diffinject.nets.gan.checkpoint import load_net, read_gan_checkpoint
from diffinject.stages.synthesis.fastgan_per_class import load_class_generators


def test_the_main_job_has_both_starting_generators():
    assert {(QUICK_DATASET, "stylegan2_source"), (QUICK_DATASET, "fastgan_init")} <= set(shipped.SHIPPED_GANS)


@pytest.mark.parametrize("what", ["stylegan2_source", "fastgan_init"])
def test_each_shipped_gan_has_its_hash_fits_10_mb_and_was_trained_as_the_quick_preset_says(what):
    model = shipped.SHIPPED_GANS[(QUICK_DATASET, what)]
    path = shipped.resolve_gan_checkpoint("shipped", QUICK_DATASET, what, "field")
    assert file_digest(path) == model.sha256 and path.stat().st_size <= 10_000_000
    quick = experiment_config(QUICK_DATASET, "1", quick=True)
    if what == "stylegan2_source":
        from diffinject.nets.gan.stylegan2 import Discriminator, Generator, get_gan_preset

        payload = read_gan_checkpoint(path, "stylegan2")
        gan = get_gan_preset("stylegan2", payload["preset"])
        load_net(Generator(gan), payload, "generator", path)
        load_net(Discriminator(gan), payload, "discriminator", path)
        # --retrain-generators trains this file again: the quick preset's source-training settings
        assert payload["step"] == quick.stylegan2.num_steps  # the kept checkpoint of a longer run: its step
        trained = [k for k in SOURCE_TRAINING if k != "num_steps"]
        assert {k: payload["config"][k] for k in trained} == {k: getattr(quick.stylegan2, k) for k in trained}
    else:
        payload = read_gan_checkpoint(path, "fastgan")
        assert sorted(load_class_generators(path)) == list(range(10))
        assert payload["step"] == QUICK_FASTGAN_INIT["num_steps"]
        assert payload["config"]["ema_decay"] == pytest.approx(QUICK_FASTGAN_INIT["ema_decay"])
        assert payload["preset"] == quick.fastgan.preset and payload["config"]["hflip"] is False


def test_a_damaged_file_and_a_dataset_without_one_are_clear_errors(tmp_path):
    model = shipped.SHIPPED_GANS[(QUICK_DATASET, "stylegan2_source")]
    damaged = tmp_path / "source.pt"
    damaged.write_bytes(model.path.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match="expected " + model.sha256):
        shipped.verified(damaged, model.sha256)
    with pytest.raises(ConfigError, match="ships no fastgan_init checkpoint for colored_digits"):
        shipped.resolve_gan_checkpoint("shipped", "colored_digits", "fastgan_init", "fastgan.init_checkpoint")
    assert shipped.resolve_gan_checkpoint("", QUICK_DATASET, "fastgan_init", "fastgan.init_checkpoint") is None
    cleared = without_shipped_generators(experiment_config(QUICK_DATASET, "1", quick=True))
    assert cleared.stylegan2.source_checkpoint == cleared.fastgan.init_checkpoint == ""
