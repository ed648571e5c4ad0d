"""A²'s generators (An et al., ACCV 2022, Sec. 3), stage code (no Ray):

- `train_source`: StyleGAN2 (Karras et al., 2020) on the whole biased training set:
  non-saturating logistic loss, lazy R1 and path-length regularisation (with Adam's lr and betas
  corrected for the lazy interval), style mixing, an EMA copy of G;
- `adapt`: few-shot adaptation of that generator to the top-K bias-conflicting images with the
  cross-domain correspondence loss, as few-shot-gan-adaptation train.py (Ojha et al., 2021) runs
  it: one step in four latents near fixed anchors and the image-level D, the others free
  latents (style mixing) and the patch-level D (above 32 px; at 32 px image level too), CDC on
  fresh latents, R1, path length and an EMA of G;
- `project_and_decode`: each original projected into the source's W space (gan.projection) and
  decoded by the adapted generator from w alone (A²'s projector.py saves w, not the noise maps:
  stylegan2.decode_noise=random) or from w and the projected noise (decode_noise=projected).

Every random draw of a step (batch, flips, z, style mixing, noise, regulariser probes) is seeded
by (seed, step, rank), so a run resumed from a checkpoint continues exactly. Under
torch.distributed each rank takes a strided share of the batch and the gradients are averaged
over ranks by hand after each backward pass (as StyleGAN2-ADA does): DistributedDataParallel
supports neither the double backward of R1 and the path-length penalty nor the two
discriminator passes (reals, fakes) before one backward.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from diffinject.config.schema import StyleGAN2Config
from diffinject.core.errors import ConfigError, TrainingError
from diffinject.core.numerics import bf16_autocast_on
from diffinject.core.plots import png_bytes, tile_images
from diffinject.nets.diffusion.checkpoint import load_strict
from diffinject.nets.diffusion.pixels import to_model_pixels, to_uint8
from diffinject.nets.gan.checkpoint import gan_checkpoint_bytes
from diffinject.nets.gan.losses import cdc_loss, logistic_d_loss, logistic_g_loss, path_length_penalty, r1_penalty
from diffinject.nets.gan.presets import StyleGAN2Preset, get_gan_preset
from diffinject.nets.gan.projection import project
from diffinject.nets.gan.stylegan2 import Discriminator, Generator
from diffinject.nets.metrics import all_ranks_finite, all_reduce_sum
from diffinject.training.loop import TrainContext, batch_indices, seed_everything

FAMILY = "stylegan2"


@dataclass
class GanResult:
    generator: nn.Module     # eval mode: the source's EMA generator, or the adapted one
    step: int
    metrics: dict[str, float]
    checkpoint: bytes        # a diffinject GAN checkpoint file (gan.checkpoint)


def check_images(shape: tuple[int, ...], preset: StyleGAN2Preset, resize: bool, what: str) -> None:
    if len(shape) != 4 or shape[-1] != 3 or shape[0] == 0:
        raise ConfigError(f"{what} must be a non-empty N x H x W x 3 array, got shape {tuple(shape)}")
    if not resize and tuple(shape[1:3]) != (preset.resolution, preset.resolution):
        raise ConfigError(f"{what} are {shape[1]}x{shape[2]} but stylegan2 preset {preset.name} is "
                          f"{preset.resolution}x{preset.resolution}; set stylegan2.resize=true or pick a preset "
                          f"of that size")


def lazy_adam(params, lr: float, every: int) -> torch.optim.Adam:
    """Adam with betas (0, 0.99); for a network regularised every `every` steps (0: never) lr and
    betas are corrected by c = every / (every + 1) (StyleGAN2 Appendix B)."""
    c = every / (every + 1) if every else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=(0.0, 0.99 ** c), eps=1e-8, foreach=True)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, step, rank)) & 0x7FFFFFFF)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module) -> None:
    """Backward, gradients averaged over ranks, one Adam step of `module`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)
    optimizer.step()


def check_finite(values: dict[str, float], step: int, ctx: TrainContext, device: torch.device) -> None:
    for name, value in values.items():
        if not all_ranks_finite(value, device):
            last = ctx.last_checkpoint()
            raise TrainingError(f"non-finite {name} {value} at step {step + 1}; last good checkpoint: "
                                f"{last or 'none (no checkpoint was written yet)'}")


def sample_grid(generator: Generator, z: torch.Tensor) -> bytes:
    """PNG of the generator's images of fixed latents (constant noise), ten a row."""
    with torch.no_grad():
        images = generator(z.to(generator.const.device), noise_mode="const")
    scale = 2 if generator.resolution <= 64 else 1
    return png_bytes(tile_images(to_uint8(images), columns=10), scale=scale)


class Averages:
    """Running sums of the logged losses since the last log line, summed over ranks when read."""

    def __init__(self):
        self.sums: dict[str, list[float]] = {}

    def add(self, **values: float) -> None:
        for k, v in values.items():
            total = self.sums.setdefault(k, [0.0, 0.0])
            total[0] += v
            total[1] += 1

    def read(self, device: torch.device) -> dict[str, float]:
        keys = sorted(self.sums)
        totals = all_reduce_sum(torch.tensor([self.sums[k] for k in keys], dtype=torch.float64, device=device)
                                .reshape(-1, 2))
        self.sums = {}
        return {k: float(t[0] / t[1]) for k, t in zip(keys, totals)}


def path_length_step(G: Generator, opt_g: torch.optim.Optimizer, cfg: StyleGAN2Config, n: int, pl_mean: torch.Tensor,
                     gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The lazy path-length regularisation of G on n / 2 fresh mixed latents, weighted by the
    interval: (the penalty, the new running mean of the lengths)."""
    z = _randn(max(1, n // 2), G.z_dim, gen, device)
    fake, ws = G(z, mixing_prob=cfg.style_mixing, generator=gen, return_ws=True)
    pl, _, pl_mean = path_length_penalty(fake, ws, pl_mean, generator=gen)
    optimizer_step(opt_g, cfg.pl_weight * pl * cfg.pl_every, G)
    return pl, pl_mean.detach()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta ema + (1 - beta) model for parameters (rosinality's accumulate); buffers copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _autocast(cfg: StyleGAN2Config, device: torch.device):
    if bf16_autocast_on(cfg.bf16, device.type == "cuda"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _real_batch(images: np.ndarray, idx: np.ndarray, preset: StyleGAN2Preset, hflip: bool,
                generator: torch.Generator, device: torch.device) -> torch.Tensor:
    x = to_model_pixels(images[idx], preset.resolution, device)
    if hflip:
        flip = (torch.rand(len(idx), generator=generator) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _randn(n: int, dim: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(n, dim, generator=generator).to(device)


def train_source(cfg: StyleGAN2Config, images: np.ndarray, ctx: TrainContext, seed: int) -> GanResult:
    """Train the source StyleGAN2 (cfg.preset) on uint8 `images` (N x H x W x 3) for cfg.num_steps."""
    preset = get_gan_preset(FAMILY, cfg.preset)
    check_images(images.shape, preset, cfg.resize, "stylegan2 training images")
    device = ctx.device
    seed_everything(seed)
    G, D = Generator(preset).to(device), Discriminator(preset).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = lazy_adam(G.parameters(), cfg.lr, cfg.pl_every if cfg.pl_weight > 0 else 0)
    opt_d = lazy_adam(D.parameters(), cfg.lr, cfg.r1_every if cfg.r1_gamma > 0 else 0)
    pl_mean = torch.zeros((), device=device)
    step = 0
    if ctx.resume_state is not None:
        state = ctx.resume_state
        G.load_state_dict(state["generator"])
        D.load_state_dict(state["discriminator"])
        G_ema.load_state_dict(state["generator_ema"])
        opt_g.load_state_dict(state["optimizer_g"])
        opt_d.load_state_dict(state["optimizer_d"])
        pl_mean = state["pl_mean"].to(device)
        step = int(state["step"])
    beta = 0.5 ** (cfg.batch_size / cfg.ema_half_life) if cfg.ema_half_life else 0.0
    autocast = _autocast(cfg, device)
    fixed_z = torch.randn(cfg.sample_images, preset.z_dim, generator=torch.Generator().manual_seed(seed + 12345))
    G.train(), D.train()

    averages, started, start_step, metrics = Averages(), time.perf_counter(), step, {}
    r1 = pl = torch.zeros(())
    while step < cfg.num_steps:
        idx = batch_indices(len(images), cfg.batch_size, seed, step, ctx.rank, ctx.world_size)
        gen = step_generator(seed, step, ctx.rank)
        n = len(idx)
        real = _real_batch(images, idx, preset, cfg.hflip, gen, device)

        D.requires_grad_(False)  # generator phases: no gradients into D
        with autocast():
            fake = G(_randn(n, preset.z_dim, gen, device), mixing_prob=cfg.style_mixing, generator=gen)
            g_loss = logistic_g_loss(D(fake).float())
        check_finite({"generator loss": float(g_loss.detach())}, step, ctx, device)
        optimizer_step(opt_g, g_loss, G)
        if cfg.pl_weight > 0 and step % cfg.pl_every == 0:
            pl, pl_mean = path_length_step(G, opt_g, cfg, n, pl_mean, gen, device)

        D.requires_grad_(True)
        with torch.no_grad(), autocast():
            fake = G(_randn(n, preset.z_dim, gen, device), mixing_prob=cfg.style_mixing, generator=gen)
        with autocast():
            d_loss = logistic_d_loss(D(real).float(), D(fake).float())
        check_finite({"discriminator loss": float(d_loss.detach())}, step, ctx, device)
        optimizer_step(opt_d, d_loss, D)
        if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
            real = real.detach().requires_grad_(True)
            r1 = r1_penalty(D(real), real)
            optimizer_step(opt_d, cfg.r1_gamma / 2 * r1 * cfg.r1_every, D)

        update_ema(G_ema, G, beta)
        step += 1
        averages.add(d_loss=float(d_loss.detach()), g_loss=float(g_loss.detach()))

        if step % cfg.log_every == 0 or step == cfg.num_steps:
            elapsed = time.perf_counter() - started
            metrics = {**averages.read(device), "r1": float(r1.detach()), "pl": float(pl.detach()),
                       "images_per_s": (step - start_step) * cfg.batch_size / elapsed, "step": step}
            ctx.log(step, metrics)
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.num_steps) and ctx.rank == 0:
            ctx.log_artifact(f"step_{step:07d}.png", sample_grid(G_ema, fixed_z), "samples_source")
        if step % cfg.checkpoint_every == 0 or step == cfg.num_steps:
            if cfg.keep_checkpoints and ctx.rank == 0:
                ctx.log_artifact(f"step_{step:07d}.pt", gan_checkpoint_bytes(
                    FAMILY, preset.name, {"generator": G_ema.state_dict(), "discriminator": D.state_dict()}, step,
                    asdict(cfg)), "checkpoints")
            ctx.report({**metrics, "step": step},
                       {"generator": G.state_dict(), "discriminator": D.state_dict(),
                        "generator_ema": G_ema.state_dict(), "optimizer_g": opt_g.state_dict(),
                        "optimizer_d": opt_d.state_dict(), "pl_mean": pl_mean, "step": step})

    checkpoint = gan_checkpoint_bytes(FAMILY, preset.name, {"generator": G_ema.state_dict(),
                                                             "discriminator": D.state_dict()}, step, asdict(cfg))
    return GanResult(generator=G_ema, step=step, metrics={**metrics, "step": step}, checkpoint=checkpoint)


def adapt(cfg: StyleGAN2Config, source_payload: dict, topk_images: np.ndarray, ctx: TrainContext,
          seed: int) -> GanResult:
    """Adapt the source (a read_gan_checkpoint payload with a generator and a discriminator) to
    the uint8 top-K images for cfg.adapt_steps, as few-shot-gan-adaptation train.py does.

    Every cfg.image_d_every-th step (the reference's subspace_freq) D and G see latents near the
    anchors and the image-level D; the other steps free latents with style mixing and, above
    32 px, the patch-level D (at 32 px the reference's patch branch never fires: image level).
    The G step adds the CDC loss on cfg.cdc_batch_size fresh latents (its own draw, no mixing),
    each sample read at a random convolution after the 4 px one; lazy R1 and path-length
    regularisation as the source trains; the result is the EMA of G (the reference's g_ema, its
    decay per step whatever the batch: cfg.adapt_ema_half_life steps)."""
    preset = get_gan_preset(FAMILY, source_payload["preset"])
    check_images(topk_images.shape, preset, cfg.resize, "the top-K images A² adapts to")
    device = ctx.device
    if cfg.cdc_batch_size < 3:
        raise ConfigError(f"stylegan2.cdc_batch_size={cfg.cdc_batch_size}: the CDC loss needs at least 3 latents")
    if cfg.adapt_batch_size < ctx.world_size:
        raise ConfigError(f"stylegan2.adapt_batch_size {cfg.adapt_batch_size} is smaller than the {ctx.world_size} "
                          f"workers; each needs at least one image a step")
    for name in ("generator", "discriminator"):
        if name not in source_payload["nets"]:
            raise ConfigError(f"the source StyleGAN2 checkpoint has no {name} (it has "
                              f"{', '.join(source_payload['nets'])})")
    seed_everything(seed)
    source = Generator(preset)
    load_strict(source, source_payload["nets"]["generator"], f"source stylegan2 {preset.name} generator")
    source = source.to(device).eval().requires_grad_(False)
    G = copy.deepcopy(source).train().requires_grad_(True)
    G_ema = copy.deepcopy(source)
    D = Discriminator(preset)
    load_strict(D, source_payload["nets"]["discriminator"], f"source stylegan2 {preset.name} discriminator")
    D = D.to(device).train()
    opt_g = lazy_adam(G.parameters(), cfg.adapt_lr, cfg.pl_every if cfg.pl_weight > 0 else 0)
    opt_d = lazy_adam(D.parameters(), cfg.adapt_lr, cfg.r1_every if cfg.r1_gamma > 0 else 0)
    pl_mean = torch.zeros((), device=device)
    step = 0
    if ctx.resume_state is not None:
        state = ctx.resume_state
        G.load_state_dict(state["generator"])
        G_ema.load_state_dict(state["generator_ema"])
        D.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["optimizer_g"])
        opt_d.load_state_dict(state["optimizer_d"])
        pl_mean = state["pl_mean"].to(device)
        step = int(state["step"])
    beta = 0.5 ** (1.0 / cfg.adapt_ema_half_life) if cfg.adapt_ema_half_life else 0.0
    anchors = torch.randn(cfg.anchor_count, preset.z_dim, generator=torch.Generator().manual_seed(seed + 777))
    fixed_z = torch.randn(cfg.sample_images, preset.z_dim, generator=torch.Generator().manual_seed(seed + 12345))
    has_patch_level = D.patch_head is not None
    autocast = _autocast(cfg, device)

    def latents(n: int, near_anchors: bool, gen: torch.Generator) -> torch.Tensor:
        if near_anchors:
            picked = anchors[torch.randint(cfg.anchor_count, (n,), generator=gen)]
            return (picked + cfg.anchor_std * torch.randn(picked.shape, generator=gen)).to(device)
        return _randn(n, preset.z_dim, gen, device)

    def fakes(n: int, near_anchors: bool, gen: torch.Generator) -> torch.Tensor:
        mixing = 0.0 if near_anchors else cfg.style_mixing  # the reference mixes free latents only
        return G(latents(n, near_anchors, gen), mixing_prob=mixing, generator=gen)

    def logits(x: torch.Tensor, image_level: bool) -> torch.Tensor:
        return (D(x) if image_level else D(x, patch=True)[1]).float()

    averages, started, start_step, metrics = Averages(), time.perf_counter(), step, {}
    r1 = pl = torch.zeros(())
    while step < cfg.adapt_steps:
        idx = batch_indices(len(topk_images), cfg.adapt_batch_size, seed, step, ctx.rank, ctx.world_size)
        gen = step_generator(seed, step, ctx.rank)
        n = len(idx)
        near_anchors = step % cfg.image_d_every == 0
        image_level = near_anchors or not has_patch_level
        real = _real_batch(topk_images, idx, preset, False, gen, device)

        with torch.no_grad(), autocast():
            fake = fakes(n, near_anchors, gen)
        with autocast():
            d_loss = logistic_d_loss(logits(real, image_level), logits(fake, image_level))
        check_finite({"discriminator loss": float(d_loss.detach())}, step, ctx, device)
        optimizer_step(opt_d, d_loss, D)
        if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
            real = real.detach().requires_grad_(True)
            r1 = r1_penalty(D(real), real)
            optimizer_step(opt_d, cfg.r1_gamma / 2 * r1 * cfg.r1_every, D)

        D.requires_grad_(False)
        with autocast():
            adversarial = logistic_g_loss(logits(fakes(n, near_anchors, gen), image_level))
        z = _randn(cfg.cdc_batch_size, preset.z_dim, gen, device)  # CDC's own latents
        layers = torch.randint(1, len(G.convs), (cfg.cdc_batch_size,), generator=gen).tolist()
        noise_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))  # the same noise maps for both generators
        with torch.no_grad(), autocast():
            _, source_features = source(z, generator=torch.Generator().manual_seed(noise_seed), return_features=True)
        with autocast():
            _, features = G(z, generator=torch.Generator().manual_seed(noise_seed), return_features=True)
        cdc = cdc_loss(source_features, features, layers)
        g_loss = adversarial + cfg.cdc_weight * cdc
        check_finite({"generator loss": float(g_loss.detach())}, step, ctx, device)
        optimizer_step(opt_g, g_loss, G)
        if cfg.pl_weight > 0 and step % cfg.pl_every == 0:
            pl, pl_mean = path_length_step(G, opt_g, cfg, n, pl_mean, gen, device)
        D.requires_grad_(True)
        update_ema(G_ema, G, beta)
        step += 1
        averages.add(d_loss=float(d_loss.detach()), g_loss=float(adversarial.detach()), cdc=float(cdc.detach()))

        if step % cfg.log_every == 0 or step == cfg.adapt_steps:
            elapsed = time.perf_counter() - started
            metrics = {**averages.read(device), "r1": float(r1.detach()), "pl": float(pl.detach()),
                       "images_per_s": (step - start_step) * cfg.adapt_batch_size / elapsed, "step": step}
            ctx.log(step, metrics)
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.adapt_steps) and ctx.rank == 0:
            ctx.log_artifact(f"step_{step:07d}.png", sample_grid(G_ema, fixed_z), "samples_adapted")
        if step % cfg.checkpoint_every == 0 or step == cfg.adapt_steps:
            ctx.report({**metrics, "step": step},
                       {"generator": G.state_dict(), "generator_ema": G_ema.state_dict(),
                        "discriminator": D.state_dict(), "optimizer_g": opt_g.state_dict(),
                        "optimizer_d": opt_d.state_dict(), "pl_mean": pl_mean, "step": step})

    checkpoint = gan_checkpoint_bytes(FAMILY, preset.name, {"generator": G_ema.state_dict()}, step, asdict(cfg))
    return GanResult(generator=G_ema, step=step, metrics={**metrics, "step": step}, checkpoint=checkpoint)


def project_and_decode(source_g: Generator, adapted_g: Generator, originals: np.ndarray, cfg: StyleGAN2Config,
                       distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], seeds: np.ndarray,
                       out_size: int) -> np.ndarray:
    """uint8 N x out_size x out_size x 3: each original projected into the source's W space (w and
    noise maps) and decoded by the adapted generator from w with fresh noise maps
    (cfg.decode_noise=random, A²'s release) or with the projected ones (projected). Batches of
    cfg.project_batch_size, each with its random draws seeded by its first original's seed, so
    that a batch's result does not depend on the other batches."""
    if len(seeds) != len(originals):
        raise ValueError(f"{len(originals)} originals but {len(seeds)} seeds")
    if len(originals) == 0:
        return np.zeros((0, out_size, out_size, 3), dtype=np.uint8)
    device = source_g.const.device
    out = []
    for start in range(0, len(originals), cfg.project_batch_size):
        batch = originals[start:start + cfg.project_batch_size]
        targets = to_model_pixels(batch, source_g.resolution, device)
        generator = torch.Generator().manual_seed(int(seeds[start]))
        w, noise, _ = project(source_g, targets, distance, cfg.project_steps, lr=cfg.project_lr,
                              noise_reg_weight=cfg.noise_reg_weight, generator=generator)
        if cfg.decode_noise == "random":
            noise = adapted_g.make_noise(len(batch), generator)
        with torch.no_grad():
            images = adapted_g.synthesis(w[:, None].expand(-1, adapted_g.num_ws, -1), noise=noise)
        out.append(to_uint8(images, out_size, out_size))
    return np.concatenate(out)
