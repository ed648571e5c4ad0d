"""LPIPS (Zhang et al., 2018) with an AlexNet or VGG16 trunk, and the per-sample image distances
the generators' stages use ("lpips_vgg", "mse").

LPIPS (lpips 0.1.4) has two parts: the linear layers, shipped inside the lpips package
(lpips/weights/v0.1/{alex,vgg}.pth), and the trunk, torchvision's ImageNet weights
(AlexNet_Weights / VGG16_Weights.IMAGENET1K_V1), which live in the torch hub cache
(`torch.hub.get_dir()/checkpoints/`). `load_lpips` never lets lpips fetch the trunk itself: it
builds LPIPS with a random trunk and loads the trunk's weights from the cache, downloading them
only when asked to.

Small images: AlexNet's trunk needs at least 32 px (a 28 px input fails at the second max pool)
and at 32 px its last three layers are 1 x 1, so images are upsampled (bilinear, both images
alike) to 64 px before an AlexNet LPIPS (3 x 3 maps at the deepest layers); VGG16's deepest LPIPS
layer is 2 x 2 at 32 px, so its inputs are brought to at least 32 px.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from diffinject.core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# LPIPS's trunk slices keep torchvision's `features` indices as module names
# (alex: slice1 = features[0:2], ..., slice5 = [10:12]; vgg: slice1 = [0:4], ..., slice5 = [23:30]).
_SLICES = {
    "alex": ((1, range(0, 2)), (2, range(2, 5)), (3, range(5, 8)), (4, range(8, 10)), (5, range(10, 12))),
    "vgg": ((1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30))),
}
MIN_SIZE = {"alex": 64, "vgg": 32}
LPIPS_MIN_SIZE = MIN_SIZE["alex"]
_TRUNKS = {"alex": ("AlexNet", "AlexNet_Weights"), "vgg": ("VGG16", "VGG16_Weights")}


def _check_net(net: str) -> None:
    if net not in _TRUNKS:
        raise ConfigError(f"unknown LPIPS network {net!r}; expected one of {', '.join(_TRUNKS)}")


def _weights(net: str):
    import torchvision.models

    return getattr(torchvision.models, _TRUNKS[net][1]).IMAGENET1K_V1


def backbone_checkpoint(net: str = "alex") -> tuple[Path, str]:
    """(path in the torch hub cache, URL) of torchvision's ImageNet weights of the LPIPS trunk."""
    _check_net(net)
    url = _weights(net).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def require_backbone(net: str, who: str, otherwise: str) -> None:
    """CheckpointError naming the missing file, where to put it and where to fetch it, unless the
    `net` trunk's ImageNet weights are in the torch hub cache (`who` needs them; `otherwise` is
    the way to do without)."""
    path, url = backbone_checkpoint(net)
    if not path.is_file():
        raise CheckpointError(f"{who} needs torchvision's {_TRUNKS[net][0]} ImageNet weights, file {path.name}, "
                              f"which is missing: put it at {path} (the torch hub cache; set TORCH_HOME to move "
                              f"it), fetching it on a machine with network from {url}, or {otherwise}")


def load_lpips(random_backbone: bool = False, allow_download: bool = False,
               device: torch.device | str = "cpu", net: str = "alex") -> torch.nn.Module:
    """LPIPS with the `net` trunk ("alex" | "vgg"), eval mode, no gradients (to its parameters;
    gradients still flow to the images).

    The trunk's weights come from the torch hub cache; when the file is missing this raises
    CheckpointError unless `allow_download` (then torchvision downloads it, hash-checked).
    `random_backbone=True` keeps a randomly initialised trunk (for tests only: its
    distances mean nothing) and touches neither the cache nor the network; the model then
    carries `random_backbone = True`, which the calibration logs and writes on its plot.
    """
    import lpips

    _check_net(net)
    # pnet_rand=True: lpips builds torchvision's trunk without weights (no download);
    # pretrained=True still loads the linear layers shipped with lpips.
    with warnings.catch_warnings():  # lpips calls torchvision's deprecated constructors (pretrained=False)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    name = _TRUNKS[net][0]
    if random_backbone:
        log.warning("LPIPS built with a randomly initialised %s backbone (tests only): "
                    "its distances are not meaningful", name)
    else:
        path, url = backbone_checkpoint(net)
        if not allow_download:
            require_backbone(net, "LPIPS", "allow the download")
        try:
            state = _weights(net).get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # unreadable file or failed download
            raise CheckpointError(f"cannot load the {name} weights {path} (from {url}): {exc}") from exc
        _load_trunk(model.net, state, path, net)
    model.random_backbone = random_backbone
    model.min_size = MIN_SIZE[net]
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _load_trunk(trunk: torch.nn.Module, state: dict, path: Path, net: str) -> None:
    mapped = {}
    for k, indices in _SLICES[net]:
        for i in indices:
            for name in ("weight", "bias"):
                key = f"features.{i}.{name}"
                if key in state:
                    mapped[f"slice{k}.{i}.{name}"] = state[key]
    try:
        trunk.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not hold torchvision's {_TRUNKS[net][0]} features: {exc}") from exc


def lpips_input(x: torch.Tensor, device: torch.device, min_size: int = LPIPS_MIN_SIZE) -> torch.Tensor:
    """N x C x H x W in [-1, 1] -> float32 N x 3 x H' x W' on `device`, at least `min_size` px."""
    x = x.to(device=device, dtype=torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if min(x.shape[-2:]) < min_size:
        h, w = x.shape[-2:]
        scale = min_size / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
    return x


DISTANCES = ("lpips_vgg", "mse")


def distance_fn(name: str, random_backbone: bool = False, device: torch.device | str = "cpu"
                ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A differentiable per-sample distance d(a, b) -> N between N x 3 x H x W images in [-1, 1]:
    "lpips_vgg" (LPIPS with the VGG16 trunk) or "mse" (the mean squared error of each sample)."""
    if name == "mse":
        return lambda a, b: (a - b).pow(2).flatten(1).mean(1)
    if name == "lpips_vgg":
        model = load_lpips(random_backbone=random_backbone, device=device, net="vgg")
        lp_device = next(model.parameters()).device

        def lpips_vgg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return model(lpips_input(a, lp_device, model.min_size), lpips_input(b, lp_device, model.min_size)).flatten()

        return lpips_vgg
    raise ConfigError(f"unknown image distance {name!r}; expected one of {', '.join(DISTANCES)}")
