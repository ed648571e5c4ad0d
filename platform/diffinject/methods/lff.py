"""LfF (Nam et al., 2020): a GCE-trained biased model f_B and a debiased model f_D trained
with CE weighted by the relative difficulty W = l_B / (l_B + l_D); f_D is evaluated.
`lff_be`: f_B is instead trained with plain CE on BiasEnsemble's pseudo-aligned samples only."""
from __future__ import annotations

import dataclasses
import torch
import torch.nn.functional as F

from diffinject.config.schema import ClassifierConfig, ExperimentConfig
from diffinject.methods.base import Method
from diffinject.methods.bias_ensemble import BiasEnsembleMixin
from diffinject.methods.sample_ema import SampleLossEMA, relative_difficulty
from diffinject.nets.gce_loss import gce_loss


class LfF(Method):
    name = "lff"

    @classmethod
    def classifier_config(cls, cfg: ExperimentConfig) -> ClassifierConfig:
        """LfF's own lr and length where the baseline protocol gives them (non-zero: the reference
        protocol, from alinlab/LfF config.py)."""
        b = cfg.baselines
        if b.lff_lr or b.lff_num_steps:
            return dataclasses.replace(cfg.classifier, lr=b.lff_lr or cfg.classifier.lr,
                                       num_steps=b.lff_num_steps or cfg.classifier.num_steps)
        return cfg.classifier

    def setup(self) -> None:
        for name in ("biased", "model"):
            self.nets[name] = self.new_classifier()
            self.optimizers[name] = self.adam(self.nets[name])

    def prepare(self, data, ctx, seed: int) -> None:
        alpha = self.options.get("ema_alpha", 0.7)
        self.ema_b = SampleLossEMA(data.train.labels, self.num_classes, alpha)
        self.ema_d = SampleLossEMA(data.train.labels, self.num_classes, alpha)

    def biased_loss(self, logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return gce_loss(logits, y, self.options.get("q", 0.7))

    def update(self, x, y, index):
        logits_b, logits_d = self.nets["biased"](x), self.nets["model"](x)
        ce_b = F.cross_entropy(logits_b, y, reduction="none").detach()
        ce_d = F.cross_entropy(logits_d, y, reduction="none").detach()
        self.ema_b.update(index, ce_b)
        self.ema_d.update(index, ce_d)
        weight = relative_difficulty(self.ema_b.normalized(index), self.ema_d.normalized(index)).float().to(x.device)
        loss_d = (F.cross_entropy(logits_d, y, reduction="none") * weight).mean()
        loss_b = self.biased_loss(logits_b, y, index).mean()
        value = self.optimize(list(self.optimizers.values()), loss_b + loss_d)
        return {"loss": value, "loss_b": float(loss_b.detach()), "loss_d": float(loss_d.detach()),
                "weight_mean": float(weight.mean())}

    def extra_state(self) -> dict:
        return {"ema_b": self.ema_b.state_dict(), "ema_d": self.ema_d.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.ema_b.load_state_dict(state["ema_b"])
        self.ema_d.load_state_dict(state["ema_d"])


class LfFBiasEnsemble(BiasEnsembleMixin, LfF):
    name = "lff_be"
    classifier_config = Method.classifier_config  # cfg.classifier: BiasEnsemble's scripts train it as Vanilla
