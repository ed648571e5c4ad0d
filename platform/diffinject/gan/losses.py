"""GAN losses and regularisers, each a pure function of tensors.

- logistic (non-saturating) loss and lazy R1: StyleGAN2 (Karras et al., 2020), as A²'s source
  generator trains;
- path-length penalty: StyleGAN2 Sec. 3.2;
- hinge loss and the decoders' reconstruction loss: FastGAN (Liu et al., 2021), AmpliBias's
  generator;
- cross-domain correspondence (CDC): Ojha et al., 2021, A²'s few-shot adaptation.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .fastgan import quadrant


def logistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(x)) + softplus(D(G(z))), averaged."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def logistic_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss softplus(-D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """relu(1 - D(x)) + relu(1 + D(G(z))), averaged."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def reconstruction_loss(decoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor], real: torch.Tensor, part: int,
                        distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """FastGAN's self-supervision of the discriminator (Liu et al., 2021, Sec. 3.2, Eq. 1:
    L_recons = E ||G(f) - T(x)||, with a perceptual distance), added to its hinge loss (Eq. 2).
    `decoded` = the decoders' (whole image, small image, quadrant `part`) reconstructions of the
    real batch `real` (N x 3 x H x W, as the discriminator saw it); the targets are the image,
    the image again (the small image is its half-size resize) and its quadrant, each resized to
    its decoder's size. `distance(a, b)` gives per-sample distances; the sum over the three
    decoders of the batch means."""
    targets = (real, real, quadrant(real, part))
    total = real.new_zeros(())
    for output, target in zip(decoded, targets):
        if target.shape[-2:] != output.shape[-2:]:
            target = F.interpolate(target, size=output.shape[-2:], mode="bilinear", align_corners=False,
                                   antialias=True)
        total = total + distance(output.float(), target.float()).mean()
    return total


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over real images (`real_images` must require grad and have produced
    `real_logits`). Multiply by gamma / 2, and by the lazy interval when applied every N steps."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def path_length_penalty(images: torch.Tensor, w: torch.Tensor, mean_length: torch.Tensor,
                        decay: float = 0.01, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(penalty, lengths, new mean): lengths ||J_w^T y||_2 for y ~ N(0, I) / sqrt(H W), with J the
    Jacobian of `images` (N x C x H x W, made from `w`, N x [L x] D) w.r.t. w; the penalty is
    mean (length - mean_length)^2 and the running mean moves by `decay` towards their mean."""
    n, _, h, width = images.shape
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device) / math.sqrt(h * width)
    (grad,) = torch.autograd.grad((images * noise).sum(), w, create_graph=True)
    lengths = grad.pow(2).sum(-1).mean(-1).sqrt() if grad.dim() == 3 else grad.pow(2).sum(-1).sqrt()
    new_mean = mean_length + decay * (lengths.detach().mean() - mean_length)
    return (lengths - new_mean).pow(2).mean(), lengths, new_mean


def _relative_similarities(features: torch.Tensor) -> torch.Tensor:
    """N x (N - 1): for each sample, the cosine similarities to every other sample of the batch."""
    flat = F.normalize(features.flatten(1), dim=1)
    sim = flat @ flat.t()
    n = sim.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    return sim[off_diagonal].view(n, n - 1)


def cdc_loss(source_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """The cross-domain correspondence loss for one generator layer's features of the same N >= 3
    latents under the source and the adapted generator: sum over samples of
    KL(softmax(target similarities) || softmax(source similarities)). The source side carries no
    gradient; multiply by the paper's weight (1000)."""
    if source_features.shape[0] < 3:
        raise ValueError(f"cdc_loss needs a batch of at least 3 latents, got {source_features.shape[0]}")
    p_source = F.softmax(_relative_similarities(source_features.detach()), dim=1)
    log_p_target = F.log_softmax(_relative_similarities(target_features), dim=1)
    return (log_p_target.exp() * (log_p_target - p_source.log())).sum()
