"""FastGAN (AmpliBias's per-class generators): the networks' shapes, widths and skip-layer
excitation, the decoders' reconstruction loss, and the stage code's per-class training, exact
resume and per-seed sampling."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffinject.config import FastGANConfig
from diffinject.errors import CheckpointError, ConfigError, DataError
from diffinject.gan import hinge_d_loss, reconstruction_loss
from diffinject.gan.checkpoint import gan_checkpoint_bytes
from diffinject.gan.fastgan import (Discriminator, Generator, build_discriminator, build_generator, parameter_count,
                                    quadrant)
from diffinject.gan.presets import get_gan_preset
from diffinject.synthesis.fastgan import (class_batch, load_class_generators, sample_class_images,
                                         train_class_generators)
from diffinject.train import TrainContext

MULTIPLIERS = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5}  # FastGAN's widths, x ngf / ndf


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These networks are small: a second thread buys nothing and, on shared cores, costs much."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mse(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


def _inputs(generator: Generator, n: int, seed: int = 0):
    return generator.random_inputs(n, torch.Generator().manual_seed(seed))


@torch.no_grad()
def _calibrated(generator: Generator) -> Generator:
    """An untrained generator whose BN statistics come from its own activations (at the initial
    statistics, eval-mode images are nearly constant)."""
    generator.train()
    for seed in range(20):
        generator(*_inputs(generator, 4, seed))
    return generator.eval()


def test_quick_32_generator_and_discriminator_shapes():
    torch.manual_seed(0)
    g, d = build_generator("quick_32").eval(), build_discriminator("quick_32").eval()
    with torch.no_grad():
        big, small = g(*_inputs(g, 2))
        assert big.shape == (2, 3, 32, 32) and small.shape == (2, 3, 16, 16)
        assert big.abs().max() <= 1 and small.abs().max() <= 1
        logits, decoded = d(big, "real", part=3)
        assert logits.shape == (2, 50)  # 5 x 5 from each path
        assert [tuple(x.shape) for x in decoded] == [(2, 3, 16, 16)] * 3
        assert d((big, small), "fake").shape == (2, 50)
    with pytest.raises(ValueError, match="part"):
        d(big, "real")
    with pytest.raises(ValueError, match="label"):
        d(big, "true", part=0)


def test_paper_256_shapes_on_the_meta_device():
    with torch.device("meta"):
        g, d = build_generator("paper_256"), build_discriminator("paper_256")
        big, small = g(*g.random_inputs(2, None, "meta"))
        logits, decoded = d(big, "real", part=0)
    assert big.shape == (2, 3, 256, 256) and small.shape == (2, 3, 128, 128)
    assert logits.shape == (2, 50)
    assert [tuple(x.shape) for x in decoded] == [(2, 3, 128, 128)] * 3  # the decoders work at 128 px


def _formula_counts(name: str) -> tuple[int, int]:
    """Generator and discriminator parameters, counted layer by layer from the width table."""
    p = get_gan_preset("fastgan", name)
    wg = {r: int(m * p.ngf) for r, m in MULTIPLIERS.items()}
    wd = {r: int(m * p.ndf) for r, m in MULTIPLIERS.items()}
    res = p.resolution
    ups = [r for r in (8, 16, 32, 64, 128, 256) if r <= res]
    generator = p.nz * 2 * wg[4] * 16 + 2 * 2 * wg[4]                            # transposed conv + BN
    generator += sum(wg[r // 2] * 2 * wg[r] * 9 + 1 + 2 * 2 * wg[r] for r in ups)  # conv, noise weight, BN
    span = p.sle_span
    generator += sum(wg[r] * wg[span * r] * 16 + wg[span * r] ** 2 for r in (4, 8, 16) if span * r <= res)  # SLE
    generator += wg[res] * 3 * 9 + 3 + wg[res // 2] * 3 + 3                     # the two RGB outputs

    def path(size):
        total = 3 * wd[size] * 9 + wd[size]
        for r in [r for r in (128, 64, 32, 16, 8) if r < size]:
            cin, cout = wd[2 * r], wd[r]
            total += cin * cout * 16 + cout * cout * 9 + cin * cout + 3 * 2 * cout
        return total + wd[8] * wd[4] + 2 * wd[4] + wd[4] * 16 + 1

    def decoder(cin):
        total = 0
        for r in [r for r in (16, 32, 64, 128) if r <= res // 2]:
            total += cin * 2 * wd[r] * 9 + 2 * 2 * wd[r]
            cin = wd[r]
        return total + cin * 3 * 9 + 3

    return generator, path(res) + path(res // 2) + 2 * decoder(wd[8]) + decoder(wd[16])


@pytest.mark.parametrize("name", ["quick_32", "paper_256"])
def test_parameter_counts_follow_the_width_table(name):
    with torch.device("meta"):
        g, d = build_generator(name), build_discriminator(name)
    assert (parameter_count(g), parameter_count(d)) == _formula_counts(name)
    if name == "paper_256":  # a light GAN: tens of millions of parameters per network at 256 px
        assert 15e6 < parameter_count(g) < 35e6 and 15e6 < parameter_count(d) < 35e6


def test_skip_layer_excitation_gates_in_the_unit_interval_at_the_right_resolutions():
    with torch.device("meta"):
        assert list(build_generator("paper_256").sle) == ["4", "8", "16"]  # 4->64, 8->128, 16->256
    torch.manual_seed(0)
    g = build_generator("quick_32").eval()
    assert list(g.sle) == ["4"]  # the quick preset's span is 8
    seen = []
    g.sle["4"].register_forward_hook(lambda m, args, out: seen.append((args[0].shape[-1], args[1].shape[-1],
                                                                       m.gate(args[0]))))
    with torch.no_grad():
        g(*_inputs(g, 3))
    (low, high, gate), = seen
    assert (low, high) == (4, 32)
    assert gate.shape == (3, g.sle["4"].excite.out_channels, 1, 1)
    assert 0 < gate.min() and gate.max() < 1


def test_reconstruction_loss_is_the_summed_distance_to_the_resized_targets():
    real = torch.rand(2, 3, 16, 16) * 2 - 1
    half = F.interpolate(real, size=8, mode="bilinear", align_corners=False, antialias=True)
    exact = (half, half, quadrant(real, 1))
    assert reconstruction_loss(exact, real, 1, mse) == 0
    shifted = tuple(x + 0.5 for x in exact)
    assert float(reconstruction_loss(shifted, real, 1, mse)) == pytest.approx(3 * 0.25, rel=1e-5)
    assert reconstruction_loss(exact, real, 2, mse) > 0  # another quadrant is another target


def test_reconstruction_loss_falls_as_the_discriminator_trains_on_fixed_images():
    torch.manual_seed(0)
    d = Discriminator(get_gan_preset("fastgan", "quick_32"))
    real = torch.rand(8, 3, 64, 64) * 2 - 1
    optimizer = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.999))
    losses = []
    for step in range(20):
        part = step % 4
        _, decoded = d(real, "real", part)
        loss = reconstruction_loss(decoded, real, part, mse)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-4:]) < 0.7 * losses[0]


def test_hinge_d_loss_is_zero_once_both_margins_hold():
    assert hinge_d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -2.5])) == 0
    assert hinge_d_loss(torch.tensor([0.5, 3.0]), torch.tensor([-1.0, -2.5])) == pytest.approx(0.25)


def _tiny_data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 1], dtype=np.int64)  # class 0: 3 < batch (replacement), class 1: 5
    return images, labels


def _run(cfg, resume=None):
    states, logs, artifacts = [], [], []

    def report(metrics, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)  # what the Ray layer does: the state leaves the loop serialised
        states.append(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))

    ctx = TrainContext(resume_state=resume, report=report, log=lambda step, m: logs.append((step, m)),
                       log_artifact=lambda name, payload, folder: artifacts.append((folder, name)))
    images, labels = _tiny_data()
    return train_class_generators(cfg, images, labels, ctx, seed=3, distance=mse), states, logs, artifacts


def _weights(result):
    return {c: g.state_dict() for c, g in result.generators.items()}


def test_one_generator_per_class_and_an_exact_resume_mid_class_and_at_a_class_boundary(tmp_path):
    cfg = FastGANConfig(preset="quick_32", batch_size=4, num_steps=2, log_every=1, checkpoint_every=1,
                        sample_every=2, sample_images=2)
    straight, states, logs, artifacts = _run(cfg)
    assert sorted(straight.generators) == [0, 1] and straight.step == 4
    assert all(not g.training for g in straight.generators.values())
    assert [s for s, _ in logs] == [1, 2, 3, 4] and [m["class"] for _, m in logs] == [0, 0, 1, 1]
    assert {"d_loss", "g_loss", "recon", "images_per_s"} <= set(logs[0][1])
    assert artifacts == [("samples", "class_0_step_0000002.png"), ("samples", "class_1_step_0000002.png")]
    assert [(s["class_index"], s["step"], sorted(s["finished"])) for s in states] == [
        (0, 1, []), (0, 2, [0]), (1, 1, [0]), (1, 2, [0, 1])]
    assert not torch.equal(straight.generators[0].to_big.weight, straight.generators[1].to_big.weight)

    for resume in (states[0], states[1], states[2]):  # mid class 0, class 0's end, mid class 1
        resumed, _, _, _ = _run(cfg, resume)
        for c, weights in _weights(straight).items():
            for key, value in weights.items():
                assert torch.equal(value, resumed.generators[c].state_dict()[key]), (resume["step"], c, key)

    path = tmp_path / "fastgan.pt"
    path.write_bytes(straight.checkpoint)
    loaded = load_class_generators(path)
    assert sorted(loaded) == [0, 1]
    for c, weights in _weights(straight).items():
        assert all(torch.equal(v, loaded[c].state_dict()[k]) for k, v in weights.items())
    other = tmp_path / "other.pt"
    other.write_bytes(gan_checkpoint_bytes("fastgan", "quick_32", {"generator": weights}, 1, {}))
    with pytest.raises(CheckpointError, match="class_<label>"):
        load_class_generators(other)


@pytest.mark.parametrize("num_images", [3, 5, 8])
def test_every_step_draws_a_full_batch_shared_between_the_ranks(num_images):
    for step in range(6):
        batch = class_batch(num_images, 4, 7, step, 0, 1)
        assert len(batch) == 4 and batch.max() < num_images
        if num_images >= 4:
            assert len(set(batch)) == 4  # without replacement within an epoch
        shares = [class_batch(num_images, 4, 7, step, rank, 2) for rank in (0, 1)]
        assert sorted(np.concatenate(shares)) == sorted(batch) and all(len(s) == 2 for s in shares)


def test_training_data_is_checked():
    images, labels = _tiny_data()
    cfg = FastGANConfig(preset="quick_32", num_steps=1)
    with pytest.raises(DataError, match="uint8 N x H x W x 3"):
        train_class_generators(cfg, images[..., 0], labels, TrainContext(), 0, mse)
    with pytest.raises(DataError, match="labels"):
        train_class_generators(cfg, images, labels[:3], TrainContext(), 0, mse)
    with pytest.raises(ConfigError, match="batch_size 2 is smaller than the 4 workers"):
        train_class_generators(FastGANConfig(preset="quick_32", batch_size=2, num_steps=1), images, labels,
                               TrainContext(world_size=4), 0, mse)


def test_sample_class_images_gives_the_counts_and_labels_and_each_image_depends_on_its_seed_only():
    torch.manual_seed(0)
    generators = {0: _calibrated(build_generator("quick_32")), 2: _calibrated(build_generator("quick_32"))}
    seeds = np.array([5, 6, 7, 8, 9], dtype=np.int64)
    images, labels = sample_class_images(generators, {2: 2, 0: 3}, seeds, out_size=24, batch_size=2)
    assert images.shape == (5, 24, 24, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 2, 2]
    one_by_one, _ = sample_class_images(generators, {0: 3, 2: 2}, seeds, out_size=24, batch_size=1)
    assert np.array_equal(images, one_by_one)
    alone, _ = sample_class_images(generators, {0: 1}, seeds[2:3], out_size=24)
    assert np.array_equal(alone[0], images[2])
    assert not np.array_equal(images[0], images[1])
    with pytest.raises(ConfigError, match="one seed per image"):
        sample_class_images(generators, {0: 3}, seeds, out_size=24)
    with pytest.raises(ConfigError, match="no FastGAN generator"):
        sample_class_images(generators, {1: 5}, seeds, out_size=24)
