"""Vanilla: plain cross-entropy on the (biased) training set."""
from __future__ import annotations

import torch.nn.functional as F

from diffinject.methods.base import Method


class Vanilla(Method):
    name = "vanilla"

    def setup(self) -> None:
        self.nets["model"] = self.new_classifier()
        self.optimizers["model"] = self.adam(self.nets["model"])

    def update(self, x, y, index):
        loss = F.cross_entropy(self.nets["model"](x), y)
        return {"loss": self.optimize(self.optimizers["model"], loss)}
