"""DDIM sampling (any step count, any eta) for sample grids, on diffusers' DDIMScheduler."""
from __future__ import annotations

import torch

SAMPLE_BATCH = 256  # images per U-Net call: 256 x 3 x 256 x 256 float32 noise is 200 MB


@torch.no_grad()
def ddim_sample(unet, num_images: int, image_size: int, steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                num_train_timesteps: int = 1000, batch_size: int = SAMPLE_BATCH) -> torch.Tensor:
    """Images in [-1, 1] from pure noise. With a learned variance only eps (the first 3
    output channels) is used. eta = 0 is deterministic given the generator. The predicted
    x0 is clipped to [-1, 1] at every step (guided-diffusion's clip_denoised, its sampling
    default): without it an imperfect eps at t ~ 999, divided by sqrt(abar_t) ~ 0.006,
    drives samples into saturated colour fields.

    The images are sampled `batch_size` at a time, one batch after the other, each drawing
    its start noise from `generator` when it begins. With eta = 0 image i is therefore the
    same whatever the batch size (the start noise comes in image order, as from one draw).
    With eta > 0 later batches draw their per-step noise after the earlier batches' steps, so
    the images depend on the batch size; up to `batch_size` images are one batch, as before
    batching existed."""
    from diffusers import DDIMScheduler

    if steps < 1:
        raise ValueError(f"DDIM needs at least one step, got {steps}")
    if batch_size < 1:
        raise ValueError(f"DDIM sampling needs a batch size of at least 1, got {batch_size}")
    scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear", clip_sample=True, set_alpha_to_one=True,
                              timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    return torch.cat([_ddim_batch(unet, scheduler, min(batch_size, num_images - start), image_size, eta, generator,
                                  device) for start in range(0, num_images, batch_size)])


def _ddim_batch(unet, scheduler, num_images: int, image_size: int, eta: float, generator: torch.Generator | None,
                device: torch.device | str) -> torch.Tensor:
    """One batch of DDIM samples over the scheduler's timesteps (DDIMScheduler.step keeps no state)."""
    x = torch.randn(num_images, 3, image_size, image_size, generator=generator).to(device)
    for t in scheduler.timesteps:
        eps = unet(x, t.to(device).expand(num_images)).sample[:, :3]
        x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return x.clamp(-1.0, 1.0)
