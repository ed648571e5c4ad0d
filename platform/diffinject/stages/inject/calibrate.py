"""t_edit calibration (docs/design.md 2.3 item 7).

The paper defines t_edit as the t where LPIPS(x0, P_t) reaches 0.33, P_t being the x0
predicted at t along the DDIM inversion of x0, averaged over ~100 images, LPIPS with the
AlexNet backbone. `calibrate_t_edit` measures that curve on the inversion grid, picks the
first grid t whose mean reaches the threshold, and can draw the curve.

LPIPS itself (loading, its trunk's weights, the upsampling of small images) is in
diffinject.nets.perceptual.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from diffinject.config.schema import InjectionConfig
from diffinject.core.errors import ConfigError
from diffinject.nets.diffusion.pixels import to_model_pixels
from diffinject.nets.injection import predict_x0
from diffinject.nets.perceptual import lpips_input

log = logging.getLogger(__name__)

RANDOM_BACKBONE_NOTE = "random LPIPS backbone: not meaningful"


@torch.no_grad()
def lpips_curve(engine, images_uint8: np.ndarray, lpips_model: torch.nn.Module,
                batch_size: int = 32) -> tuple[list[int], np.ndarray]:
    """Mean over images of LPIPS(x0, clamp(predicted x0 at t)) at every inversion step.

    x0 is the image as the engine inverts it (to_model_pixels: [-1, 1] at the model's size);
    t runs over the inversion grid minus its last point (the steps `engine.invert` reports).
    """
    if len(images_uint8) == 0:
        raise ConfigError("t_edit calibration needs at least one image")
    lp_device = next(lpips_model.parameters()).device
    dtype = getattr(engine, "dtype", torch.float32)
    timesteps: list[int] | None = None
    sums: np.ndarray | None = None
    for start in range(0, len(images_uint8), batch_size):
        x0 = to_model_pixels(images_uint8[start:start + batch_size], engine.size, engine.device, dtype)
        ref = lpips_input(x0, lp_device)
        seen: list[int] = []
        values: list[float] = []

        def on_step(t: int, x_t: torch.Tensor, eps: torch.Tensor) -> None:
            pred = predict_x0(x_t, eps, engine.abar[t]).clamp(-1, 1)
            d = lpips_model(ref, lpips_input(pred, lp_device)).flatten()
            seen.append(int(t))
            values.append(float(d.double().sum()))

        engine.invert(x0, on_step=on_step)
        if timesteps is None:
            timesteps, sums = seen, np.asarray(values, dtype=np.float64)
        elif seen != timesteps:
            raise RuntimeError(f"the inversion reported different timesteps across batches: {seen} vs {timesteps}")
        else:
            sums += np.asarray(values, dtype=np.float64)
    return timesteps, sums / len(images_uint8)


def pick_t_edit(timesteps: list[int], curve: np.ndarray, threshold: float) -> int:
    """The first t (in increasing t) where the mean LPIPS reaches `threshold` (>=)."""
    ts, ys = np.asarray(timesteps), np.asarray(curve, dtype=np.float64)
    if ts.shape != ys.shape or ts.ndim != 1 or len(ts) == 0:
        raise ConfigError(f"t_edit calibration: need one LPIPS value per timestep, got {ts.shape} and {ys.shape}")
    if not np.isfinite(ys).all():
        raise ConfigError("t_edit calibration: the LPIPS curve has non-finite values")
    order = np.argsort(ts, kind="stable")
    ts, ys = ts[order], ys[order]
    hits = np.nonzero(ys >= threshold)[0]
    if len(hits) == 0:
        top = int(ys.argmax())
        raise ConfigError(
            f"t_edit calibration: the mean LPIPS never reaches lpips_threshold={threshold}; its maximum is "
            f"{ys[top]:.4f} (at t={int(ts[top])}): use a lower lpips_threshold (<= {ys[top]:.4f}) or a fixed "
            f"t_edit (calibrate_t_edit=False)")
    return int(ts[hits[0]])


def calibrate_t_edit(engine, images: np.ndarray, cfg: InjectionConfig, lpips_model: torch.nn.Module,
                     plot_path: str | Path | None = None) -> tuple[int, list[int], np.ndarray]:
    """Pick t_edit from the LPIPS curve of the first `cfg.calibration_images` images.

    With fewer images than that it uses all of them and logs a warning. The curve (with the
    threshold as a flat line, the chosen t in the title) goes to `plot_path` when given, also
    when the threshold is never reached (then the ConfigError follows the plot).
    """
    if cfg.calibration_images < 1:
        raise ConfigError(f"calibration_images must be >= 1, got {cfg.calibration_images}")
    if len(images) == 0:
        raise ConfigError("t_edit calibration needs at least one image, got none")
    n = min(cfg.calibration_images, len(images))
    if n < cfg.calibration_images:
        log.warning("t_edit calibration: %d images asked for (calibration_images), only %d given; using %d",
                    cfg.calibration_images, len(images), n)
    random_backbone = bool(getattr(lpips_model, "random_backbone", False))
    if random_backbone:
        log.warning("t_edit calibration with a %s", RANDOM_BACKBONE_NOTE)
    timesteps, curve = lpips_curve(engine, images[:n], lpips_model, batch_size=cfg.batch_size)
    threshold = cfg.lpips_threshold
    try:
        t_edit = pick_t_edit(timesteps, curve, threshold)
        outcome = f"t_edit = {t_edit}"
    except ConfigError:
        outcome = f"threshold never reached (max {curve.max():.3f})"
        raise
    finally:
        if plot_path is not None:
            from diffinject.core.plots import curve_plot

            note = f" [{RANDOM_BACKBONE_NOTE}]" if random_backbone else ""
            curve_plot(Path(plot_path),
                       {f"mean LPIPS(x0, predicted x0), {n} images": (list(timesteps), curve.tolist()),
                        f"threshold {threshold}": (list(timesteps), [threshold] * len(timesteps))},
                       title=f"t_edit calibration: {outcome}{note}", xlabel="t", ylabel="LPIPS")
    log.info("t_edit calibration: %s (threshold %s, %d images)", outcome, threshold, n)
    return t_edit, timesteps, curve
