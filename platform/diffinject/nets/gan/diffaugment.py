"""DiffAugment (Zhao et al., 2020): differentiable augmentations applied to both real and fake
images before the discriminator; FastGAN (and AmpliBias) use the 'color,translation' policy."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=generator).to(device=device, dtype=dtype)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness (+ U(-0.5, 0.5)), saturation (x U(0, 2) around the pixel's channel mean)
    and contrast (x U(0.5, 1.5) around the image mean), per image."""
    n = x.shape[0]
    x = x + (_rand(n, generator, x.device, x.dtype) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, generator, x.device, x.dtype) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(n, generator, x.device, x.dtype) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size in both directions, filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(-sw, sw + 1, (n,), generator=generator).to(x.device)
    padded = F.pad(x, (sw, sw, sh, sh))
    rows = (torch.arange(h, device=x.device)[None, :] - dy[:, None] + sh)  # n x h indices into the padded rows
    cols = (torch.arange(w, device=x.device)[None, :] - dx[:, None] + sw)
    out = padded.gather(2, rows[:, None, :, None].expand(n, x.shape[1], h, w + 2 * sw))
    return out.gather(3, cols[:, None, None, :].expand(n, x.shape[1], h, w))


POLICIES = {"color": color, "translation": translation}


def diff_augment(x: torch.Tensor, policy: str = "color,translation", generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Apply the comma-separated `policy` in order (same random draws for a same generator state)."""
    for name in filter(None, (p.strip() for p in policy.split(","))):
        if name not in POLICIES:
            raise ValueError(f"unknown DiffAugment policy {name!r}; expected one of {', '.join(POLICIES)}")
        x = POLICIES[name](x, generator=generator)
    return x
