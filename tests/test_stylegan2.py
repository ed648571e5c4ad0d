"""A²'s StyleGAN2 (gan.stylegan2), its projector (gan.projection), LPIPS-VGG (perceptual) and the
stage code (synthesis.stylegan2_adapt): shapes, parameter counts against the architecture's
formula and config F, the noise and mixing inputs, the projector, exact resume, the CDC
adaptation, and projection + decoding. Stage tests use a tiny 16 px preset."""
import io
import math

import numpy as np
import pytest
import torch

from diffinject.config.schema import StyleGAN2Config
from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.nets import perceptual
from diffinject.nets.gan.checkpoint import read_gan_checkpoint
from diffinject.nets.gan.presets import PRESETS, StyleGAN2Preset
from diffinject.nets.gan.projection import project
from diffinject.nets.gan.stylegan2 import (Discriminator, Generator, build_discriminator, build_generator,
                                           parameter_count)
from diffinject.stages.synthesis.stylegan2_adapt import adapt, project_and_decode, train_source
from diffinject.training.loop import TrainContext

TINY = StyleGAN2Preset("tiny_16", 16, 16, 16, 1, ((4, 16), (8, 16), (16, 8)))
TINY_64 = StyleGAN2Preset("tiny_64", 64, 8, 8, 1, ((4, 8), (8, 8), (16, 8), (32, 4), (64, 4)))
MSE = perceptual.distance_fn("mse")


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(PRESETS["stylegan2"], "tiny_16", TINY)
    return TINY


def _cfg(**overrides):
    base = dict(preset="tiny_16", batch_size=4, num_steps=4, r1_every=2, pl_every=2, log_every=1,
                checkpoint_every=2, sample_every=0, adapt_batch_size=4, adapt_steps=3, anchor_count=3,
                project_steps=3, project_batch_size=2, ema_half_life=20)
    return StyleGAN2Config(**{**base, **overrides})


def _images(n, size=14, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def generator_parameters(p: StyleGAN2Preset) -> int:
    """The architecture's count: mapping, constant, each modulated conv (weights, affine, bias,
    noise strength) and toRGB (1 x 1 weights, affine, bias)."""
    w = p.w_dim
    total = p.z_dim * w + w + (p.mapping_layers - 1) * (w * w + w)
    conv = lambda i, o: o * i * 9 + w * i + i + o + 1
    rgb = lambda i: 3 * i + w * i + i + 3
    (_, c0), rest = p.channels[0], p.channels[1:]
    total += c0 * 16 + conv(c0, c0) + rgb(c0)
    previous = c0
    for _, c in rest:
        total += conv(previous, c) + conv(c, c) + rgb(c)
        previous = c
    return total


def discriminator_parameters(p: StyleGAN2Preset) -> int:
    """fromRGB, residual blocks (two 3 x 3 convs, bias-free 1 x 1 skip), mbstd conv, fc, logit,
    and the 1 x 1 patch head above 32 px."""
    widths = dict(p.channels)
    total = 3 * widths[p.resolution] + widths[p.resolution]
    r = p.resolution
    while r > 4:
        i, o = widths[r], widths[r // 2]
        total += i * i * 9 + i + o * i * 9 + o + o * i
        r //= 2
    c = widths[4]
    total += (c + 1) * c * 9 + c + c * 16 * c + c + c + 1
    return total + (widths[16] + 1 if p.resolution > 32 else 0)


@pytest.mark.parametrize("name", ["paper_32", "paper_256", "quick_32"])
def test_parameter_counts_follow_the_architecture(name):
    preset = PRESETS["stylegan2"][name]
    g, d = parameter_count(build_generator(name)), parameter_count(build_discriminator(name))
    print(f"{name}: generator {g:,} discriminator {d:,}")
    assert g == generator_parameters(preset) and d == discriminator_parameters(preset)
    if name == "paper_256":  # StyleGAN2 config F (Karras et al. 2020, Table 1): 30.0 M / 29.0 M
        assert abs(g / 30.0e6 - 1) < 0.15 and abs(d / 29.0e6 - 1) < 0.15


def test_generator_shapes_noise_inputs_and_features():
    torch.manual_seed(0)
    g = build_generator("quick_32")
    assert g.num_ws == 8 and len(g.convs) == 7
    z = torch.randn(4, 64)
    images, features = g(z, return_features=True)
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()
    # every convolution's output, as few-shot-gan-adaptation's model.py returns them for the CDC loss
    assert [f.shape[-1] for f in features] == [4, 8, 8, 16, 16, 32, 32] and features[-1].shape[1] == 16
    assert [n.shape for n in g.make_noise(4)] == [(4, 1, r, r) for r in (4, 8, 8, 16, 16, 32, 32)]
    with pytest.raises(ValueError, match="ws must be N x 8"):
        g.synthesis(torch.zeros(4, 7, 64))
    assert build_discriminator("quick_32")(images).shape == (4,)


def test_networks_run_under_bfloat16_autocast():
    """Stage code autocasts the non-regulariser passes (CUDA; the CPU autocast takes the same paths)."""
    torch.manual_seed(0)
    g, d = build_generator("quick_32"), build_discriminator("quick_32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = g(torch.randn(4, 64), mixing_prob=1.0, truncation=0.7)
        logits = d(images)
    assert torch.isfinite(images.float()).all() and torch.isfinite(logits.float()).all()
    assert g.mapping.w_avg.dtype == torch.float32 and g.mapping.w_avg.abs().sum() > 0
    logits.float().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in g.convs[-1].parameters())


def test_noise_strengths_start_at_zero_and_const_noise_is_deterministic():
    torch.manual_seed(0)
    g = build_generator("quick_32")
    z = torch.randn(2, 64)
    assert torch.equal(g(z, noise_mode="random"), g(z, noise_mode="none"))  # zero-initialised strengths
    with torch.no_grad():
        for conv in g.convs:
            conv.noise_strength.fill_(0.5)
    const = g(z, noise_mode="const")
    assert torch.equal(const, g(z, noise_mode="const"))
    assert not torch.equal(g(z, noise_mode="random"), g(z, noise_mode="random"))
    a = g(z, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, g(z, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(const, g(z, noise_mode="none"))


def test_style_mixing_switches_to_a_second_w_from_a_random_layer_on():
    torch.manual_seed(0)
    g = build_generator("quick_32").eval()
    z = torch.randn(16, 64)
    w = g.mapping(z)
    assert torch.equal(g.ws(z), w[:, None].expand(-1, 8, -1))
    ws = g.ws(z, mixing_prob=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ws[:, 0], w)  # the first layer always keeps the first w
    switched = (ws != w[:, None]).any(-1)  # N x num_ws
    assert switched[:, -1].all()
    cutoffs = switched.int().argmax(1)
    assert len(set(cutoffs.tolist())) > 1  # a cutoff drawn per sample
    for row, cutoff in zip(ws, cutoffs):  # after the cutoff one second w
        assert (row[cutoff:] == row[-1]).all()


def test_discriminator_patch_head_above_32_px_only(monkeypatch):
    torch.manual_seed(0)
    d = Discriminator(TINY_64)
    x = torch.randn(4, 3, 64, 64)
    logits, patches = d(x, patch=True)
    assert logits.shape == (4,) and patches.shape == (4, 1, 16, 16)
    assert torch.equal(logits, d(x))
    d32 = build_discriminator("quick_32")
    assert d32.patch_head is None
    with pytest.raises(ValueError, match="no patch-level head"):
        d32(torch.randn(4, 3, 32, 32), patch=True)
    assert d(torch.randn(5, 3, 64, 64)).shape == (5,)  # mbstd group shrinks to a divisor of the batch


def test_projector_lowers_its_loss_and_moves_w_toward_the_target():
    torch.manual_seed(0)
    g = build_generator("quick_32").eval()
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w_star = g.mapping(torch.randn(3, 64, generator=rng))
        targets = g.synthesis(w_star[:, None].expand(-1, g.num_ws, -1), noise_mode="const")
        w_start = g.mapping(torch.randn(2000, 64, generator=torch.Generator().manual_seed(2))).mean(0)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    w, noise, history = project(g, targets, MSE, 40, noise_reg_weight=0.0, generator=rng, w_avg_samples=2000)
    assert w.shape == (3, 64) and len(noise) == 7 and noise[0].shape == (3, 1, 4, 4) and len(history) == 40
    assert history[-1] < 0.5 * history[0]
    # closer to the w that made the targets, on average (the noise maps explain part of each image)
    assert (w - w_star).norm(dim=1).mean() < (w_start - w_star).norm(dim=1).mean()
    for m in noise:  # renormalised after every step
        assert m.mean(dim=(1, 2, 3)).abs().max() < 1e-5 and (m.square().mean(dim=(1, 2, 3)) - 1).abs().max() < 1e-4
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())


def test_lpips_vgg_builds_offline_with_a_random_trunk_and_names_a_missing_file(offline):
    distance = perceptual.distance_fn("lpips_vgg", random_backbone=True)
    a = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    d = distance(a, a.flip(0).detach())
    assert d.shape == (2,) and torch.isfinite(d).all()
    d.sum().backward()
    assert a.grad is not None  # differentiable in the images (the projector needs it)
    expected = offline / "hub" / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(CheckpointError) as err:
        perceptual.distance_fn("lpips_vgg")
    assert str(expected) in str(err.value) and "VGG16" in str(err.value)
    assert not expected.exists()
    x, y = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    y[1] = 3
    assert MSE(x, y).tolist() == [1.0, 9.0]
    with pytest.raises(ConfigError, match="unknown image distance 'l2'"):
        perceptual.distance_fn("l2")


def _capture():
    reports, logs = [], []

    def report(metrics, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)  # what the Ray layer does: a copy of the live tensors
        reports.append(buffer.getvalue())

    return TrainContext(report=report, log=lambda step, m: logs.append((step, m))), reports, logs


def _weights(result_state):
    return {f"{net}.{k}": v for net in ("generator", "discriminator", "generator_ema") if net in result_state
            for k, v in result_state[net].items()}


def test_train_source_resumed_halfway_matches_a_straight_run_bitwise(tiny):
    images = _images(10)
    ctx, straight, logs = _capture()
    result = train_source(_cfg(), images, ctx, seed=3)
    assert result.step == 4 and set(logs[-1][1]) >= {"d_loss", "g_loss", "r1", "pl", "images_per_s", "step"}
    ctx, first, _ = _capture()
    train_source(_cfg(num_steps=2), images, ctx, seed=3)
    state = torch.load(io.BytesIO(first[-1]), weights_only=True)
    ctx, resumed, _ = _capture()
    ctx.resume_state = state
    train_source(_cfg(), images, ctx, seed=3)
    a = _weights(torch.load(io.BytesIO(straight[-1]), weights_only=True))
    b = _weights(torch.load(io.BytesIO(resumed[-1]), weights_only=True))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = _weights(state)
    assert not all(torch.equal(a[k], start[k]) for k in a)  # the second half trained


@pytest.fixture
def source(tiny, tmp_path):
    result = train_source(_cfg(num_steps=2), _images(8), TrainContext(), seed=0)
    path = tmp_path / "source.pt"
    path.write_bytes(result.checkpoint)
    return result, read_gan_checkpoint(path, "stylegan2")


def test_adapt_starts_with_zero_cdc_and_moves_the_generator(source):
    result, payload = source
    for k in payload["nets"]["generator"]:  # noise that shows: both generators must draw the same maps
        if k.endswith("noise_strength"):
            payload["nets"]["generator"][k] = torch.tensor(0.5)
    ctx, reports, logs = _capture()
    adapted = adapt(_cfg(), payload, _images(5, seed=1), ctx, seed=0)
    assert logs[0][0] == 1 and abs(logs[0][1]["cdc"]) < 1e-5  # step 0: target == source
    assert logs[-1][1]["cdc"] > 0
    start = payload["nets"]["generator"]
    moved = adapted.generator.state_dict()
    assert not all(torch.equal(start[k], moved[k]) for k in start)
    with pytest.raises(ConfigError, match="at least 3"):
        adapt(_cfg(cdc_batch_size=2), payload, _images(5), TrainContext(), seed=0)
    with pytest.raises(ConfigError, match="are 14x14 but stylegan2 preset tiny_16 is 16x16"):
        adapt(_cfg(resize=False), payload, _images(5), TrainContext(), seed=0)


def test_project_and_decode_gives_uint8_originals_deterministically(source):
    result, _ = source
    adapted = Generator(TINY).eval()
    originals = _images(3, seed=2)
    seeds = np.array([11, 12, 13], dtype=np.int64)
    out = project_and_decode(result.generator, adapted, originals, _cfg(), MSE, seeds, out_size=14)
    assert out.shape == (3, 14, 14, 3) and out.dtype == np.uint8
    assert np.array_equal(out, project_and_decode(result.generator, adapted, originals, _cfg(), MSE, seeds, 14))
    # a batch depends only on its own originals and seeds: the third image is a batch of its own
    alone = project_and_decode(result.generator, adapted, originals[2:], _cfg(), MSE, seeds[2:], 14)
    assert np.array_equal(out[2:], alone)


def test_adapt_draws_anchors_one_step_in_image_d_every_free_mixed_latents_otherwise_and_fresh_cdc_latents(
        source, monkeypatch):
    """few-shot-gan-adaptation train.py: which = i % subspace_freq; anchors (no mixing) when 0, else
    mixing_noise; the CDC term on its own feat_const_batch latents under both generators."""
    _, payload = source
    calls = []
    original_ws = Generator.ws

    def recording_ws(self, z, truncation=1.0, mixing_prob=0.0, generator=None):
        calls.append((self, z.detach().clone(), mixing_prob))
        return original_ws(self, z, truncation, mixing_prob, generator)

    monkeypatch.setattr(Generator, "ws", recording_ws)
    cfg = _cfg(adapt_steps=4, image_d_every=2, pl_weight=0.0, cdc_batch_size=5, anchor_std=0.01, style_mixing=0.9)
    adapt(cfg, payload, _images(5, seed=1), TrainContext(), seed=0)
    anchors = torch.randn(cfg.anchor_count, TINY.z_dim, generator=torch.Generator().manual_seed(0 + 777))
    assert len(calls) == 4 * 4  # per step: D's fakes, G's fakes, CDC under the source, CDC under G
    for step in range(4):
        (g_d, z_d, mix_d), (g_g, z_g, mix_g), (src, z_s, mix_s), (g_c, z_c, mix_c) = calls[4 * step:4 * step + 4]
        near = torch.cdist(torch.cat([z_d, z_g]), anchors).min(1).values
        if step % 2 == 0:
            assert (near < 0.1).all() and mix_d == mix_g == 0.0
        else:
            assert (near > 1.0).all() and mix_d == mix_g == 0.9
        assert z_d.shape[0] == z_g.shape[0] == (4 if step % 2 == 0 else 1) and g_d is g_g  # 5 images, batch 4
        assert z_s.shape[0] == 5 and torch.equal(z_s, z_c) and mix_s == mix_c == 0.0
        assert src is not g_c and g_c is g_d
        assert torch.cdist(z_s, anchors).min() > 1.0  # fresh N(0, I) latents, not the adversarial ones
        assert not torch.equal(z_s[:len(z_g)], z_g)


def test_adapt_returns_the_ema_of_the_adapted_generator(source):
    _, payload = source
    ctx, reports, _ = _capture()
    result = adapt(_cfg(adapt_steps=3, adapt_ema_half_life=2.0, checkpoint_every=3), payload, _images(5, seed=1), ctx,
                   seed=0)
    state = torch.load(io.BytesIO(reports[-1]), weights_only=True)
    ema, raw = state["generator_ema"], state["generator"]
    weights = result.generator.state_dict()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    start = payload["nets"]["generator"]
    moved = [k for k in raw if not torch.equal(raw[k], start[k])]
    assert moved and any(not torch.equal(ema[k], raw[k]) for k in moved)  # the average lags the raw weights
    no_average = adapt(_cfg(adapt_steps=3, adapt_ema_half_life=0.0), payload, _images(5, seed=1), TrainContext(), seed=0)
    assert all(torch.equal(no_average.generator.state_dict()[k], raw[k]) for k in raw)


def test_project_and_decode_draws_fresh_noise_unless_asked_for_the_projected_maps(source):
    result, _ = source
    adapted = Generator(TINY).eval()
    with torch.no_grad():
        for conv in adapted.convs:
            conv.noise_strength.fill_(1.0)
    originals, seeds = _images(2, seed=2), np.array([11, 12], dtype=np.int64)
    fresh = project_and_decode(result.generator, adapted, originals, _cfg(), MSE, seeds, out_size=16)
    projected = project_and_decode(result.generator, adapted, originals, _cfg(decode_noise="projected"), MSE, seeds,
                                   out_size=16)
    assert not np.array_equal(fresh, projected)
    assert np.array_equal(fresh, project_and_decode(result.generator, adapted, originals, _cfg(), MSE, seeds, 16))
