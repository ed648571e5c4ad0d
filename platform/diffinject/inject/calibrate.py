"""t_edit calibration (docs/design.md 2.3 item 7).

The paper defines t_edit as the t where LPIPS(x0, P_t) reaches 0.33, P_t being the x0
predicted at t along the DDIM inversion of x0, averaged over ~100 images, LPIPS with the
AlexNet backbone. `calibrate_t_edit` measures that curve on the inversion grid, picks the
first grid t whose mean reaches the threshold, and can draw the curve.

LPIPS (lpips 0.1.4, net="alex") has two parts: the linear layers, shipped inside the lpips
package (lpips/weights/v0.1/alex.pth), and the AlexNet trunk, torchvision's ImageNet
weights (AlexNet_Weights.IMAGENET1K_V1), which live in the torch hub cache
(`torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`). `load_lpips` never lets lpips
fetch the trunk itself: it builds LPIPS with a random trunk and loads the trunk's weights
from the cache, downloading them only when asked to.

Small images: AlexNet's trunk needs at least 32 px (a 28 px input fails at the second max
pool) and at 32 px its last three layers are 1 x 1. Images smaller than `LPIPS_MIN_SIZE`
(64) are therefore upsampled (bilinear, both images alike) to 64 px before LPIPS, which
gives 3 x 3 maps at the deepest layers.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import InjectionConfig
from ..errors import CheckpointError, ConfigError
from ..diffusion.pixels import to_model_pixels
from .formulas import predict_x0

log = logging.getLogger(__name__)

LPIPS_MIN_SIZE = 64
RANDOM_BACKBONE_NOTE = "random LPIPS backbone: not meaningful"

# LPIPS's alexnet slices keep torchvision's `features` indices as module names:
# slice1 = features[0:2], slice2 = [2:5], slice3 = [5:8], slice4 = [8:10], slice5 = [10:12].
_ALEX_SLICES = ((1, range(0, 2)), (2, range(2, 5)), (3, range(5, 8)), (4, range(8, 10)), (5, range(10, 12)))


def alexnet_checkpoint() -> tuple[Path, str]:
    """(path in the torch hub cache, URL) of torchvision's ImageNet AlexNet weights."""
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def load_lpips(random_backbone: bool = False, allow_download: bool = False,
               device: torch.device | str = "cpu") -> torch.nn.Module:
    """LPIPS (AlexNet), eval mode, no gradients.

    The trunk's weights come from the torch hub cache; when the file is missing this raises
    CheckpointError unless `allow_download` (then torchvision downloads it, hash-checked).
    `random_backbone=True` keeps a randomly initialised trunk (for tests only: its
    distances mean nothing) and touches neither the cache nor the network; the model then
    carries `random_backbone = True`, which the calibration logs and writes on its plot.
    """
    import lpips

    # pnet_rand=True: lpips builds torchvision's AlexNet without weights (no download);
    # pretrained=True still loads the linear layers shipped with lpips.
    with warnings.catch_warnings():  # lpips calls torchvision's deprecated alexnet(pretrained=False)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    if random_backbone:
        log.warning("LPIPS built with a randomly initialised AlexNet backbone (tests only): "
                    "its distances are not meaningful")
    else:
        path, url = alexnet_checkpoint()
        if not path.is_file() and not allow_download:
            raise CheckpointError(
                f"LPIPS needs torchvision's AlexNet ImageNet weights, file {path.name}, which is missing: "
                f"put it at {path} (the torch hub cache; set TORCH_HOME to move it), fetching it on a machine "
                f"with network from {url}, or allow the download")
        from torchvision.models import AlexNet_Weights

        try:
            state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # unreadable file or failed download
            raise CheckpointError(f"cannot load the AlexNet weights {path} (from {url}): {exc}") from exc
        _load_trunk(model.net, state, path)
    model.random_backbone = random_backbone
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _load_trunk(net: torch.nn.Module, state: dict, path: Path) -> None:
    mapped = {}
    for k, indices in _ALEX_SLICES:
        for i in indices:
            for name in ("weight", "bias"):
                key = f"features.{i}.{name}"
                if key in state:
                    mapped[f"slice{k}.{i}.{name}"] = state[key]
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not hold torchvision's AlexNet features: {exc}") from exc


def _lpips_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """N x C x H x W in [-1, 1] -> float32 N x 3 x H' x W' on `device`, at least LPIPS_MIN_SIZE px."""
    x = x.to(device=device, dtype=torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
        h, w = x.shape[-2:]
        scale = LPIPS_MIN_SIZE / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
    return x


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
        ref = _lpips_input(x0, lp_device)
        seen: list[int] = []
        values: list[float] = []

        def on_step(t: int, x_t: torch.Tensor, eps: torch.Tensor) -> None:
            pred = predict_x0(x_t, eps, engine.abar[t]).clamp(-1, 1)
            d = lpips_model(ref, _lpips_input(pred, lp_device)).flatten()
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
            from ..plots import curve_plot

            note = f" [{RANDOM_BACKBONE_NOTE}]" if random_backbone else ""
            curve_plot(Path(plot_path),
                       {f"mean LPIPS(x0, predicted x0), {n} images": (list(timesteps), curve.tolist()),
                        f"threshold {threshold}": (list(timesteps), [threshold] * len(timesteps))},
                       title=f"t_edit calibration: {outcome}{note}", xlabel="t", ylabel="LPIPS")
    log.info("t_edit calibration: %s (threshold %s, %d images)", outcome, threshold, n)
    return t_edit, timesteps, curve
