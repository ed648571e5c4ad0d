"""FastGAN (AmpliBias's per-class generators): the networks' shapes, widths, blocks, spectral
norm, initialisation and skip-layer excitation (as FastGAN-pytorch's models.py), the losses (as
its train.py), and the stage code's flips, per-class training, exact resume and per-seed
sampling."""
import dataclasses
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import diffinject.stages.synthesis.fastgan_per_class as fastgan_stage
from diffinject.config.schema import FastGANConfig
from diffinject.core.errors import CheckpointError, ConfigError, DataError
from diffinject.nets.gan import hinge_d_loss, hinge_g_loss, reconstruction_loss
from diffinject.nets.gan.checkpoint import gan_checkpoint_bytes, read_gan_checkpoint
from diffinject.nets.gan.fastgan import (Discriminator, Generator, build_discriminator, build_generator,
                                         parameter_count, quadrant, widths)
from diffinject.nets.gan.fastgan_blocks import (NoiseInjection, SkipLayerExcitation, UpBlock, UpBlockComp,
                                                is_comp_resolution)
from diffinject.nets.gan.presets import get_gan_preset
from diffinject.stages.synthesis.fastgan_per_class import (class_batch, load_class_generators, random_hflip,
                                                           sample_class_images, train_class_generators)
from diffinject.training.loop import TrainContext

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
    generator = p.nz * 2 * wg[4] * 16 + 2 * 2 * wg[4]                            # transposed conv + BN
    for r in (8, 32, 128):  # UpBlockComp: two (conv, noise weight, BN)
        if r <= res:
            generator += wg[r // 2] * 2 * wg[r] * 9 + 1 + 2 * 2 * wg[r] + wg[r] * 2 * wg[r] * 9 + 1 + 2 * 2 * wg[r]
    generator += sum(wg[r // 2] * 2 * wg[r] * 9 + 2 * 2 * wg[r] for r in (16, 64, 256) if r <= res)  # UpBlock
    span = p.sle_span
    generator += sum(wg[r] * wg[span * r] * 16 + wg[span * r] ** 2 for r in (4, 8, 16) if span * r <= res)  # SLE
    generator += wg[res] * 3 * 9 + 3 + wg[res // 2] * 3 + 3                     # the two RGB outputs

    def path(size, sle_span=None):
        total = 3 * wd[size] * 9 + wd[size]
        for r in [r for r in (128, 64, 32, 16, 8) if r < size]:
            cin, cout = wd[2 * r], wd[r]
            total += cin * cout * 16 + cout * cout * 9 + cin * cout + 3 * 2 * cout
        if sle_span:  # the big path's excitation, sle_span r -> r px for r = 8, 16, 32
            total += sum(wd[sle_span * r] * wd[r] * 16 + wd[r] ** 2 for r in (8, 16, 32) if sle_span * r <= size)
        return total + wd[8] * wd[4] + 2 * wd[4] + wd[4] * 16 + 1

    def decoder(cin):
        total = 0
        for r in [r for r in (16, 32, 64, 128) if r <= res // 2]:
            total += cin * 2 * wd[r] * 9 + 2 * 2 * wd[r]
            cin = wd[r]
        return total + cin * 3 * 9 + 3

    return generator, path(res, p.d_sle_span) + path(res // 2) + 2 * decoder(wd[8]) + decoder(wd[16])


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


def test_reconstruction_loss_is_the_distance_to_the_resized_targets_summed_over_batch_and_decoders():
    real = torch.rand(2, 3, 16, 16) * 2 - 1
    half = F.interpolate(real, size=8, mode="bilinear", align_corners=False, antialias=True)
    exact = (half, half, quadrant(real, 1))
    assert reconstruction_loss(exact, real, 1, mse) == 0
    shifted = tuple(x + 0.5 for x in exact)
    # 2 images x 3 decoders x 0.25: summed over the batch (FastGAN-pytorch train.py), not averaged
    assert float(reconstruction_loss(shifted, real, 1, mse)) == pytest.approx(2 * 3 * 0.25, rel=1e-5)
    assert reconstruction_loss(exact, real, 2, mse) > 0  # another quadrant is another target
    # by hand: image n of decoder k off by d[k][n], so its mse is d^2; the loss is the sum of all six
    offsets = [[0.1, 0.2], [0.3, -0.4], [0.5, 0.0]]
    decoded = tuple(x + torch.tensor(d).view(2, 1, 1, 1) for x, d in zip(exact, offsets))
    assert float(reconstruction_loss(decoded, real, 1, mse)) == pytest.approx(
        0.01 + 0.04 + 0.09 + 0.16 + 0.25, rel=1e-5)


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


def test_hinge_d_loss_draws_fastgan_pytorchs_random_margins_from_the_given_generator():
    real = torch.tensor([[0.9, 0.5, 3.0], [0.85, -0.2, 0.95]])
    fake = torch.tensor([[-0.9, -1.5, 0.3], [-0.95, 0.0, -3.0]])
    loss = hinge_d_loss(real, fake, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws: the reals' margins, then the fakes'
    real_margin, fake_margin = (torch.rand(2, 3, generator=g) * 0.2 + 0.8 for _ in range(2))
    expected = F.relu(real_margin - real).mean() + F.relu(fake_margin + fake).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss) == float(hinge_d_loss(real, fake, torch.Generator().manual_seed(7)))  # seeded: reproducible
    assert float(loss) != float(hinge_d_loss(real, fake, torch.Generator().manual_seed(8)))
    fixed = F.relu(1 - real).mean() + F.relu(1 + fake).mean()  # the paper's Eq. 2, margin 1
    assert float(loss) < float(fixed) - 1e-3
    # margins in [0.8, 1): zero once every real logit is >= 1 and every fake one <= -1
    assert hinge_d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -2.5]), torch.Generator()) == 0
    assert hinge_g_loss(fake) == pytest.approx(-float(fake.mean()))


def test_every_convolution_of_both_networks_is_spectrally_normalised():
    torch.manual_seed(0)
    for net in (build_generator("quick_32"), build_discriminator("quick_32")):
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert len(convs) >= 10
        for conv in convs:
            assert parametrize.is_parametrized(conv, "weight")
            assert type(conv.parametrizations.weight[0]).__name__ == "_SpectralNorm"
        assert any(k.endswith("parametrizations.weight.original") for k in net.state_dict())
    g = build_generator("quick_32")
    assert isinstance(g.init, nn.ConvTranspose2d) and parametrize.is_parametrized(g.init, "weight")
    g.eval()
    with torch.no_grad():  # the effective weight: the original over its power-iteration spectral norm u^T W v
        conv = g.blocks["16"].conv
        original, sn = conv.parametrizations.weight.original, conv.parametrizations.weight[0]
        sigma = sn._u @ original.flatten(1) @ sn._v
        assert torch.allclose(conv.weight, original / sigma)
        assert float(torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)) == pytest.approx(1.0, abs=0.1)


def test_initialisation_is_fastgan_pytorchs_weights_init():
    """Convolutions N(0, 0.02) (the spectral norm's original weights), batch norms N(1, 0.02) and 0."""
    torch.manual_seed(0)
    for net in (build_generator("quick_32"), build_discriminator("quick_32")):
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                weight = module.parametrizations.weight.original.detach()
                if weight.numel() >= 100:
                    assert abs(float(weight.mean())) < 0.005, (type(module).__name__, float(weight.mean()))
                    assert 0.015 < float(weight.std()) < 0.025, (type(module).__name__, float(weight.std()))
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        scales = torch.cat([m.weight.detach() for m in norms])
        assert float(scales.mean()) == pytest.approx(1.0, abs=0.005)
        assert float(scales.std()) == pytest.approx(0.02, abs=0.004)
        assert all(torch.all(m.bias == 0) for m in norms)
        every = torch.cat([m.parametrizations.weight.original.detach().flatten() for m in net.modules()
                           if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
        assert float(every.mean()) == pytest.approx(0.0, abs=5e-4)
        assert float(every.std()) == pytest.approx(0.02, abs=5e-4)


def test_generator_alternates_noisy_two_conv_comp_blocks_and_plain_blocks():
    """UpBlockComp (two convs, two noise injections) at 8, 32, 128 px; UpBlock (one conv, no noise)
    at 16, 64, 256 px, as FastGAN-pytorch's generator."""
    assert [r for r in (8, 16, 32, 64, 128, 256, 512, 1024) if is_comp_resolution(r)] == [8, 32, 128, 512]
    with torch.device("meta"):
        big = build_generator("paper_256")
    assert [type(big.blocks[str(r)]) for r in (8, 16, 32, 64, 128, 256)] == [UpBlockComp, UpBlock] * 3
    assert big.noise_shapes() == [(1, r, r) for r in (8, 8, 32, 32, 128, 128)]
    torch.manual_seed(0)
    g = build_generator("quick_32")
    for r, block in g.blocks.items():
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        noises = [m for m in block.modules() if isinstance(m, NoiseInjection)]
        comp = r in ("8", "32")
        assert (len(convs), len(noises)) == ((2, 2) if comp else (1, 0)), r
    assert [m.weight.shape[1] for m in g.blocks["8"].convs] == [widths(4)[4], widths(4)[8]]  # C_in, then C
    assert g.noise_shapes() == [(1, 8, 8), (1, 8, 8), (1, 32, 32), (1, 32, 32)]
    z, noise = _inputs(g, 2, seed=1)
    assert [tuple(m.shape) for m in noise] == [(2, 1, 8, 8)] * 2 + [(2, 1, 32, 32)] * 2
    again = _inputs(g, 2, seed=1)
    assert torch.equal(z, again[0]) and all(torch.equal(a, b) for a, b in zip(noise, again[1]))
    g.eval()
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, NoiseInjection):
                m.weight.fill_(1.0)
        base = g(z, noise)[0]
        for i in range(len(noise)):  # every map reaches the image: each injection has its own
            changed = list(noise)
            changed[i] = torch.randn(changed[i].shape, generator=torch.Generator().manual_seed(50 + i))
            assert not torch.allclose(g(z, changed)[0], base), i
        with pytest.raises(ValueError, match="4 noise maps, got 3"):
            g(z, noise[:3])


def _set_sle_weights(sle: SkipLayerExcitation):
    sle.squeeze.weight.fill_(1 / 16)  # the mean of the 4 x 4 pooled map
    sle.excite.weight.fill_(1.0)


@torch.no_grad()
def test_skip_layer_excitation_activation_is_swish_by_default_and_leaky_relu_on_request():
    x_low, x_high = torch.full((1, 1, 8, 8), -2.0), torch.full((1, 1, 16, 16), 3.0)
    swish = SkipLayerExcitation(1, 1)
    assert swish.activation == "swish"
    _set_sle_weights(swish)
    # squeeze -> -2; FastGAN-pytorch's SEBlock: swish(-2) = -2 sigmoid(-2); then sigmoid
    s = -2 / (1 + math.exp(2))
    assert float(swish.gate(x_low)) == pytest.approx(1 / (1 + math.exp(-s)), rel=1e-6)
    assert float(swish(x_low, x_high)[0, 0, 5, 7]) == pytest.approx(3 / (1 + math.exp(-s)), rel=1e-6)
    leaky = SkipLayerExcitation(1, 1, "leaky_relu")  # the paper's text: LeakyReLU(0.1)
    _set_sle_weights(leaky)
    assert float(leaky.gate(x_low)) == pytest.approx(1 / (1 + math.exp(0.2)), rel=1e-6)
    with pytest.raises(ValueError, match="activation 'relu'"):
        SkipLayerExcitation(1, 1, "relu")
    torch.manual_seed(0)
    preset = get_gan_preset("fastgan", "quick_32")
    assert preset.sle_activation == "swish" and get_gan_preset("fastgan", "paper_256").sle_activation == "swish"
    g, d = Generator(preset), Discriminator(preset)
    assert {m.activation for m in [*g.sle.values(), *d.big.sle.values()]} == {"swish"}
    paper_text = dataclasses.replace(preset, sle_activation="leaky_relu")
    assert {m.activation for m in [*Generator(paper_text).sle.values(), *Discriminator(paper_text).big.sle.values()]
            } == {"leaky_relu"}


def test_discriminator_big_path_has_fastgan_pytorchs_skip_layer_excitation():
    """256 px: 256 -> 32, 128 -> 16, 64 -> 8 px (se_2_16, se_4_32, se_8_64) on the big path, none on
    the small one; the quick preset (32 px, span 4): one, 32 -> 8."""
    with torch.device("meta"):
        d = build_discriminator("paper_256")
    w = widths(64)
    assert list(d.big.sle) == ["8", "16", "32"] and len(d.small.sle) == 0
    for r in (8, 16, 32):
        sle = d.big.sle[str(r)]
        assert (sle.squeeze.in_channels, sle.squeeze.out_channels) == (w[8 * r], w[r])
    torch.manual_seed(0)
    d = build_discriminator("quick_32").eval()
    assert list(d.big.sle) == ["8"] and len(d.small.sle) == 0
    seen, read = [], []
    d.big.sle["8"].register_forward_hook(lambda m, args, out: seen.append((args[0], args[1], out, m.gate(args[0]))))
    d.big.logits.register_forward_hook(lambda m, args, out: read.append(args[0]))
    d.decode_big.register_forward_hook(lambda m, args, out: read.append(args[0]))
    with torch.no_grad():
        d(torch.rand(2, 3, 32, 32) * 2 - 1, "real", part=0)
    (low, high, out, gate), = seen
    assert (low.shape[-1], high.shape[-1]) == (32, 8) and torch.allclose(out, high * gate)
    assert not torch.allclose(out, high)  # the gate is no identity
    # the excited 8 px features are what the logits and the whole-image decoder read
    assert torch.equal(read[0], out) and torch.equal(read[1], out)


def test_random_hflip_mirrors_each_image_on_its_own_draw():
    images = torch.rand(16, 3, 4, 5)
    out = random_hflip(images, torch.Generator().manual_seed(0))
    flipped = torch.rand(16, generator=torch.Generator().manual_seed(0)) < 0.5  # the same draws
    assert 0 < int(flipped.sum()) < 16
    for n in range(16):
        assert torch.equal(out[n], images[n].flip(-1) if flipped[n] else images[n]), n


@pytest.mark.parametrize("hflip", [True, False])
def test_training_flips_the_real_batch_when_hflip_is_set(monkeypatch, hflip):
    assert FastGANConfig().hflip is True  # FastGAN-pytorch train.py's RandomHorizontalFlip
    calls = []

    def recording(images, generator):
        out = random_hflip(images, generator)
        calls.append(not torch.equal(out, images))
        return out

    monkeypatch.setattr(fastgan_stage, "random_hflip", recording)
    cfg = FastGANConfig(preset="quick_32", batch_size=4, num_steps=2, log_every=1, checkpoint_every=2,
                        sample_every=0, hflip=hflip)
    images, labels = _tiny_data()
    train_class_generators(cfg, images, labels, TrainContext(), seed=3, distance=mse)
    assert len(calls) == (4 if hflip else 0)  # 2 classes x 2 steps
    if hflip:
        assert any(calls)


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


def test_a_starting_point_file_starts_each_class_and_kept_checkpoints_hold_every_class(tmp_path):
    """fastgan.init_checkpoint: each class's G, EMA and D start from the file's class networks
    (strictly); keep_checkpoints logs one file per checkpoint step with every class's G and D."""
    cfg = FastGANConfig(preset="quick_32", batch_size=4, num_steps=2, log_every=1, checkpoint_every=1,
                        sample_every=0, keep_checkpoints=True)
    first, _, _, artifacts = _run(cfg)
    assert [name for folder, name in artifacts if folder == "checkpoints"] == ["step_0000001.pt", "step_0000002.pt"]
    path = tmp_path / "init.pt"
    path.write_bytes(first.checkpoint)
    init = read_gan_checkpoint(path, "fastgan")
    assert sorted(init["nets"]) == ["class_0", "class_0_discriminator", "class_1", "class_1_discriminator"]
    assert init["step"] == 2

    frozen = dataclasses.replace(cfg, lr=1e-30, keep_checkpoints=False)  # nothing moves: G stays the start
    started = train_class_generators(frozen, *_tiny_data(), TrainContext(), seed=9, distance=mse, init=init)
    for c in (0, 1):  # the weights (batch-norm statistics and power-iteration vectors move in training)
        want = init["nets"][f"class_{c}"]
        assert all(torch.allclose(p, want[k]) for k, p in started.generators[c].named_parameters())
    scratch = train_class_generators(frozen, *_tiny_data(), TrainContext(), seed=9, distance=mse)
    assert not torch.allclose(scratch.generators[0].to_big.parametrizations.weight.original,
                              started.generators[0].to_big.parametrizations.weight.original)
    assert sorted(load_class_generators(path)) == [0, 1]  # the discriminators are skipped

    images, labels = _tiny_data()
    with pytest.raises(CheckpointError, match="no network 'class_2'"):
        train_class_generators(frozen, images, np.where(labels == 1, 2, labels), TrainContext(), seed=9,
                               distance=mse, init=init)
    init["preset"] = "paper_256"
    with pytest.raises(CheckpointError, match="holds paper_256 FastGANs"):
        train_class_generators(frozen, images, labels, TrainContext(), seed=9, distance=mse, init=init)
