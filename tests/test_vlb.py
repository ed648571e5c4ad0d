"""Improved DDPM's variational-bound term: formulas and invariants."""
import math

import pytest
import torch

from diffinject.nets.diffusion import linear_alphas_cumprod
from diffinject.nets.diffusion.vlb import GaussianPosterior, discretized_gaussian_log_likelihood, normal_kl, vb_term


def test_normal_kl_matches_torch_distributions():
    torch.manual_seed(0)
    m1, m2, lv1, lv2 = torch.randn(4, 10)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, atol=1e-5)


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    bins = torch.linspace(-1, 1, 256)
    for mean, log_scale in [(0.0, math.log(0.1)), (0.7, math.log(0.5)), (-0.95, math.log(0.02))]:
        logp = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean), torch.full_like(bins, log_scale))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=2e-3)


def test_posterior_matches_the_closed_form():
    abar = linear_alphas_cumprod()
    post = GaussianPosterior(abar)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(post.betas, betas, rtol=1e-3)  # abar is float32 in diffusers
    t = 500
    var = betas[t] * (1 - abar[t - 1].double()) / (1 - abar[t].double())
    assert post.log_variance_clipped[t].item() == pytest.approx(math.log(var.item()), rel=1e-4)
    assert post.log_variance_clipped[0] == post.log_variance_clipped[1]


def test_exact_model_has_zero_kl_and_only_v_gets_gradient():
    torch.manual_seed(0)
    abar = linear_alphas_cumprod()
    post = GaussianPosterior(abar)
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 300, 999])
    a = abar[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    # eps = the true noise gives x0 back; v = -1 selects the true posterior variance
    output = torch.cat([noise, -torch.ones_like(noise)], 1).requires_grad_(True)
    loss = vb_term(post, output, x0, xt, t)
    assert torch.allclose(loss, torch.zeros(3), atol=1e-4)
    # v = +1 selects beta_t, which differs from the posterior variance most at small t
    wrong = torch.cat([noise, torch.ones_like(noise)], 1)
    penalties = vb_term(post, wrong, x0, xt, t)
    assert penalties[0] > 0.1 and penalties[0] > penalties[1] > penalties[2] >= 0
    (grad,) = torch.autograd.grad(vb_term(post, wrong.requires_grad_(True), x0, xt, t).sum(), wrong)
    assert grad[:, :3].abs().sum() == 0 and grad[:, 3:].abs().sum() > 0


def test_t0_uses_the_decoder_nll():
    abar = linear_alphas_cumprod()
    post = GaussianPosterior(abar)
    x0 = torch.full((1, 3, 2, 2), 0.5)
    t = torch.tensor([0])
    xt = abar[0].sqrt() * x0
    output = torch.cat([torch.zeros_like(x0), -torch.ones_like(x0)], 1)
    mean = post.mean(post.predict_x0(xt, t, torch.zeros_like(x0)), xt, t)
    log_var = post.model_log_variance(-torch.ones_like(x0), t)
    expected = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean() / math.log(2)
    assert vb_term(post, output, x0, xt, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_diffusion_loss_adds_the_vb_term_only_for_learned_variance():
    from diffinject.nets.diffusion import diffusion_loss, p2_loss, p2_weights

    torch.manual_seed(1)
    abar = linear_alphas_cumprod()
    post, weights = GaussianPosterior(abar), p2_weights(abar, 1.0, 1.0)
    x0, eps = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4)
    t = torch.tensor([5, 600])
    xt = abar[t].view(-1, 1, 1, 1).sqrt() * x0 + (1 - abar[t].view(-1, 1, 1, 1)).sqrt() * eps
    out3 = torch.randn(2, 3, 4, 4)
    assert torch.equal(diffusion_loss(out3, eps, x0, xt, t, weights), p2_loss(eps, out3, t, weights))
    out6 = torch.randn(2, 6, 4, 4)
    expected = p2_loss(eps, out6[:, :3], t, weights) + vb_term(post, out6, x0, xt, t)
    assert torch.allclose(diffusion_loss(out6, eps, x0, xt, t, weights, post), expected)
    with pytest.raises(ValueError, match="needs the GaussianPosterior"):
        diffusion_loss(out6, eps, x0, xt, t, weights)
