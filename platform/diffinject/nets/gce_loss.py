"""Loss functions."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Per-sample generalized cross-entropy, as the reference code computes it.

    `CE(f(x), y) * q * p_y(x)^q` with p_y detached: its gradient is `q * p_y^q * dCE`,
    i.e. q times the gradient of (1 - p_y^q) / q (paper Eq. 1-2), which up-weights the
    easy, bias-aligned samples so the model becomes biased.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"GCE q must be in (0, 1], got {q}")
    ce = F.cross_entropy(logits, targets, reduction="none")
    p_y = torch.softmax(logits.detach().float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    return ce * q * p_y.pow(q).to(ce.dtype)
