"""The math of content injection (docs/design.md 2.3), as pure tensor functions."""
from __future__ import annotations

import math

import numpy as np
import torch

from diffinject.core.errors import ConfigError


def timestep_grid(n: int) -> list[int]:
    """n timesteps from 0 to 999: [int(s + 1e-6) for s in linspace(0, 1, n) * 999]."""
    if n < 2:
        raise ConfigError(f"a timestep grid needs at least 2 steps, got {n}")
    return [int(s + 1e-6) for s in np.linspace(0, 1, n) * 999]


def on_grid(generation_grid: list[int], steps: int) -> list[int]:
    """Indices i >= 1 of the generation grid (the step from grid[i] to grid[i - 1]) whose t lies
    on the `steps`-step timestep grid (the released code's `i in seq_replace`); 0: every step."""
    on = set(timestep_grid(steps)) if steps else None
    return [i for i in range(1, len(generation_grid)) if on is None or generation_grid[i] in on]


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def slerp(h: torch.Tensor, c: torch.Tensor, gamma: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation per sample (over all of C, H, W); gamma is the weight of c.

    sin((1-gamma) theta)/sin(theta) h + sin(gamma theta)/sin(theta) c, with theta the angle
    between h and c. Where theta ~ 0 (parallel inputs, or a zero vector) it falls back to
    the linear interpolation, which is its limit, instead of the released code's NaN.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"slerp gamma must be in [0, 1], got {gamma}")
    hf, cf = h.flatten(1).double(), c.flatten(1).double()
    denom = hf.norm(dim=1) * cf.norm(dim=1)
    cos = torch.where(denom > 0, (hf * cf).sum(1) / denom.clamp_min(1e-300), torch.ones_like(denom)).clamp(-1, 1)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    small = sin < eps
    safe = torch.where(small, torch.ones_like(sin), sin)
    wh = torch.where(small, torch.full_like(sin, 1.0 - gamma), torch.sin((1.0 - gamma) * theta) / safe)
    wc = torch.where(small, torch.full_like(sin, gamma), torch.sin(gamma * theta) / safe)
    shape = (-1, *([1] * (h.dim() - 1)))
    return (wh.view(shape) * h.double() + wc.view(shape) * c.double()).to(h.dtype)


def rescale_to_norm(c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """c scaled per sample to the L2 norm of h."""
    return c * (_per_sample_norm(h) / _per_sample_norm(c).clamp_min(1e-12))


def region_mask(height: int, width: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    """1 x 1 x H x W float mask of the relative box (top, left, bottom, right): rows
    round(top H) .. round(bottom H) - 1 (halves round up), likewise columns. The released 8x8
    box (rows 4..6, columns 3..4) is (0.5, 0.375, 0.875, 0.625); at 4x4 the same box is rows
    2..3, column 2. A box too thin for the resolution is an error, not a silent no-op."""
    top, left, bottom, right = box

    def cell(f: float, n: int) -> int:
        return math.floor(f * n + 0.5)

    r0, r1 = cell(top, height), cell(bottom, height)
    c0, c1 = cell(left, width), cell(right, width)
    mask = torch.zeros(1, 1, height, width)
    mask[..., r0:r1, c0:c1] = 1.0
    if mask.sum() == 0:
        raise ConfigError(f"injection mask {box} is empty at the model's h resolution {height}x{width}")
    return mask


def inject_h(h: torch.Tensor, c: torch.Tensor, gamma: float, mask: torch.Tensor | None) -> torch.Tensor:
    """Global (mask None): slerp(h, c rescaled to |h|, gamma). Local: slerp(h m, c m, gamma) + (1 - m) h."""
    if mask is None:
        return slerp(h, rescale_to_norm(c, h), gamma)
    m = mask.to(h.device, h.dtype)
    return slerp(h * m, c * m, gamma) + (1.0 - m) * h


def predict_x0(x: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    return (x - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)


def ddim_step(x: torch.Tensor, eps_x0: torch.Tensor, eps_dir: torch.Tensor, abar_t: float, abar_next: float,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM move from t to t' (either direction), asymmetric: x0 from eps_x0, direction from eps_dir.

    Deterministic (eta = 0): sqrt(abar') x0 + sqrt(1 - abar') eps_dir. With `noise` (quality
    boosting, eta = 1, only for t' < t): sqrt(abar') x0 + c2 eps_dir + c1 z with
    c1 = sqrt((1 - abar/abar') (1 - abar') / (1 - abar)) and c2 = sqrt(1 - abar' - c1^2).
    """
    x0 = predict_x0(x, eps_x0, abar_t)
    if noise is None:
        return math.sqrt(abar_next) * x0 + math.sqrt(1.0 - abar_next) * eps_dir
    c1 = math.sqrt((1.0 - abar_t / abar_next) * (1.0 - abar_next) / (1.0 - abar_t))
    c2 = math.sqrt(max(1.0 - abar_next - c1 * c1, 0.0))
    return math.sqrt(abar_next) * x0 + c2 * eps_dir + c1 * noise


def calibrated_latent(x: torch.Tensor, eps: torch.Tensor, eps_injected: torch.Tensor, abar_t: float,
                      omega: float) -> torch.Tensor:
    """InjectFusion's latent calibration: move x_t so that the plain model sees the injection.

    With P = x0 predicted from eps and P~ from the injected eps~, P~ is first given P's
    per-sample spread around its own mean, then
    x_t + sqrt(abar) (P~ - P) + omega sqrt(1 - abar) (eps~ - eps);
    the caller then takes a plain DDIM step from the returned latent.
    """
    plain, injected = predict_x0(x, eps, abar_t), predict_x0(x, eps_injected, abar_t)
    dims = tuple(range(1, x.dim()))
    plain_dev = plain - plain.mean(dim=dims, keepdim=True)
    mean = injected.mean(dim=dims, keepdim=True)
    injected_dev = injected - mean
    scale = plain_dev.flatten(1).std(dim=1) / injected_dev.flatten(1).std(dim=1).clamp_min(1e-12)
    injected = mean + injected_dev * scale.view(-1, *([1] * (x.dim() - 1)))
    return x + math.sqrt(abar_t) * (injected - plain) + omega * math.sqrt(1.0 - abar_t) * (eps_injected - eps)


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply, as in splitmix/murmur) on int64 tensors
    holding values in [0, 2^32). The multipliers are below 2^31, so no product overflows int64
    and every device computes the same bits."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x4C2A6E8B) & _MASK32
    return x ^ (x >> 16)


def counter_uniform(seeds: torch.Tensor, step: int, count: int, stream: int) -> torch.Tensor:
    """len(seeds) x count uniforms in (0, 1), a pure function of (seed, step, element, stream):
    no generator state, so a pair's draw does not depend on its batch, and it is made on the
    seeds' device. 24 bits each (float32's mantissa)."""
    if seeds.dtype != torch.int64:
        raise TypeError(f"seeds must be int64, got {seeds.dtype}")
    element = torch.arange(count, device=seeds.device, dtype=torch.int64)[None]
    lo, hi = (seeds & _MASK32)[:, None], ((seeds >> 32) & _MASK32)[:, None]
    x = _mix32((element * 2 + stream) & _MASK32)
    x = _mix32(x ^ _mix32(torch.tensor(step & _MASK32, device=seeds.device, dtype=torch.int64)))
    x = _mix32(x ^ lo)
    x = _mix32(x ^ hi ^ 0x5BD1E995)
    return ((x >> 8).to(torch.float32) + 0.5) / float(1 << 24)


def counter_normal(seeds: torch.Tensor, step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of shape len(seeds) x shape by Box-Muller on two counter_uniform
    streams: each pair's noise depends only on (its seed, step), on any device and in any batch."""
    count = math.prod(shape)
    u1, u2 = counter_uniform(seeds, step, count, 0), counter_uniform(seeds, step, count, 1)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.view(len(seeds), *shape)
