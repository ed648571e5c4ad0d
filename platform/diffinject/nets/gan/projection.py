"""The StyleGAN2 projector (Karras et al., 2020, Appendix D), written from the paper: find, for
each target image, the w (one for every layer) and the per-layer noise maps from which the
generator reproduces it.

Each target has its own w and noise maps; they are optimised together with Adam. w starts at
the mean w of `w_avg_samples` mapped z's; during the first `noise_ramp_length` of the steps,
Gaussian noise of std w_std * initial_noise_factor * (1 - t / noise_ramp_length)^2 (w_std: the
spread of the sampled w's) is added to w before synthesis, so that the search explores first.
The learning rate ramps up linearly over the first `lr_rampup_length` of the steps and down
with a cosine over the last `lr_rampdown_length`. The loss is the image distance plus
`noise_reg_weight` times the noise regulariser: the squared autocorrelation of each noise map
with itself shifted by one pixel (horizontally and vertically), summed over a pyramid of the map
down to 8 x 8 by 2 x 2 average pooling, which stops the noise from carrying the image. After each
step every noise map is renormalised to zero mean and unit variance.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def noise_regularization(noise: list[torch.Tensor]) -> torch.Tensor:
    """Per sample (N): sum over maps and pyramid levels of the squared mean of v * v shifted by one
    pixel along each axis."""
    total = 0.0
    for v in noise:
        while True:
            total = total + (v * v.roll(1, dims=3)).mean(dim=(1, 2, 3)).square() \
                + (v * v.roll(1, dims=2)).mean(dim=(1, 2, 3)).square()
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    return total


def learning_rate(t: float, lr: float, rampdown: float, rampup: float) -> float:
    """lr at fraction t of the run: linear warm-up, cosine tail."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / rampup)


def project(model, targets: torch.Tensor, distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            num_steps: int, lr: float = 0.1, noise_reg_weight: float = 1e5, generator: torch.Generator | None = None,
            w_avg_samples: int = 10_000, initial_noise_factor: float = 0.05, noise_ramp_length: float = 0.75,
            lr_rampdown_length: float = 0.25, lr_rampup_length: float = 0.05
            ) -> tuple[torch.Tensor, list[torch.Tensor], list[float]]:
    """(w: N x w_dim, noise maps (one N x 1 x H x W per convolution), the loss (mean over targets)
    of every step) for `targets` N x 3 x R x R in [-1, 1]. `model` is a stylegan2.Generator; its
    weights are not changed. Every random draw comes from `generator`."""
    device = targets.device
    n = targets.shape[0]
    with torch.no_grad():
        z = torch.randn(w_avg_samples, model.z_dim, generator=generator).to(device)
        samples = model.mapping(z)
        w_avg = samples.mean(0)
        w_std = float(((samples - w_avg).square().sum() / w_avg_samples).sqrt())
    w = w_avg[None].repeat(n, 1).requires_grad_(True)
    noise = [m.requires_grad_(True) for m in model.make_noise(n, generator)]
    optimizer = torch.optim.Adam([w] + noise, lr=lr, betas=(0.9, 0.999))
    history = []
    for step in range(num_steps):
        t = step / num_steps
        w_noise_scale = w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(t, lr, lr_rampdown_length, lr_rampup_length)
        w_noise = torch.randn(w.shape, generator=generator).to(device) * w_noise_scale
        ws = (w + w_noise)[:, None].expand(-1, model.num_ws, -1)
        images = model.synthesis(ws, noise=noise)
        # summed over targets: each target's gradient is its own, whatever the batch
        loss = (distance(images, targets) + noise_reg_weight * noise_regularization(noise)).sum()
        grads = torch.autograd.grad(loss, [w] + noise)  # not into the generator's weights
        for p, g in zip([w] + noise, grads):
            p.grad = g
        optimizer.step()
        with torch.no_grad():
            for m in noise:
                m.sub_(m.mean(dim=(1, 2, 3), keepdim=True))
                m.mul_(m.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt())
        history.append(float(loss.detach()) / n)
    return w.detach(), [m.detach() for m in noise], history
