"""BiasEnsemble's detector: a committee of briefly trained GCE models votes which training
samples are bias-aligned (Lee et al., 2022). Used by `lff_be` and `disent_be`."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from diffinject.methods.gce import BiasGCE
from diffinject.methods.train import build_and_fit
from diffinject.training.loop import Preprocess, TrainContext, TrainData


def committee_vote(probabilities: np.ndarray, tau: float, agreement: int) -> np.ndarray:
    """probabilities: M x N values of p(y_i | x_i) from M models. Pseudo-aligned when at least
    `agreement` models exceed tau."""
    return (np.asarray(probabilities) > tau).sum(axis=0) >= agreement


@torch.no_grad()
def true_label_probabilities(net, data: TrainData, prep: Preprocess, batch_size: int,
                             generator: torch.Generator | None = None) -> np.ndarray:
    """p(y_i | x_i) over the training rows; with a `generator`, of images with the training
    augmentation (as BE scores them), else of the images as they are."""
    net.eval()
    out = []
    for start in range(0, len(data.train), batch_size):
        x = prep(data.train.images[start:start + batch_size], train=generator is not None, generator=generator)
        y = torch.from_numpy(data.train.labels[start:start + batch_size]).to(prep.device)
        out.append(torch.softmax(net(x), dim=1).gather(1, y[:, None])[:, 0].cpu())
    return torch.cat(out).numpy()


def committee_config(clf_cfg, options: dict):
    """A committee model's training: `committee_steps` GCE steps, keeping either its best-on-valid
    evaluation (after steps 1, 1 + committee_eval_every, ...: BE's schedule) or its last weights."""
    if options["committee_select"] == "valid":
        return dataclasses.replace(clf_cfg, num_steps=options["committee_steps"], select="valid",
                                   eval_every=options["committee_eval_every"]), 1
    return dataclasses.replace(clf_cfg, num_steps=options["committee_steps"], select="last",
                               eval_every=options["committee_steps"]), 0


def detect_aligned(clf_cfg, options: dict, data: TrainData, ctx: TrainContext, seed: int) -> tuple[np.ndarray, dict]:
    """Train the committee (GCE, seeds seed*100+m; committee_config) and vote.

    Returns the pseudo-aligned mask over the training rows and the detector's precision and
    recall against the true alignment flags (for logging only: they train nothing).
    """
    quiet = TrainContext(rank=ctx.rank, world_size=ctx.world_size, device=ctx.device)
    cfg, eval_offset = committee_config(clf_cfg, options)
    probabilities, kept_steps = [], []
    for m in range(options["num_bias_models"]):
        result = build_and_fit(BiasGCE, cfg, data, quiet, seed * 100 + m, {"q": options["q"]}, eval_offset=eval_offset)
        net = result.method.nets["model"]
        generator = torch.Generator().manual_seed(seed * 100 + m) if options["committee_augment"] else None
        probabilities.append(true_label_probabilities(getattr(net, "module", net), data,
                                                      Preprocess(cfg, ctx.device), cfg.batch_size * 2, generator))
        kept_steps.append(result.metrics["selected_step"])
    mask = committee_vote(np.stack(probabilities), options["tau"], options["agreement"])
    aligned = data.train.aligned
    hits = float((mask & aligned).sum())
    stats = {"be_pseudo_aligned": float(mask.sum()),
             "be_precision": hits / max(float(mask.sum()), 1.0),
             "be_recall": hits / max(float(aligned.sum()), 1.0),
             "be_kept_step_mean": float(np.mean(kept_steps))}
    return mask, stats


class BiasEnsembleMixin:
    """Makes a method's bias branch learn with plain CE on the committee's pseudo-aligned
    samples only (put it before the method in the bases: `class LfFBE(BiasEnsembleMixin, LfF)`).
    The mask is part of the checkpoint, so a resumed run does not retrain the committee."""

    pseudo_aligned: torch.Tensor | None = None

    def prepare(self, data, ctx, seed: int) -> None:
        super().prepare(data, ctx, seed)
        if ctx.resume_state is None:
            mask, stats = detect_aligned(self.cfg, self.options, data, ctx, seed)
            self.pseudo_aligned = torch.as_tensor(mask)
            ctx.log(0, stats)

    def biased_loss(self, logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """CE on the batch's pseudo-aligned samples, zero elsewhere, rescaled to the batch."""
        keep = self.pseudo_aligned[index.cpu()].to(logits.device).float()
        return F.cross_entropy(logits, y, reduction="none") * keep * (len(keep) / keep.sum().clamp_min(1.0))

    def extra_state(self) -> dict:
        return {**super().extra_state(), "pseudo_aligned": self.pseudo_aligned.clone()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.pseudo_aligned = state["pseudo_aligned"].to("cpu", copy=True)  # indexed on the CPU (biased_loss)
