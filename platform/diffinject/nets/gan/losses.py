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
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from diffinject.nets.gan.fastgan import quadrant


def logistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(x)) + softplus(D(G(z))), averaged."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def logistic_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss softplus(-D(G(z)))."""
    return F.softplus(-fake_logits).mean()


HINGE_MARGIN_LOW, HINGE_MARGIN_SPREAD = 0.8, 0.2  # FastGAN-pytorch train.py: margins uniform in [0.8, 1)


def _hinge_margins(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    draws = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
    return (HINGE_MARGIN_LOW + HINGE_MARGIN_SPREAD * draws).to(device=logits.device, dtype=logits.dtype)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                 generator: torch.Generator | None) -> torch.Tensor:
    """FastGAN's discriminator hinge loss with random margins, as FastGAN-pytorch train.py's
    train_d: mean relu(m - D(x)) over the real logits + mean relu(m + D(G(z))) over the fake
    ones, a margin m ~ U[0.8, 1) for every logit (the paper's Eq. 2 writes the margin 1). The
    margins are drawn on the CPU from `generator` (None: torch's global generator), the reals'
    first, so a seeded step draws the same ones."""
    real_margins = _hinge_margins(real_logits, generator)
    fake_margins = _hinge_margins(fake_logits, generator)
    return F.relu(real_margins - real_logits).mean() + F.relu(fake_margins + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's hinge loss -D(G(z)), averaged (FastGAN-pytorch train.py: -pred_g.mean())."""
    return -fake_logits.mean()


def reconstruction_loss(decoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor], real: torch.Tensor, part: int,
                        distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """FastGAN's self-supervision of the discriminator (Liu et al., 2021, Sec. 3.2, Eq. 1:
    L_recons = E ||G(f) - T(x)||, with a perceptual distance), added to its hinge loss (Eq. 2).
    `decoded` = the decoders' (whole image, small image, quadrant `part`) reconstructions of the
    real batch `real` (N x 3 x H x W, as the discriminator saw it); the targets are the image,
    the image again (the small image is its half-size resize) and its quadrant, each resized to
    its decoder's size. `distance(a, b)` gives per-sample distances; the loss sums them over the
    batch, and over the three decoders, as FastGAN-pytorch train.py does
    (percept(rec_all, ...).sum() + percept(rec_small, ...).sum() + percept(rec_part, ...).sum()):
    N times a per-sample mean."""
    targets = (real, real, quadrant(real, part))
    total = real.new_zeros(())
    for output, target in zip(decoded, targets):
        if target.shape[-2:] != output.shape[-2:]:
            target = F.interpolate(target, size=output.shape[-2:], mode="bilinear", align_corners=False,
                                   antialias=True)
        total = total + distance(output.float(), target.float()).sum()
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


def cdc_loss(source_features: Sequence[torch.Tensor], target_features: Sequence[torch.Tensor],
             layers: Sequence[int]) -> torch.Tensor:
    """The cross-domain correspondence loss (Ojha et al., 2021) for N >= 3 latents, as
    few-shot-gan-adaptation train.py computes it: sample i reads the features of generator layer
    layers[i] (source_features / target_features: one N x ... tensor per layer, the same latents
    under the source and the adapted generator); its cosine similarities to the other N - 1
    samples at that layer, softmaxed, give P_src(i) and P_tgt(i); the loss is the reference's
    nn.KLDivLoss()(log P_tgt, P_src) with its mean reduction, sum_i KL(P_src(i) || P_tgt(i)) /
    (N (N - 1)). The source side carries no gradient; multiply by the reference's kl_wt (1000)."""
    n = len(layers)
    if n < 3:
        raise ValueError(f"cdc_loss needs a batch of at least 3 latents, got {n}")

    def similarities(features: Sequence[torch.Tensor]) -> torch.Tensor:  # N x (N - 1)
        rows = []
        for i, layer in enumerate(layers):
            flat = F.normalize(features[layer].flatten(1).float(), dim=1)
            sim = flat @ flat[i]
            rows.append(torch.cat([sim[:i], sim[i + 1:]]))
        return torch.stack(rows)

    with torch.no_grad():
        p_source = F.softmax(similarities(source_features), dim=1)
    log_p_target = F.log_softmax(similarities(target_features), dim=1)
    return (p_source * (p_source.log() - log_p_target)).sum() / (n * (n - 1))
