"""The variational-bound term of improved DDPM's hybrid loss, for learned-variance models.

The model outputs eps (first 3 channels) and v (last 3): its log variance interpolates
log(beta_t) and the clipped log posterior variance with frac = (v + 1) / 2. The term is
KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in bits per dimension for t > 0 and the
discretised Gaussian decoder NLL at t = 0, computed with eps stopped (only v learns from
it), and added to the P2-weighted epsilon loss unweighted (times T / 1000), as in improved
DDPM and the released P2 code.
"""
from __future__ import annotations

import math

import torch


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-probability of 8-bit images in [-1, 1] (bins of width 2/255) under a Gaussian."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianPosterior:
    """The fixed quantities of q(x_{t-1} | x_t, x_0) for a beta schedule (float64)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = alphas_cumprod.double()
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        self.betas = 1.0 - abar / abar_prev
        self.abar = abar
        variance = self.betas * (1.0 - abar_prev) / (1.0 - abar)
        self.log_variance_clipped = torch.log(torch.cat([variance[1:2], variance[1:]]))
        self.coef_x0 = self.betas * abar_prev.sqrt() / (1.0 - abar)
        self.coef_xt = (1.0 - abar_prev) * (1.0 - self.betas).sqrt() / (1.0 - abar)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device)[t].float().view(-1, *([1] * (like.dim() - 1)))

    def mean(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._at(self.coef_x0, t, xt) * x0 + self._at(self.coef_xt, t, xt) * xt

    def model_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frac = (v + 1.0) / 2.0
        return frac * self._at(torch.log(self.betas), t, v) + (1.0 - frac) * self._at(self.log_variance_clipped, t, v)

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        abar = self._at(self.abar, t, xt)
        return xt / abar.sqrt() - (1.0 / abar - 1.0).sqrt() * eps


def vb_term(posterior: GaussianPosterior, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor,
            t: torch.Tensor) -> torch.Tensor:
    """Per-sample variational-bound term in bits/dim, times T / 1000; eps gets no gradient."""
    eps, v = model_output.float().chunk(2, dim=1)
    model_mean = posterior.mean(posterior.predict_x0(xt, t, eps.detach()), xt, t)
    model_log_var = posterior.model_log_variance(v, t)
    true_mean = posterior.mean(x0, xt, t)
    true_log_var = posterior._at(posterior.log_variance_clipped, t, xt).expand_as(xt)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / math.log(2.0)
    return torch.where(t == 0, nll, kl) * (len(posterior.abar) / 1000.0)
