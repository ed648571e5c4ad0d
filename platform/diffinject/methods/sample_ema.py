"""Per-sample loss EMAs with class-wise max normalisation (LfF, DisEnt), DDP-consistent."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def gather_from_ranks(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Concatenate each 1-D tensor over all ranks (shards may differ in length by a few)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors)
    world = dist.get_world_size()
    n = torch.tensor([len(tensors[0])], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    out = []
    for tensor in tensors:
        padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
        padded[:len(tensor)] = tensor
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([part[:int(size.item())] for part, size in zip(parts, sizes)]))
    return out


class SampleLossEMA:
    """EMA of each training sample's loss, indexed by its row in the training split.

    update: ema[i] = alpha ema[i] + (1 - alpha) loss, except at a sample's first sighting,
    where ema[i] = loss. Under DDP every rank applies the updates of every rank, so the
    state is the same everywhere (and a checkpoint from rank 0 is the whole state).
    """

    def __init__(self, labels: np.ndarray, num_classes: int, alpha: float):
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.num_classes = num_classes
        self.alpha = alpha
        self.values = torch.zeros(len(labels), dtype=torch.float64)
        self.seen = torch.zeros(len(labels), dtype=torch.bool)

    def update(self, index: torch.Tensor, loss: torch.Tensor) -> None:
        index, loss = gather_from_ranks(index.detach().long(), loss.detach().double())
        index, loss = index.cpu(), loss.cpu()
        old = self.values[index]
        self.values[index] = torch.where(self.seen[index], self.alpha * old + (1 - self.alpha) * loss, loss)
        self.seen[index] = True

    def normalized(self, index: torch.Tensor) -> torch.Tensor:
        """ema[i] / max of ema over i's class (samples not yet seen count as 0)."""
        idx = index.detach().long().cpu()
        class_max = torch.zeros(self.num_classes, dtype=torch.float64).scatter_reduce(
            0, self.labels, self.values, reduce="amax", include_self=True)
        return (self.values[idx] / class_max[self.labels[idx]].clamp_min(1e-12)).to(index.device)

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Onto this EMA's own device (the CPU, where update and normalized index it), wherever
        the state's tensors are."""
        device = self.values.device
        self.values = state["values"].to(device, torch.float64, copy=True)
        self.seen = state["seen"].to(device, torch.bool, copy=True)


def relative_difficulty(loss_b: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
    """LfF's weight W = l_B / (l_B + l_D + 1e-8)."""
    return loss_b / (loss_b + loss_d + 1e-8)
