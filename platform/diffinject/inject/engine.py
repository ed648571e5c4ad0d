"""Content injection engines: the batched one used in production and the reference path.

Both follow docs/design.md 2.3: DDIM-invert the original to x_T; DDIM-invert the content and
record its h along the way; generate from x_T, and at every step with t >= t_edit mix the
content's h into h_t (slerp) and take the asymmetric step (x0 from the injected eps, the
direction from the plain eps); quality boosting (eta = 1) at t <= t_boost. Optional:
dt_lambda (the direction term scaled at t >= 950) and omega (InjectFusion's latent
calibration: x_t moved towards the injection, then a plain step; one more U-Net pass).
With `inject_grid` / `boost_grid` (the released code), only generation steps whose t lies on
that coarser grid inject (and take dt_lambda) / boost; the others are plain eta-0 DDIM steps.

* `InjectionEngine` (batched): many pairs per U-Net pass; each content is inverted once and
  only the h it needs is kept; one encoder pass and two decoder passes at injected steps
  (one below t_edit); bf16 autocast on GPU. Each pair draws its boosting noise from its own
  seeded generator, so its image does not depend on the batch it ran in.
* `reference_inject`: one pair at a time, no sharing, two full U-Net passes per injected
  step through `HSpace` (the released code's way, in-process): the check for the engine.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config import InjectionConfig, check_inject_grid, parse_mask
from ..diffusion.hspace import HSpace, decode, encode
from ..diffusion.pixels import to_model_pixels, to_uint8
from ..diffusion.schedule import linear_alphas_cumprod
from ..errors import ConfigError
from .formulas import calibrated_latent, ddim_step, inject_h, on_grid, region_mask, timestep_grid

DT_LAMBDA_FROM = 950  # dt_lambda scales the direction term at steps with t >= this


@dataclass(frozen=True)
class InjectionPlan:
    """Everything about a run that does not depend on the pairs."""

    inversion_grid: list[int]
    generation_grid: list[int]
    # generation step index i (the step from generation_grid[i]; on the inject grid, with
    # t >= t_edit) -> inversion-grid index of the content h to use (the nearest recorded timestep)
    content_step: dict[int, int]
    boost_steps: frozenset[int]      # steps with eta = 1: on the boost grid, with t <= t_boost
    dt_lambda_steps: frozenset[int]  # steps whose direction term is scaled: on the inject grid, t >= 950
    gamma: float
    dt_lambda: float
    omega: float
    mask_box: tuple[float, float, float, float] | None

    @classmethod
    def from_config(cls, cfg: InjectionConfig, t_edit: int | None = None) -> "InjectionPlan":
        t_edit = cfg.t_edit if t_edit is None else t_edit
        if not 0 <= t_edit <= 999:
            raise ConfigError(f"t_edit must be in [0, 999], got {t_edit}")
        check_inject_grid(cfg, t_edit)
        inv, gen = timestep_grid(cfg.inversion_steps), timestep_grid(cfg.generation_steps)
        inv_arr = np.asarray(inv)
        injectable = on_grid(gen, cfg.inject_grid)
        content_step = {i: int(np.abs(inv_arr - gen[i]).argmin()) for i in injectable if gen[i] >= t_edit}
        boost = frozenset(i for i in on_grid(gen, cfg.boost_grid) if cfg.t_boost >= 0 and gen[i] <= cfg.t_boost)
        scaled = frozenset(i for i in injectable if cfg.dt_lambda != 1.0 and gen[i] >= DT_LAMBDA_FROM)
        return cls(inv, gen, content_step, boost, scaled, cfg.gamma, cfg.dt_lambda, cfg.omega,
                   None if cfg.mode == "global" else parse_mask(cfg.mask))

    def direction(self, i: int, eps: torch.Tensor) -> torch.Tensor:
        """The direction term of generation step i: eps, times dt_lambda at dt_lambda_steps."""
        return eps * self.dt_lambda if i in self.dt_lambda_steps else eps

    def mask(self, h: torch.Tensor) -> torch.Tensor | None:
        return None if self.mask_box is None else region_mask(h.shape[-2], h.shape[-1], self.mask_box)


class _Schedule:
    def __init__(self):
        self.abar = linear_alphas_cumprod().double().tolist()

    def __getitem__(self, t: int) -> float:
        return self.abar[t]


class InjectionEngine:
    """Batched injection for one U-Net, one set of contents and one configuration."""

    def __init__(self, unet: nn.Module, cfg: InjectionConfig, contents: np.ndarray | None,
                 device: torch.device | str = "cpu", t_edit: int | None = None, image_size: int | None = None):
        """contents: the top-K images (uint8 K x H x W x 3); None builds an inversion-only
        engine (t_edit calibration), whose `generate` is an error."""
        if contents is not None and len(contents) == 0:
            raise ConfigError("the content (top-K) set is empty; stage 3 needs at least one content image")
        self.device = torch.device(device)
        self.unet = unet.eval().to(self.device)
        self.cfg = cfg
        self.plan = InjectionPlan.from_config(cfg, t_edit)
        self.size = image_size or unet.config.sample_size
        self.dtype = torch.float64 if next(unet.parameters()).dtype == torch.float64 else torch.float32
        self.abar = _Schedule()
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                         else contextlib.nullcontext())
        # K x steps-needed x C x h x w
        self.content_h = self._content_trajectories(contents) if contents is not None else None

    @torch.no_grad()
    def _eps(self, x: torch.Tensor, t: int):
        with self.autocast:
            encoded = encode(self.unet, x, torch.full((len(x),), t, device=self.device, dtype=torch.long))
            eps = decode(self.unet, encoded)[:, :3].to(self.dtype)
        return encoded, eps

    @torch.no_grad()
    def _decode(self, encoded, h: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return decode(self.unet, encoded, h.to(encoded.h.dtype))[:, :3].to(self.dtype)

    @torch.no_grad()
    def invert(self, x: torch.Tensor, record: list[int] | None = None,
               on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
               ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """DDIM inversion (eta = 0) along the inversion grid; returns x_T and the h at the
        inversion-grid indices in `record` (index len(grid) - 1 is h at t = 999, from x_T).
        `on_step(t, x_t, eps)` sees every step (e.g. for the predicted x0 of t_edit calibration)."""
        grid, wanted, kept = self.plan.inversion_grid, set(record or ()), {}
        for i in range(len(grid) - 1):
            encoded, eps = self._eps(x, grid[i])
            if on_step is not None:
                on_step(grid[i], x, eps)
            if i in wanted:
                kept[i] = encoded.h.to(self.dtype)
            x = ddim_step(x, eps, eps, self.abar[grid[i]], self.abar[grid[i + 1]])
        if len(grid) - 1 in wanted:
            with self.autocast:
                last = encode(self.unet, x, torch.full((len(x),), grid[-1], device=self.device, dtype=torch.long))
            kept[len(grid) - 1] = last.h.to(self.dtype)
        return x, kept

    def _content_trajectories(self, contents: np.ndarray) -> torch.Tensor:
        needed = sorted(set(self.plan.content_step.values()))
        self._slot = {step: j for j, step in enumerate(needed)}
        chunks = []
        for start in range(0, len(contents), self.cfg.batch_size):
            x = to_model_pixels(contents[start:start + self.cfg.batch_size], self.size, self.device, self.dtype)
            _, kept = self.invert(x, needed)
            if needed:
                chunks.append(torch.stack([kept[s] for s in needed], dim=1))
        return torch.cat(chunks) if chunks else torch.empty(len(contents), 0)

    def generate(self, originals: np.ndarray, content_index: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """uint8 images (at the originals' size) for pairs (originals[i], contents[content_index[i]], seeds[i])."""
        x = self.generate_tensor(originals, content_index, seeds)
        return to_uint8(x, originals.shape[1], originals.shape[2])

    @torch.no_grad()
    def generate_tensor(self, originals: np.ndarray, content_index: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
        """The generated images as float N x 3 x S x S in the model's resolution (unclipped)."""
        if self.content_h is None:
            raise ConfigError("this engine was built without contents (inversion only); it cannot generate")
        if len(originals) != len(content_index) or len(originals) != len(seeds):
            raise ValueError("originals, content_index and seeds must have one entry per pair")
        if len(content_index) and (np.min(content_index) < 0 or np.max(content_index) >= len(self.content_h)):
            raise ConfigError(f"content index out of range: the content set has {len(self.content_h)} images")
        out = []
        for start in range(0, len(originals), self.cfg.batch_size):
            part = slice(start, start + self.cfg.batch_size)
            x_T, _ = self.invert(to_model_pixels(originals[part], self.size, self.device, self.dtype))
            out.append(self._generate(x_T, np.asarray(content_index[part]), np.asarray(seeds[part])).cpu())
        return torch.cat(out) if out else torch.zeros(0, 3, self.size, self.size)

    def _generate(self, x: torch.Tensor, content_index: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
        plan, grid = self.plan, self.plan.generation_grid
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        index = torch.as_tensor(content_index, device=self.device, dtype=torch.long)
        for i in range(len(grid) - 1, 0, -1):
            t, t_next = grid[i], grid[i - 1]
            encoded, eps = self._eps(x, t)
            eps_x0 = eps
            if i in plan.content_step:
                h = encoded.h.to(self.dtype)
                content = self.content_h[index, self._slot[plan.content_step[i]]]
                eps_x0 = self._decode(encoded, inject_h(h, content, plan.gamma, plan.mask(h)))
                if plan.omega:
                    x = calibrated_latent(x, eps, eps_x0, self.abar[t], plan.omega)
                    _, eps = self._eps(x, t)
                    eps_x0 = eps
            noise = None
            if i in plan.boost_steps:
                noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(self.device, x.dtype)
            x = ddim_step(x, eps_x0, plan.direction(i, eps), self.abar[t], self.abar[t_next], noise)
        return x


def reference_inject(unet: nn.Module, cfg: InjectionConfig, original: np.ndarray, content: np.ndarray, seed: int,
                     t_edit: int | None = None) -> np.ndarray:
    """One pair (uint8 H x W x 3 in, same out), the released code's way; see reference_inject_tensor."""
    x = reference_inject_tensor(unet, cfg, original, content, seed, t_edit)
    return to_uint8(x, original.shape[0], original.shape[1])[0]


@torch.no_grad()
def reference_inject_tensor(unet: nn.Module, cfg: InjectionConfig, original: np.ndarray, content: np.ndarray,
                            seed: int, t_edit: int | None = None) -> torch.Tensor:
    """One pair, no sharing, float32, full U-Net passes through HSpace: 1 x 3 x S x S, unclipped."""
    plan, abar = InjectionPlan.from_config(cfg, t_edit), _Schedule()
    unet = unet.eval()
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    size = unet.config.sample_size

    def eps_of(x, t):
        return unet(x, torch.tensor([t], device=device)).sample[:, :3]

    def invert(x, record: bool):
        grid, hs = plan.inversion_grid, {}
        with HSpace(unet) as space:
            for i in range(len(grid) - 1):
                eps = eps_of(x, grid[i])
                hs[i] = space.captured.clone()
                x = ddim_step(x, eps, eps, abar[grid[i]], abar[grid[i + 1]])
            if record:
                eps_of(x, grid[-1])
                hs[len(grid) - 1] = space.captured.clone()
        return x, hs

    _, content_h = invert(to_model_pixels(content[None], size, device, dtype), record=True)
    x, _ = invert(to_model_pixels(original[None], size, device, dtype), record=False)
    generator, grid = torch.Generator().manual_seed(int(seed)), plan.generation_grid
    with HSpace(unet) as space:
        for i in range(len(grid) - 1, 0, -1):
            t, t_next = grid[i], grid[i - 1]
            eps = eps_of(x, t)
            eps_x0 = eps
            if i in plan.content_step:
                h = space.captured
                space.replace_with(inject_h(h, content_h[plan.content_step[i]], plan.gamma, plan.mask(h)))
                eps_x0 = eps_of(x, t)
                if plan.omega:
                    x = calibrated_latent(x, eps, eps_x0, abar[t], plan.omega)
                    eps = eps_x0 = eps_of(x, t)
            noise = None
            if i in plan.boost_steps:
                noise = torch.randn(x.shape[1:], generator=generator).to(device, dtype)[None]
            x = ddim_step(x, eps_x0, plan.direction(i, eps), abar[t], abar[t_next], noise)
    return x.cpu()
