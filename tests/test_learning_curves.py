"""Learning curves: every evaluation of a training, and the flattening criterion."""
import numpy as np
import pytest

from diffinject.experiment.learning_curves import (CURVE_METRICS, CurvePoint, family_figure, flattening_step,
                                                   learning_curve, mean_curve, write_csv)


def test_flattening_is_the_first_step_the_curve_never_rises_a_point_above():
    steps = np.array([500, 1000, 1500, 2000, 2500])
    assert flattening_step(steps, np.array([0.20, 0.30, 0.345, 0.35, 0.34])) == 1500  # +0.5 point later at most
    assert flattening_step(steps, np.array([0.20, 0.30, 0.33, 0.36, 0.365])) == 2000  # 3 points still to come at 1500
    assert flattening_step(steps, np.array([0.40, 0.30, 0.30, 0.30, 0.30])) == 500    # a fall is flat
    assert flattening_step(steps, np.array([0.1, 0.2, 0.3, 0.4, 0.5])) == 2500         # still rising: the last


def test_the_mean_curve_keeps_the_steps_every_seed_reached():
    def point(seed, step, valid):
        return CurvePoint("lff", seed, step, {m: valid for m in CURVE_METRICS})

    points = [point(0, 10, 0.2), point(1, 10, 0.4), point(0, 20, 0.5)]
    steps, mean, std = mean_curve(points, "lff", "valid_acc")
    assert steps.tolist() == [10] and mean == pytest.approx([0.3]) and std == pytest.approx([0.1])


def test_a_curve_holds_each_evaluation_of_the_cell_s_training(quick_cfg, tmp_path):
    quick_cfg.classifier.num_steps, quick_cfg.classifier.eval_every = 20, 5
    points = learning_curve(quick_cfg, "vanilla", seed=0)
    assert [p.step for p in points] == [5, 10, 15, 20]
    assert all(0.0 <= p.metrics[m] <= 1.0 for p in points for m in CURVE_METRICS)
    assert [p.metrics for p in learning_curve(quick_cfg, "vanilla", seed=0)] == [p.metrics for p in points]
    assert write_csv(points, tmp_path / "c.csv").read_text().splitlines()[0] == (
        "method,seed,step," + ",".join(CURVE_METRICS))
    assert family_figure(points, "vanilla", tmp_path / "v.png", "t").read_bytes().startswith(b"\x89PNG")
