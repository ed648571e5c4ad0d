"""Stage 2: train a P2-weighted diffusion model (docs/design.md 2.2). Knows nothing of Ray.

One loop, readable in one sitting: uint8 images -> [-1, 1] (resized to the preset,
optionally flipped) -> q(x_t | x_0) with diffusers' DDPMScheduler -> P2-weighted eps loss
(+ the VB term for learned-variance presets) -> AdamW with gradient clipping -> EMA
(diffusers' EMAModel). Under torch.distributed every rank takes a strided share of the
global batch and the U-Net is wrapped in DistributedDataParallel.

Every random draw of a step (batch, flips, t, noise, dropout) is seeded by
(seed, step, rank), so the step number is the whole RNG state: a run resumed from a
checkpoint continues exactly as if it had never stopped.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from diffinject.config.rules import NUM_TIMESTEPS
from diffinject.config.schema import DiffusionConfig
from diffinject.core.accel import bf16_autocast, check_compile, compiled, cudagraph_step, in_layout, memory_format
from diffinject.core.errors import ConfigError, TrainingError
from diffinject.core.numerics import bf16_autocast_on
from diffinject.core.plots import png_bytes, tile_images
from diffinject.nets.diffusion.checkpoint import unet_checkpoint_bytes
from diffinject.nets.diffusion.models import UNetPreset, build_unet, get_preset
from diffinject.nets.diffusion.pixels import to_model_pixels, to_uint8
from diffinject.nets.diffusion.sampling import ddim_sample
from diffinject.nets.diffusion.schedule import diffusion_loss, linear_alphas_cumprod, p2_weights
from diffinject.nets.diffusion.vlb import GaussianPosterior
from diffinject.nets.metrics import all_ranks_finite, all_reduce_sum
from diffinject.training.loop import TrainContext, batch_indices, seed_everything

DIFFUSION_FILE = "diffusion.pt"  # what stage 2 makes: the EMA U-Net checkpoint (nets.diffusion.checkpoint)


@dataclass
class DiffusionResult:
    ema_unet: nn.Module      # the EMA weights, eval mode: what sampling and injection use
    step: int
    metrics: dict[str, float]
    checkpoint: bytes        # the EMA weights as a diffinject checkpoint file


def check_image_size(shape: tuple[int, ...], preset: UNetPreset, resize: bool) -> None:
    """Training images are N x H x W x 3; without resizing they must be the preset's size."""
    if len(shape) != 4 or shape[-1] != 3:
        raise ConfigError(f"diffusion training images must be N x H x W x 3, got shape {tuple(shape)}")
    if not resize and tuple(shape[1:3]) != (preset.image_size, preset.image_size):
        raise ConfigError(f"training images are {shape[1]}x{shape[2]} but preset {preset.name} is "
                          f"{preset.image_size}x{preset.image_size}; set diffusion.resize=true or pick a "
                          f"preset of that size")


def param_rank_spread(unet: nn.Module) -> float:
    """Largest difference between ranks of any parameter (0.0 when DDP keeps them identical)."""
    flat = torch.cat([p.detach().float().flatten() for p in unet.parameters()])
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return float((high - low).max())


def ema_copy(unet: nn.Module, ema) -> nn.Module:
    model = copy.deepcopy(unet)
    ema.copy_to(model.parameters())
    return model.eval()


def sample_grid(model: nn.Module, cfg: DiffusionConfig, preset: UNetPreset, seed: int, device) -> np.ndarray:
    """The EMA model's samples from fixed noise (the same each time, so grids show progress)."""
    generator = torch.Generator().manual_seed(seed + 12345)
    x = ddim_sample(model, cfg.sample_images, preset.image_size, steps=cfg.sample_steps, eta=cfg.sample_eta,
                    generator=generator, device=device)
    return tile_images(to_uint8(x), columns=10)


def train_diffusion(cfg: DiffusionConfig, images: np.ndarray, ctx: TrainContext, seed: int) -> DiffusionResult:
    """Train cfg.preset on uint8 `images` (N x H x W x 3) for cfg.num_steps global steps."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    preset = get_preset(cfg.preset)
    check_image_size(images.shape, preset, cfg.resize)
    if len(images) == 0:
        raise ConfigError("diffusion training set is empty")
    device = ctx.device
    check_compile("diffusion.compile", cfg.compile, device)
    seed_everything(seed)
    unet = build_unet(preset).to(device, memory_format=memory_format(cfg.channels_last))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=True if cfg.fused_adam else None)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, foreach=True)
    scheduler = DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear")
    alphas_cumprod = linear_alphas_cumprod(NUM_TIMESTEPS)
    weights = p2_weights(alphas_cumprod, cfg.gamma, cfg.k).to(device)
    posterior = GaussianPosterior(alphas_cumprod) if preset.learned_sigma else None

    step = 0
    if ctx.resume_state is not None:
        unet.load_state_dict(ctx.resume_state["unet"])
        optimizer.load_state_dict(ctx.resume_state["optimizer"])
        ema.load_state_dict(ctx.resume_state["ema"])
        ema.to(device)
        step = int(ctx.resume_state["step"])
    model = unet
    if dist.is_available() and dist.is_initialized():
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(unet, device_ids=[device.index] if device.type == "cuda" else None)
    model = compiled(model, cfg.compile)
    use_bf16 = bf16_autocast_on(cfg.bf16, device.type == "cuda")
    model.train()

    loss_sum, loss_count, started, start_step = 0.0, 0, time.perf_counter(), step
    metrics: dict[str, float] = {}
    while step < cfg.num_steps:
        idx = batch_indices(len(images), cfg.batch_size, seed, step, ctx.rank, ctx.world_size)
        step_seed = hash((seed, step, ctx.rank)) & 0x7FFFFFFF
        generator = torch.Generator().manual_seed(step_seed)
        torch.manual_seed(step_seed)  # dropout
        x0 = to_model_pixels(images[idx], preset.image_size, device)
        if cfg.hflip:
            flip = (torch.rand(len(idx), generator=generator) < 0.5).to(device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, NUM_TIMESTEPS, (len(idx),), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        xt = in_layout(scheduler.add_noise(x0, noise, t), cfg.channels_last)
        cudagraph_step(cfg.compile)
        with bf16_autocast(device, use_bf16):
            output = model(xt, t).sample
        loss = diffusion_loss(output.float(), noise, x0, xt, t, weights, posterior).mean()

        value = float(loss.detach())
        if not all_ranks_finite(value, device):
            last = ctx.last_checkpoint()
            raise TrainingError(f"non-finite diffusion loss {value} at step {step + 1}; last good checkpoint: "
                                f"{last or 'none (no checkpoint was written yet)'}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                     else torch.tensor(float("nan")))
        optimizer.step()
        ema.step(unet.parameters())
        step += 1
        loss_sum, loss_count = loss_sum + value, loss_count + 1

        if cfg.check_sync_every and step % cfg.check_sync_every == 0:
            spread = param_rank_spread(unet)
            ctx.log(step, {"param_rank_spread": spread})
            if spread != 0.0:
                raise TrainingError(f"DDP ranks hold different parameters after step {step} "
                                    f"(largest difference {spread:g})")
        if step % cfg.log_every == 0 or step == cfg.num_steps:
            mean = all_reduce_sum(torch.tensor([loss_sum, loss_count], dtype=torch.float64, device=device))
            elapsed = time.perf_counter() - started
            metrics = {"loss": float(mean[0] / mean[1]), "grad_norm": float(grad_norm),
                       "ema_decay": float(ema.cur_decay_value),
                       "images_per_s": (step - start_step) * cfg.batch_size / elapsed, "step": step}
            ctx.log(step, metrics)
            loss_sum, loss_count = 0.0, 0
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.num_steps) and ctx.rank == 0:
            grid = sample_grid(ema_copy(unet, ema), cfg, preset, seed, device)
            ctx.log_artifact(f"step_{step:07d}.png", png_bytes(grid, scale=2), "samples")
        if step % cfg.checkpoint_every == 0 or step == cfg.num_steps:
            state = {"unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
                     "step": step}
            ctx.report({**metrics, "step": step}, state)
            if ctx.rank == 0:
                ema_weights = ema_copy(unet, ema).state_dict()
                payload = unet_checkpoint_bytes(ema_weights, preset, step, asdict(cfg))
                ctx.log_artifact("diffusion.pt", payload, "checkpoint")
                if cfg.keep_checkpoints:
                    ctx.log_artifact(f"step_{step:07d}.pt", payload, "checkpoints")

    ema_unet = ema_copy(unet, ema)
    checkpoint = unet_checkpoint_bytes(ema_unet.state_dict(), preset, step, asdict(cfg))
    return DiffusionResult(ema_unet=ema_unet, step=step, metrics={**metrics, "step": step, "steps_run": step - start_step},
                           checkpoint=checkpoint)
