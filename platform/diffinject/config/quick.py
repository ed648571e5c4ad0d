"""The quick preset: the CPU budget of the embedded datasets, layered on the per-dataset presets
and the protocols (docs/table1.md: where each number comes from)."""
from __future__ import annotations

from dataclasses import dataclass


# The quick run's diffusion models: each model the project ships (experiment/shipped_diffusion.py) was
# trained with exactly these settings on its dataset's 1% split (`diffinject diffusion train
# --quick`, then exported to float16); `--retrain-diffusion` trains it again. One model serves
# both ratios and every seed of the quick table.
QUICK_DIFFUSION = dict(preset="small_32", lr=2e-3, batch_size=64, ema_decay=0.995, log_every=20, sample_images=30,
                       sample_steps=50, sample_eta=1.0)
# Each shipped model's length. Colored MNIST 5k: where the quick DiffInject set's useful share stops
# rising on the measured curve (docs/table1.md, "The shipped diffusion models"); Colored Digits: the
# first shipped model's 1,000 steps.
QUICK_DIFFUSION_LENGTH = {
    "colored_mnist_5k": dict(num_steps=1_000, checkpoint_every=1_000, sample_every=1_000),
    "colored_digits": dict(num_steps=1_000, checkpoint_every=200, sample_every=1_000),
}
# The main job's dataset (table1.py --quick, ablations.py --quick, the CLI's default): real MNIST digits
# (docs/data.md); Colored Digits stays for the fast tests and as an explicit choice.
QUICK_DATASET = "colored_mnist_5k"


def quick_diffusion(dataset: str) -> dict:
    """The quick preset's diffusion settings for `dataset`: trained on its own 1% split, at the
    length of its shipped model (a dataset without one: the main job's)."""
    return {**QUICK_DIFFUSION, "train_data": f"{dataset}@1",
            **QUICK_DIFFUSION_LENGTH.get(dataset, QUICK_DIFFUSION_LENGTH[QUICK_DATASET])}


# The quick run's injection (docs/table1.md, "The quick DiffInject row"): the content's h replaces h
# outright (gamma 1) down to t = 200 (fixed), with 20 + 20 DDIM steps to fit the budget; every step
# injects and boosts (a 50-step grid would leave almost none of 20 steps).
QUICK_INJECTION = dict(mode="global", gamma=1.0, t_edit=200, calibrate_t_edit=False, inversion_steps=20,
                       generation_steps=20, inject_grid=0, boost_grid=0, batch_size=60)
# Per embedded dataset, what its quick injection changes of QUICK_INJECTION and of the protocol's
# labelling, each chosen by its shipped model's useful share alone (docs/table1.md):
# - Colored Digits labels with the content's label (its model shows the content's digit in 45% of
#   the images, the original's in 23%);
# - Colored MNIST 5k keeps the release's labelling (the original's) and injects into the masked
#   region of h only (the paper's CMNIST mode, App. B): useful share 0.201 +- 0.013 over seeds 0-2,
#   against 0.166 +- 0.006 for global injection.
QUICK_INJECTION_BY_DATASET = {"colored_digits": {"label_from": "content"}, "colored_mnist_5k": {"mode": "local"}}


# The quick run's generative baselines (docs/table1.md, "The quick A² and AmpliBias rows"): the
# same stages at CPU scale, every EMA horizon and learning-rate ramp shorter than its run. The main
# job starts both from generators the project ships (QUICK_GANS_BY_DATASET), each at the length
# where its set's useful share stops rising.
# A²: the source StyleGAN2 (its losses, lazy R1 and path length, style mixing, EMA half-life 10k
# images as rosinality's train.py) at 32 px with the quick_32 widths, 1,000 steps of batch 16
# (16k images); the CDC adaptation for 100 steps of batch 4, its EMA half-life the reference's
# 1/16 of the run (312.5 of 5,000 steps); each original projected for 50 steps (the lr warm-up
# and tail are fractions of the run: 2.5 and 12.5 steps).
# AmpliBias: each class's FastGAN (quick_32: 32 px, nz 64, ngf = ndf = 4) continued from its
# shipped starting point for 25 steps of batch 8 on the stage-1 top-10 of its class (the
# DiffInject rows' set, not AmpliBias's top-100), EMA half-life 5 steps (0.87; of 0.14, 0.87 and
# 0.946 per step, the most useful set on the step-1,000 starting points: docs/table1.md).
# Both measure images with the mean squared error where the papers use LPIPS-VGG (its ImageNet
# weights need the network).
QUICK_STYLEGAN2 = dict(preset="quick_32", batch_size=16, num_steps=1_000, adapt_steps=100, adapt_batch_size=4,
                       adapt_ema_half_life=100 / 16, project_steps=50, project_batch_size=60, distance="mse",
                       log_every=100, checkpoint_every=1_000, sample_every=1_000, sample_images=30)
QUICK_FASTGAN = dict(preset="quick_32", k_per_class=10, batch_size=8, num_steps=25, ema_decay=0.87,
                     distance="mse", log_every=5, checkpoint_every=25, sample_every=25, sample_images=10)
# `diffinject gan train --job fastgan_init --quick`: the per-class starting points the quick AmpliBias
# row continues (each class's FastGAN on all of its training images; batch 8 and lr 2e-4 as
# FastGAN-pytorch train.py; EMA 0.95 per step, a half-life of 13.5 steps: 1/72 of the run, the
# reference's 0.999 over 50,000 steps)
QUICK_FASTGAN_INIT = dict(num_steps=1_000, ema_decay=0.95, checkpoint_every=250, sample_every=250, log_every=50)
# The embedded datasets with shipped starting generators (experiment/shipped_gans.py): their quick rows start from them.
QUICK_GANS_BY_DATASET = {"colored_mnist_5k": {"stylegan2.source_checkpoint": "shipped",
                                              "fastgan.init_checkpoint": "shipped"}}


@dataclass(frozen=True)
class QuickLengths:
    """The quick preset's training lengths on one embedded dataset (docs/table1.md, "Lengths")."""
    steps: int                # classifier.num_steps: Vanilla, LfF + BE, every stage 4 (and DisEnt without its own)
    lff_steps: int            # LfF's own length where the baseline protocol gives one (baselines.lff_num_steps)
    committee_steps: int      # each BiasEnsemble committee model's
    committee_eval_every: int
    eval_every: int           # evaluations: as often as the learning curves need, no more
    disent_steps: int = 0     # DisEnt's and DisEnt + BE's own length (baselines.disent_num_steps); 0: steps
    # DisEnt's curriculum start is scaled by its length over the reference length; its lr decay too, or
    # (False) it stays the reference's distance after the curriculum
    disent_decay_scaled: bool = True
    checkpoint_every: int = 500
    log_every: int = 10


# Colored Digits: 1/50 of every reference length (LfF 23.5k -> 470, DisEnt's curriculum and decay 10k ->
# 200, which follow the classifier's length in the references; the committee 200 steps, evaluated every
# 100), the budget of its 20-minute table.
# Colored MNIST 5k: from its learning curves, cut to the 30-minute budget (docs/table1.md, "Lengths"):
# Vanilla, LfF + BE and the stage-4 rows 2,500, on the first plateau of Vanilla's and LfF + BE's curves
# (both creep up again after 15,000 steps); LfF 5,000, within a point of where its curve flattens (6,000);
# DisEnt 10,000 with its curriculum from step 2,000 (10,000 x 10,000 / 50,000) and no lr decay within the
# run (the references decay 10,000 steps after the curriculum; decayed at the scaled 2,000 its curve stays
# at Vanilla's level); the committee 250 steps, evaluated every 125 (the references' 1,000 / 500, scaled).
QUICK_LENGTHS = {
    "colored_digits": QuickLengths(steps=1_000, lff_steps=470, committee_steps=200, committee_eval_every=100,
                                   eval_every=50),
    "colored_mnist_5k": QuickLengths(steps=2_500, lff_steps=5_000, committee_steps=250, committee_eval_every=125,
                                     eval_every=500, disent_steps=10_000, disent_decay_scaled=False),
}


def quick_lengths(dataset: str) -> QuickLengths:
    """The quick lengths of `dataset` (one without its own: the main job's dataset's)."""
    return QUICK_LENGTHS.get(dataset, QUICK_LENGTHS[QUICK_DATASET])

