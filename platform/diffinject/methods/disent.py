"""DisEnt (Lee et al., 2021): intrinsic and bias encoders, linear heads on the concatenated
features with stop-gradients, LfF-style weights, and (after the curriculum step) feature
swapping: bias features permuted within the batch. The intrinsic head is evaluated.
`disent_be`: the bias branch learns with plain CE on BiasEnsemble's pseudo-aligned samples."""
from __future__ import annotations

import dataclasses
import torch
import torch.nn.functional as F
from torch import nn

from diffinject.config.schema import ClassifierConfig, ExperimentConfig
from diffinject.methods.base import Method
from diffinject.methods.bias_ensemble import BiasEnsembleMixin
from diffinject.methods.sample_ema import SampleLossEMA, relative_difficulty
from diffinject.nets.classifiers import MLP
from diffinject.nets.gce_loss import gce_loss


class Encoder(nn.Module):
    """A classifier without its last layer: the MLP's 16-d or ResNet-18's 512-d features. The
    last layer is removed, not just skipped: parameters that never get a gradient stop
    DistributedDataParallel at the first step."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        if isinstance(base, MLP):
            self.dim = base.classifier.in_features
            base.classifier = nn.Identity()
        else:
            self.dim = base.fc.in_features
            base.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, MLP):
            x = x.flatten(1)
            return self.base.feature(x / 255.0 if self.base.divide_by_255 else x)
        return self.base(x)


class DisentNet(nn.Module):
    """Both branches in one module, so one (DDP) forward computes every output of a step."""

    def __init__(self, intrinsic: Encoder, bias: Encoder, num_classes: int):
        super().__init__()
        self.enc_i, self.enc_b = intrinsic, bias
        self.head_i = nn.Linear(intrinsic.dim + bias.dim, num_classes)
        self.head_b = nn.Linear(intrinsic.dim + bias.dim, num_classes)

    def forward(self, x: torch.Tensor, perm: torch.Tensor | None = None, train: bool = False):
        z_i, z_b = self.enc_i(x), self.enc_b(x)
        if not train:
            return self.head_i(torch.cat([z_i, z_b], dim=1))
        out = {"conflict": self.head_i(torch.cat([z_i, z_b.detach()], dim=1)),
               "align": self.head_b(torch.cat([z_i.detach(), z_b], dim=1))}
        if perm is not None:  # swap: each sample gets another sample's bias features
            z_b_swap = z_b[perm]
            out["swap_conflict"] = self.head_i(torch.cat([z_i, z_b_swap.detach()], dim=1))
            out["swap_align"] = self.head_b(torch.cat([z_i.detach(), z_b_swap], dim=1))
        return out


class DisEnt(Method):
    name = "disent"

    @classmethod
    def classifier_config(cls, cfg: ExperimentConfig) -> ClassifierConfig:
        """DisEnt's (and DisEnt + BE's) own length where a quick preset gives one."""
        if cfg.baselines.disent_num_steps:
            return dataclasses.replace(cfg.classifier, num_steps=cfg.baselines.disent_num_steps)
        return cfg.classifier

    def setup(self) -> None:
        o = self.options
        self.nets["model"] = DisentNet(Encoder(self.new_classifier()), Encoder(self.new_classifier()),
                                       self.num_classes)
        self.optimizers["model"] = self.adam(self.nets["model"], lr=o.get("disent_lr") or self.cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizers["model"], step_size=max(o.get("lr_decay_step", 0), 1),
                                                         gamma=o.get("lr_gamma", 0.5))
        self.steps = 0

    def prepare(self, data, ctx, seed: int) -> None:
        alpha = self.options.get("ema_alpha", 0.7)
        self.ema_conflict = SampleLossEMA(data.train.labels, self.num_classes, alpha)
        self.ema_align = SampleLossEMA(data.train.labels, self.num_classes, alpha)

    def biased_loss(self, logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return gce_loss(logits, y, self.options.get("q", 0.7))

    def swapping(self) -> bool:
        """From the update after curriculum step (DisEnt learner.py: `step > args.curr_step`, 0-based)."""
        return self.steps > self.options.get("curr_step", 10_000)

    def update(self, x, y, index):
        o = self.options
        perm = torch.randperm(len(y), device=y.device) if self.swapping() else None
        out = self.nets["model"](x, perm=perm, train=True)
        self.ema_conflict.update(index, F.cross_entropy(out["conflict"], y, reduction="none").detach())
        self.ema_align.update(index, F.cross_entropy(out["align"], y, reduction="none").detach())
        weight = relative_difficulty(self.ema_align.normalized(index),
                                     self.ema_conflict.normalized(index)).float().to(x.device)
        loss = (F.cross_entropy(out["conflict"], y, reduction="none") * weight).mean() \
            + o.get("lambda_dis_align", 10.0) * self.biased_loss(out["align"], y, index).mean()
        if perm is not None:
            swap = (F.cross_entropy(out["swap_conflict"], y, reduction="none") * weight).mean() \
                + o.get("lambda_swap_align", 10.0) * self.biased_loss(out["swap_align"], y[perm], index[perm]).mean()
            loss = loss + o.get("lambda_swap", 1.0) * swap
        lr = self.optimizers["model"].param_groups[0]["lr"]
        value = self.optimize(self.optimizers["model"], loss)
        self.steps += 1
        if self.steps > o.get("curr_step", 10_000) and o.get("lr_decay_step", 0) > 0:
            self.scheduler.step()  # the reference's decay starts counting at the curriculum step
        return {"loss": value, "weight_mean": float(weight.mean()), "swapping": float(perm is not None),
                "lr": lr}

    def extra_state(self) -> dict:
        return {"ema_conflict": self.ema_conflict.state_dict(), "ema_align": self.ema_align.state_dict(),
                "scheduler": self.scheduler.state_dict(), "steps": self.steps}

    def load_extra_state(self, state: dict) -> None:
        self.ema_conflict.load_state_dict(state["ema_conflict"])
        self.ema_align.load_state_dict(state["ema_align"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])


class DisEntBiasEnsemble(BiasEnsembleMixin, DisEnt):
    name = "disent_be"
