"""The synthetic-set quality curve against the diffusion model's training length."""
import numpy as np
import pytest

from diffinject.config.builder import experiment_config
from diffinject.config.overrides import apply_overrides
from diffinject.config.schema import DiffusionConfig
from diffinject.data.parquet import load_split
from diffinject.experiment.checkpoint_quality import (SHARES, QualityPoint, curve_figure, measure, stops_rising,
                                                      summary, write_csv)
from diffinject.stages.stage2 import train_diffusion
from diffinject.training.loop import TrainContext
from test_cells import TINY


@pytest.fixture
def tiny_checkpoints(digits_parquet, tmp_path):
    """Two tiny_32 checkpoints of one training (steps 2 and 4), as keep_checkpoints logs them."""
    kept = {}
    ctx = TrainContext(log_artifact=lambda name, payload, folder: kept.__setitem__(f"{folder}/{name}", payload))
    cfg = DiffusionConfig(preset="tiny_32", batch_size=8, num_steps=4, checkpoint_every=2, sample_every=0,
                          hflip=False, keep_checkpoints=True)
    train_diffusion(cfg, load_split(digits_parquet, "train").images[:64], ctx, seed=0)
    paths = []
    for name in ("step_0000002.pt", "step_0000004.pt"):
        (tmp_path / name).write_bytes(kept[f"checkpoints/{name}"])
        paths.append(tmp_path / name)
    return paths


def test_each_checkpoint_and_seed_gets_its_set_s_quality_report(ray_session, digits_root, tmp_path, mlflow_uri,
                                                                 tiny_checkpoints):
    cfg = experiment_config("colored_digits", "1", quick=True)
    cfg.data.data_root, cfg.data.cache_root = str(digits_root / "data"), str(digits_root / "cache")
    cfg.run.storage_path, cfg.run.experiment = str(tmp_path / "ray_results"), "curve"
    cfg = apply_overrides(cfg, TINY)
    seen = []
    points = measure(cfg, tiny_checkpoints, [0, 1], tmp_path / "artifacts", done=seen.append)
    assert [(p.step, p.seed) for p in points] == [(2, 0), (2, 1), (4, 0), (4, 1)] and seen == points
    assert all(0.0 <= p.shares[s] <= 1.0 for p in points for s in SHARES)
    # the quick preset labels with the content's: its useful share is the content labelling's
    assert all(p.shares["useful_rate"] == p.shares["useful_as_content"] for p in points)
    again = measure(cfg, tiny_checkpoints[:1], [1], tmp_path / "artifacts")  # from the cache: the same report
    assert again[0].shares == points[1].shares


def test_the_summary_is_mean_and_std_over_seeds_per_step(tmp_path):
    points = [QualityPoint("a", 1000, seed, dict(zip(SHARES, values)))
              for seed, values in enumerate([(0.2, 0.6, 0.1, 0.5, 0.1), (0.4, 0.8, 0.3, 0.7, 0.3)])]
    points.append(QualityPoint("b", 500, 0, dict(zip(SHARES, (0.1, 0.5, 0.05, 0.4, 0.05)))))
    rows = summary(points)
    assert [r["step"] for r in rows] == [500, 1000] and rows[0]["label_fidelity_std"] == 0.0
    assert rows[1]["useful_rate"] == pytest.approx(0.2)
    assert rows[1]["useful_rate_std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    lines = write_csv(points, tmp_path / "q.csv").read_text().splitlines()
    assert lines[0] == ("step,seed,label_fidelity,conflict_rate,useful_rate,useful_as_original,useful_as_content,"
                        "checkpoint")
    assert lines[1].startswith("500,0,0.1000,0.5000,0.0500,0.4000,0.0500")
    assert curve_figure(rows, tmp_path / "q.png", "t").read_bytes().startswith(b"\x89PNG")


def test_the_length_is_where_the_mean_useful_share_stops_rising_by_more_than_two_points():
    def rows(values):
        return [{"step": 1000 * (i + 1), "useful_as_original": v} for i, v in enumerate(values)]

    assert stops_rising(rows([0.2, 0.4, 0.5, 0.51, 0.515]), "useful_as_original") == 3000  # +0.015 at most after
    assert stops_rising(rows([0.2, 0.4, 0.5, 0.51, 0.525]), "useful_as_original") == 4000  # +0.025 after 3000
    assert stops_rising(rows([0.6, 0.5, 0.4]), "useful_as_original") == 1000              # falling from the start
    assert stops_rising(rows([0.1, 0.2, 0.3]), "useful_as_original") == 3000              # still rising: the last


def test_a_gan_methods_curve_reads_its_starting_generator_checkpoints(ray_session, digits_root, digits_parquet,
                                                                      tmp_path, mlflow_uri):
    """--method a2: each source StyleGAN2 checkpoint starts the A² set, read like DiffInject's."""
    import math

    from diffinject.config.schema import StyleGAN2Config
    from diffinject.stages.synthesis.stylegan2_adapt import train_source
    from test_gan_cells import TINY as GAN_TINY

    kept = {}
    ctx = TrainContext(log_artifact=lambda name, payload, folder: kept.__setitem__(f"{folder}/{name}", payload))
    source_cfg = StyleGAN2Config(preset="quick_32", batch_size=4, num_steps=2, checkpoint_every=1, sample_every=0,
                                 keep_checkpoints=True)
    train_source(source_cfg, load_split(digits_parquet, "train").images[:32], ctx, seed=0)
    files = []
    for name in ("step_0000001.pt", "step_0000002.pt"):
        (tmp_path / name).write_bytes(kept[f"checkpoints/{name}"])
        files.append(tmp_path / name)
    cfg = experiment_config("colored_digits", "1", quick=True)
    cfg.data.data_root, cfg.data.cache_root = str(digits_root / "data"), str(digits_root / "cache")
    cfg.run.storage_path, cfg.run.experiment = str(tmp_path / "ray_results"), "curve-a2"
    cfg = apply_overrides(cfg, GAN_TINY)
    points = measure(cfg, files, [0], tmp_path / "artifacts", method="a2")
    assert [(p.step, p.seed) for p in points] == [(1, 0), (2, 0)]
    assert all(0.0 <= p.shares[s] <= 1.0 for p in points for s in ("label_fidelity", "conflict_rate", "useful_rate"))
    assert all(math.isnan(p.shares["useful_as_original"]) and math.isnan(p.shares["useful_as_content"])
               for p in points)  # one labelling: the original's
    assert curve_figure(summary(points), tmp_path / "a2.png", "t", "source step").read_bytes().startswith(b"\x89PNG")
