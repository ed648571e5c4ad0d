"""diffinject.nets.gan: the GAN losses, DiffAugment and the modulated convolution against their
formulas and invariants."""
import math

import pytest
import torch
import torch.nn.functional as F

from diffinject.nets.gan import (ModulatedConv2d, cdc_loss, diff_augment, hinge_d_loss, hinge_g_loss, logistic_d_loss,
                                 logistic_g_loss, modulated_conv2d, path_length_penalty, r1_penalty)
from diffinject.nets.gan.diffaugment import color, translation


def test_logistic_and_hinge_losses_are_their_formulas():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.0, 1.5])
    softplus = lambda t: torch.log1p(torch.exp(t))
    assert logistic_d_loss(real, fake) == pytest.approx(float(softplus(-real).mean() + softplus(fake).mean()))
    assert logistic_g_loss(fake) == pytest.approx(float(softplus(-fake).mean()))
    # hinge (FastGAN-pytorch train.py): only margins violated count, each logit's margin drawn
    # uniform in [0.8, 1) from the generator passed, the reals' first
    g = torch.Generator().manual_seed(0)
    m_real = torch.rand(3, generator=g) * 0.2 + 0.8
    m_fake = torch.rand(3, generator=g) * 0.2 + 0.8
    expected = F.relu(m_real - real).mean() + F.relu(m_fake + fake).mean()
    assert hinge_d_loss(real, fake, torch.Generator().manual_seed(0)) == pytest.approx(float(expected))
    margin_1 = (0 + 2 + 0.5) / 3 + (0 + 1 + 2.5) / 3  # the paper's fixed margin: more
    assert hinge_d_loss(real, fake, torch.Generator().manual_seed(0)) < margin_1 - 0.05
    assert hinge_g_loss(fake) == pytest.approx(-float(fake.mean()))


def test_r1_is_zero_for_a_constant_discriminator_and_the_squared_gradient_norm_of_a_linear_one():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    constant = (x * 0).flatten(1).sum(1) + 1.0
    assert r1_penalty(constant, x) == 0
    weight = torch.randn(3, 8, 8)
    linear = (x * weight).flatten(1).sum(1)
    assert r1_penalty(linear, x) == pytest.approx(float(weight.pow(2).sum()), rel=1e-5)


def test_path_length_of_a_linear_generator_is_the_norm_of_the_projected_noise():
    torch.manual_seed(0)
    w = torch.randn(5, 16, requires_grad=True)
    matrix = torch.randn(16, 3 * 4 * 4)
    images = (w @ matrix).view(5, 3, 4, 4)
    g = torch.Generator().manual_seed(1)
    penalty, lengths, new_mean = path_length_penalty(images, w, torch.tensor(0.0), decay=0.01, generator=g)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1)) / math.sqrt(16)
    expected = (noise.flatten(1) @ matrix.t()).norm(dim=1)  # J^T y for images = w M
    assert torch.allclose(lengths, expected, rtol=1e-5)
    assert new_mean == pytest.approx(0.01 * float(expected.mean()))
    assert penalty == pytest.approx(float((expected - new_mean).pow(2).mean()), rel=1e-5)
    # through a non-linear generator the penalty reaches its parameters
    weights = matrix.clone().requires_grad_()
    w2 = torch.randn(5, 16, requires_grad=True)
    penalty, _, _ = path_length_penalty(torch.tanh(w2 @ weights).view(5, 3, 4, 4), w2, torch.tensor(0.0))
    penalty.backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_cdc_is_zero_for_equal_generators_and_positive_after_a_perturbation():
    torch.manual_seed(0)
    features = [torch.randn(6, 8, 4, 4), torch.randn(6, 4, 8, 8)]
    layers = [0, 1, 1, 0, 1, 0]
    assert cdc_loss(features, [f.clone() for f in features], layers) == pytest.approx(0.0, abs=1e-6)
    perturbed = [(f + 0.5 * torch.randn_like(f)).requires_grad_() for f in features]
    loss = cdc_loss(features, perturbed, layers)
    assert loss > 0
    loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in perturbed)  # each layer read by some sample
    with pytest.raises(ValueError, match="at least 3"):
        cdc_loss(features, features, [0, 1])


def test_cdc_matches_the_reference_kl_div_loss_on_a_hand_computed_case():
    """few-shot-gan-adaptation train.py: kl_loss = nn.KLDivLoss() (mean over all N (N - 1) entries)
    of (log dist_target, dist_source), each row the softmaxed cosine similarities of sample i to the
    others at the layer feat_ind[i]."""
    # three samples, one layer of 2-d features: cosine similarities by hand
    source = [torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])]
    target = [torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])]
    c = 1 / math.sqrt(2)
    sim_source = torch.tensor([[0.0, c], [0.0, c], [c, c]])   # sample i to the others, in order
    sim_target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    p_s, p_t = F.softmax(sim_source, dim=1), F.softmax(sim_target, dim=1)
    expected = float((p_s * (p_s.log() - p_t.log())).sum() / 6)
    loss = float(cdc_loss(source, target, [0, 0, 0]))
    assert loss == pytest.approx(expected, rel=1e-6)
    assert loss == pytest.approx(float(F.kl_div(p_t.log(), p_s, reduction="sum")) / 6, rel=1e-6)  # KLDivLoss()'s mean
    reversed_direction = float((p_t * (p_t.log() - p_s.log())).sum() / 6)
    assert abs(loss - reversed_direction) > 1e-3 and abs(loss - 6 * expected) > 1e-3
    # a sample's row reads its own layer: sample 2 at layer 1, where it agrees with the source
    two_layers_source = source + [torch.eye(3)]
    two_layers_target = target + [torch.eye(3)]
    row_loss = float(cdc_loss(two_layers_source, two_layers_target, [0, 0, 1]))
    expected_rows = float((p_s[:2] * (p_s[:2].log() - p_t[:2].log())).sum() / 6)
    assert row_loss == pytest.approx(expected_rows, rel=1e-6)


def test_diffaugment_keeps_shapes_and_gradients_and_is_reproducible():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = diff_augment(x, generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    again = diff_augment(x.detach(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.detach(), again)
    with pytest.raises(ValueError, match="cutmix"):
        diff_augment(x, "color,cutmix")


def test_translation_shifts_each_image_with_zero_fill():
    x = (torch.arange(64.0).view(1, 1, 8, 8) + 1).repeat(16, 2, 1, 1)
    out = translation(x, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws: row shifts, then column shifts, in [-1, 1]
    dys, dxs = torch.randint(-1, 2, (16,), generator=g), torch.randint(-1, 2, (16,), generator=g)
    assert (dys != 0).any() and (dxs != 0).any()
    for n, (dy, dx) in enumerate(zip(dys.tolist(), dxs.tolist())):
        expected = torch.zeros(2, 8, 8)
        for r in range(8):
            for c in range(8):
                if 0 <= r - dy < 8 and 0 <= c - dx < 8:
                    expected[:, r, c] = x[n, :, r - dy, c - dx]
        assert torch.equal(out[n], expected)


def test_color_draws_one_brightness_saturation_and_contrast_per_image():
    x = torch.rand(3, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    b, s, c = (torch.rand(3, 1, 1, 1, generator=g) for _ in range(3))
    y = x + (b - 0.5)
    y = (y - y.mean(1, keepdim=True)) * (s * 2) + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * (c + 0.5) + y.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(color(x, generator=torch.Generator().manual_seed(0)), y, atol=1e-6)


def test_modulated_conv_with_demodulation_keeps_unit_output_variance():
    torch.manual_seed(0)
    x = torch.randn(64, 32, 16, 16)
    weight = torch.randn(48, 32, 3, 3) * 7.0  # the weight scale does not matter after demodulation
    styles = torch.rand(64, 32) * 3 + 0.1
    out = modulated_conv2d(x, weight, styles)
    assert out.shape == (64, 48, 16, 16)
    inner = out[:, :, 1:-1, 1:-1]  # away from the zero padding
    assert inner.var().item() == pytest.approx(1.0, abs=0.05)
    # per sample it is a plain convolution with that sample's modulated, normalised weights
    w0 = weight * styles[0][None, :, None, None]
    w0 = w0 / w0.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
    assert torch.allclose(out[:1], F.conv2d(x[:1], w0, padding=1), atol=1e-4)
    undemodulated = modulated_conv2d(x, weight, styles, demodulate=False)
    assert undemodulated.var().item() > 10


def test_modulated_conv_module_starts_with_unit_styles_and_equalised_weights():
    layer = ModulatedConv2d(8, 4, 3, w_dim=16)
    w = torch.zeros(2, 16)
    x = torch.randn(2, 8, 6, 6)
    expected = modulated_conv2d(x, layer.weight * layer.scale, torch.ones(2, 8))
    assert torch.allclose(layer(x, w), expected, atol=1e-6)
    assert layer.scale == pytest.approx(1 / math.sqrt(8 * 9))


def test_mapping_network_has_stylegan2s_parameter_count_and_tracks_the_mean_w():
    from diffinject.nets.gan import MappingNetwork, pixel_norm

    net = MappingNetwork()
    assert sum(p.numel() for p in net.parameters()) == 8 * (512 * 512 + 512)  # 2,101,248
    z = torch.randn(256, 512) * 5
    assert torch.allclose(pixel_norm(z).pow(2).mean(1), torch.ones(256), atol=1e-4)
    w = net(z)
    assert w.shape == (256, 512)
    assert torch.allclose(net.w_avg, (1 - 0.995) * w.detach().mean(0), atol=1e-6)
    net.eval()
    assert torch.allclose(net(z, truncation=0.0), net.w_avg.expand(256, 512))
    assert torch.allclose(net(z * 3), net(z), atol=1e-5)  # pixel norm: the scale of z does not matter


def test_skip_layer_excitation_gates_each_channel_of_the_high_resolution_map():
    from diffinject.nets.gan import SkipLayerExcitation

    torch.manual_seed(0)
    sle = SkipLayerExcitation(low_channels=16, high_channels=8)
    x_low, x_high = torch.randn(3, 16, 8, 8), torch.randn(3, 8, 64, 64)
    gate = sle.gate(x_low)
    assert gate.shape == (3, 8, 1, 1) and ((gate > 0) & (gate < 1)).all()
    out = sle(x_low, x_high)
    assert torch.allclose(out, x_high * gate)
    # the gate depends only on x_low's 4 x 4 average pool
    upsampled = F.interpolate(F.adaptive_avg_pool2d(x_low, 4), scale_factor=2, mode="nearest")
    assert torch.allclose(sle.gate(upsampled), gate, atol=1e-6)
