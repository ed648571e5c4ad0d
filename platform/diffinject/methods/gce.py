"""The stage-1 bias classifier: trained with the generalized cross-entropy to become biased."""
from __future__ import annotations

from diffinject.methods.base import Method
from diffinject.nets.gce_loss import gce_loss


class BiasGCE(Method):
    name = "gce"
    in_table = False

    def setup(self) -> None:
        self.nets["model"] = self.new_classifier()
        self.optimizers["model"] = self.adam(self.nets["model"])

    def update(self, x, y, index):
        loss = gce_loss(self.nets["model"](x), y, self.options.get("q", 0.7)).mean()
        return {"loss": self.optimize(self.optimizers["model"], loss)}
