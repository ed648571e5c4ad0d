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
  (one below t_edit); speed levers (bf16 autocast or weights, torch.compile / CUDA graphs,
  channels_last, attention kernel, noise made on the device, memory-sized batches) are config
  switches. Each pair draws its boosting noise from its own seed (a CPU generator, or a
  counter-based draw on the device), so its image does not depend on the batch it ran in.
* `reference_inject`: one pair at a time, no sharing, two full U-Net passes per injected
  step through `HSpace` (the released code's way, in-process): the check for the engine.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from diffinject.config.rules import parse_mask
from diffinject.config.schema import InjectionConfig
from diffinject.config.validation import check_inject_grid
from diffinject.core.accel import (bf16_autocast, check_choice, check_compile, compiled, cudagraph_step, in_layout,
                                   memory_format, pairs_that_fit, set_attention)
from diffinject.core.errors import ConfigError
from diffinject.core.numerics import resolve_precision
from diffinject.core.vocabulary import NOISE, PRECISIONS
from diffinject.nets.diffusion.hspace import Encoded, HSpace, decode, encode
from diffinject.nets.diffusion.pixels import to_model_pixels, to_uint8
from diffinject.nets.diffusion.schedule import linear_alphas_cumprod
from diffinject.nets.injection import (calibrated_latent, counter_normal, ddim_step, inject_h, on_grid, region_mask,
                                       timestep_grid)

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


AUTO_CPU_PAIRS = 32   # batch_size 0 on a CPU (there is no free-memory figure to size from)
PROBE_PAIRS = 8       # pairs of the eager probe pass that measures memory per pair
PASS_SIZE_HALVINGS = 3  # compiled passes run at batch_size and its halves down to an eighth
PASS_SIZE_MULTIPLE = 8  # each rounded up to a multiple of 8 (tensor-core tiles)


def pass_sizes(batch_size: int) -> list[int]:
    """The batch sizes a compiled engine runs its U-Net passes at, ascending: batch_size and its
    halves down to an eighth, each rounded up to a multiple of PASS_SIZE_MULTIPLE but never above
    batch_size. At most four, so the compiled variants (one per size for the encoder and one for
    the decoder) stay under torch._dynamo's recompile limit (8 per function)."""
    sizes = set()
    for k in range(PASS_SIZE_HALVINGS + 1):
        half = -(-batch_size // 2**k)
        sizes.add(min(batch_size, -(-half // PASS_SIZE_MULTIPLE) * PASS_SIZE_MULTIPLE))
    return sorted(sizes)


def padded_size(rows: int, batch_size: int) -> int:
    """The pass size a compiled engine pads a chunk of `rows` pairs (1..batch_size) to: the
    smallest of pass_sizes(batch_size) that holds them."""
    if not 0 < rows <= batch_size:
        raise ValueError(f"a chunk holds 1 to batch_size ({batch_size}) pairs, got {rows}")
    return next(size for size in pass_sizes(batch_size) if size >= rows)


class InjectionEngine:
    """Batched injection for one U-Net, one set of contents and one configuration.

    The speed levers of the config (precision, compile, channels_last, attention, noise,
    batch_size 0) each switch one thing; all off (fp32, none, False, sdpa, host) is the eager
    float32 path that `reference_inject` is checked against. A lever that changes the weights'
    dtype, layout or attention works on a copy: the caller's U-Net is left as it was (apart
    from being moved to `device` and put in eval mode).
    """

    def __init__(self, unet: nn.Module, cfg: InjectionConfig, contents: np.ndarray | None,
                 device: torch.device | str = "cpu", t_edit: int | None = None, image_size: int | None = None):
        """contents: the top-K images (uint8 K x H x W x 3); None builds an inversion-only
        engine (t_edit calibration), whose `generate` is an error."""
        if contents is not None and len(contents) == 0:
            raise ConfigError("the content (top-K) set is empty; stage 3 needs at least one content image")
        self.device = torch.device(device)
        self.cfg = cfg
        self.plan = InjectionPlan.from_config(cfg, t_edit)
        self.size = image_size or unet.config.sample_size
        model_dtype = next(unet.parameters()).dtype
        self.dtype = torch.float64 if model_dtype == torch.float64 else torch.float32  # the DDIM math's dtype
        self.precision = self._resolve_precision(cfg.precision)
        check_compile("injection.compile", cfg.compile, self.device)
        check_choice("injection.noise", cfg.noise, NOISE)
        self.unet = self._prepare(unet.eval().to(self.device))
        self.input_dtype = torch.bfloat16 if self.precision == "bf16_weights" else model_dtype
        self._copy_outputs = cfg.compile == "cudagraphs"  # replays overwrite their outputs
        self._encoder = compiled(self._encode_pass, cfg.compile)
        self._decoder = compiled(self._decode_pass, cfg.compile)
        self.abar = _Schedule()
        self.batch_size = self._pairs_per_pass()
        # K x steps-needed x C x h x w
        self.content_h = self._content_trajectories(contents) if contents is not None else None

    def _resolve_precision(self, precision: str) -> str:
        check_choice("injection.precision", precision, PRECISIONS)
        return resolve_precision(precision, self.device.type == "cuda")

    def _prepare(self, unet: nn.Module) -> nn.Module:
        if self.precision != "bf16_weights" and not self.cfg.channels_last and self.cfg.attention == "sdpa":
            return unet
        unet = copy.deepcopy(unet)
        set_attention(unet, self.cfg.attention)
        if self.precision == "bf16_weights":
            unet = unet.to(torch.bfloat16)
        return unet.to(memory_format=memory_format(self.cfg.channels_last))

    # The two halves of a U-Net pass, on tensors only, so that torch.compile can take each whole.
    def _encode_pass(self, x: torch.Tensor, t: torch.Tensor):
        with bf16_autocast(self.device, self.precision == "bf16_autocast"):
            encoded = encode(self.unet, x, t)
        return encoded.h, encoded.skips, encoded.emb

    def _decode_pass(self, h: torch.Tensor, skips: tuple[torch.Tensor, ...], emb: torch.Tensor) -> torch.Tensor:
        with bf16_autocast(self.device, self.precision == "bf16_autocast"):
            return decode(self.unet, Encoded(h, skips, emb))[:, :3]

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        return y.to(self.dtype, copy=self._copy_outputs)

    @torch.no_grad()
    def _encoded(self, x: torch.Tensor, t: int) -> Encoded:
        cudagraph_step(self.cfg.compile)
        steps = torch.full((len(x),), t, device=self.device, dtype=torch.long)
        return Encoded(*self._encoder(in_layout(x.to(self.input_dtype), self.cfg.channels_last), steps))

    @torch.no_grad()
    def _eps(self, x: torch.Tensor, t: int):
        encoded = self._encoded(x, t)
        return encoded, self._out(self._decoder(encoded.h, encoded.skips, encoded.emb))

    @torch.no_grad()
    def _decode(self, encoded: Encoded, h: torch.Tensor) -> torch.Tensor:
        if self.cfg.compile != "none":  # the encoder's own strides (inductor picks a layout): no recompile
            h = torch.empty_like(encoded.h).copy_(h)
        else:
            h = in_layout(h.to(encoded.h.dtype), self.cfg.channels_last)
        return self._out(self._decoder(h, encoded.skips, encoded.emb))

    @torch.no_grad()
    def _pairs_per_pass(self) -> int:
        """cfg.batch_size, or with 0 what fits in memory_fraction of the free GPU memory, from the
        peak memory of an eager probe pass (encoder and two decoder passes) of PROBE_PAIRS pairs."""
        if self.cfg.batch_size:
            return self.cfg.batch_size
        if self.device.type != "cuda":
            return AUTO_CPU_PAIRS
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        x = torch.zeros(PROBE_PAIRS, 3, self.size, self.size, device=self.device, dtype=self.input_dtype)
        h, skips, emb = self._encode_pass(x, torch.full((PROBE_PAIRS,), 999, device=self.device))
        self._decode_pass(h, skips, emb), self._decode_pass(h.clone(), skips, emb)
        per_pair = (torch.cuda.max_memory_allocated(self.device) - base) / PROBE_PAIRS
        del h, skips, emb
        free, _ = torch.cuda.mem_get_info(self.device)
        return pairs_that_fit(free, per_pair, self.cfg.memory_fraction)

    def pass_rows(self, rows: int) -> int:
        """The rows a U-Net pass runs for a chunk of `rows` pairs: the chunk itself in eager mode;
        compiled passes have static shapes, so the next of a few bucketed sizes (padded_size)."""
        return rows if self.cfg.compile == "none" else padded_size(rows, self.batch_size)

    def _padded(self, *arrays):
        """A chunk padded to pass_rows with copies of its last pair (each pair's result is its
        own, so the copies change nothing and are dropped)."""
        n = len(arrays[0])
        extra = self.pass_rows(n) - n
        if extra == 0:
            return arrays
        return tuple(np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) for a in arrays)

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
                kept[i] = encoded.h.to(self.dtype, copy=True)
            x = ddim_step(x, eps, eps, self.abar[grid[i]], self.abar[grid[i + 1]])
        if len(grid) - 1 in wanted:
            kept[len(grid) - 1] = self._encoded(x, grid[-1]).h.to(self.dtype, copy=True)
        return x, kept

    def _content_trajectories(self, contents: np.ndarray) -> torch.Tensor:
        needed = sorted(set(self.plan.content_step.values()))
        self._slot = {step: j for j, step in enumerate(needed)}
        chunks = []
        for start in range(0, len(contents), self.batch_size):
            part = contents[start:start + self.batch_size]
            (padded,) = self._padded(part)
            x = to_model_pixels(padded, self.size, self.device, self.dtype)
            _, kept = self.invert(x, needed)
            if needed:
                chunks.append(torch.stack([kept[s][:len(part)] for s in needed], dim=1))
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
        for start in range(0, len(originals), self.batch_size):
            part = slice(start, start + self.batch_size)
            n = len(originals[part])
            images, index, pair_seeds = self._padded(originals[part], np.asarray(content_index[part]),
                                                     np.asarray(seeds[part]))
            x_T, _ = self.invert(to_model_pixels(images, self.size, self.device, self.dtype))
            out.append(self._generate(x_T, index, pair_seeds)[:n].cpu())
        return torch.cat(out) if out else torch.zeros(0, 3, self.size, self.size)

    def _noise(self, seeds: np.ndarray, generators: list[torch.Generator] | None, t: int,
               like: torch.Tensor) -> torch.Tensor:
        """The boosting noise of the step from t: per pair, independent of the batch."""
        if generators is not None:
            noise = torch.stack([torch.randn(like.shape[1:], generator=g) for g in generators])
            return noise.to(self.device, like.dtype)
        return counter_normal(torch.as_tensor(seeds, device=self.device, dtype=torch.int64), t,
                              tuple(like.shape[1:])).to(like.dtype)

    def _generate(self, x: torch.Tensor, content_index: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
        plan, grid = self.plan, self.plan.generation_grid
        generators = ([torch.Generator().manual_seed(int(s)) for s in seeds] if self.cfg.noise == "host" else None)
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
            noise = self._noise(seeds, generators, t, x) if i in plan.boost_steps else None
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
