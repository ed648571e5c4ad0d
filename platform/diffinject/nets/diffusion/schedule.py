"""Noise schedule and the P2-weighted epsilon loss (Choi et al., 2022), as pure functions."""
from __future__ import annotations

import torch


def linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> torch.Tensor:
    """abar_t of the linear beta schedule, from diffusers' DDPMScheduler (float64 -> float32)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=num_timesteps, beta_start=beta_start, beta_end=beta_end,
                              beta_schedule="linear")
    return scheduler.alphas_cumprod.clone()


def p2_weights(alphas_cumprod: torch.Tensor, gamma: float = 1.0, k: float = 1.0) -> torch.Tensor:
    """w_t = 1 / (k + SNR(t))^gamma with SNR(t) = abar_t / (1 - abar_t); gamma = 0 gives
    plain DDPM (all ones). No renormalisation, as in the released P2 code."""
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    return (k + snr) ** -gamma


def p2_loss(eps: torch.Tensor, eps_pred: torch.Tensor, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over C, H, W of w_t * (eps - eps_pred)^2."""
    w = weights.to(eps.device, torch.float32)[t]
    return w * (eps.float() - eps_pred.float()).pow(2).flatten(1).mean(1)


def diffusion_loss(model_output: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor,
                   t: torch.Tensor, weights: torch.Tensor, posterior=None) -> torch.Tensor:
    """Per-sample training loss: the P2-weighted epsilon loss, plus (learned variance, 6 output
    channels) the unweighted variational-bound term. gamma = 0 weights give plain DDPM."""
    loss = p2_loss(eps, model_output[:, :3], t, weights)
    if model_output.shape[1] == 6:
        from diffinject.nets.diffusion.vlb import vb_term

        if posterior is None:
            raise ValueError("a learned-variance model needs the GaussianPosterior for its vb term")
        loss = loss + vb_term(posterior, model_output, x0, xt, t)
    return loss
