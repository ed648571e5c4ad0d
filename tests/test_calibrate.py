"""t_edit calibration (docs/design.md 2.3 item 7): LPIPS loading, the curve, the pick, the plot.

Every LPIPS here has a random AlexNet trunk (`random_backbone=True`) and TORCH_HOME points to
an empty temp dir with the downloaders patched to fail: nothing is fetched.
"""
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffinject.config.schema import InjectionConfig
from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.nets import perceptual
from diffinject.nets.diffusion import build_unet
from diffinject.stages.inject import InjectionEngine, timestep_grid
from diffinject.stages.inject import calibrate


@pytest.fixture
def lpips_rand(offline):
    model = perceptual.load_lpips(random_backbone=True)
    assert not (offline / "hub" / "checkpoints").exists()
    return model


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class FakeEngine:
    """The interface lpips_curve uses, with a known eps: x_t = sqrt(a) x0 + sqrt(1 - a) eps
    (+ noise growing with t), so predict_x0(x_t, eps, a) is x0 (exactly at t = 0, a = 1)."""

    def __init__(self, steps=6, noise=0.0, size=32):
        self.plan = SimpleNamespace(inversion_grid=timestep_grid(steps))
        self.abar = [1.0 - t / 1000 for t in range(1000)]
        self.size, self.device, self.dtype, self.noise = size, torch.device("cpu"), torch.float64, noise

    def invert(self, x, record=None, on_step=None):
        g = torch.Generator().manual_seed(0)
        grid = self.plan.inversion_grid
        for t in grid[:-1]:
            a = self.abar[t]
            eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
            x_t = math.sqrt(a) * x + math.sqrt(1 - a) * eps
            x_t = x_t + math.sqrt(a) * self.noise * t / 999 * torch.randn(x.shape, generator=g, dtype=x.dtype)
            if on_step is not None:
                on_step(t, x_t, eps)
        return x, {}


def test_pick_t_edit_first_crossing_exact_hit_and_never():
    ts = [0, 200, 400, 600, 800, 999]
    assert calibrate.pick_t_edit(ts, np.array([0.0, 0.1, 0.2, 0.4, 0.5, 0.6]), 0.33) == 600
    # the first crossing wins even if the curve dips again afterwards
    assert calibrate.pick_t_edit(ts, np.array([0.0, 0.35, 0.2, 0.4, 0.1, 0.6]), 0.33) == 200
    # an exact hit counts as reached
    assert calibrate.pick_t_edit(ts, np.array([0.0, 0.1, 0.33, 0.4, 0.5, 0.6]), 0.33) == 400
    # the order of the input does not matter: the first t in increasing t
    assert calibrate.pick_t_edit(ts[::-1], np.array([0.6, 0.5, 0.4, 0.33, 0.1, 0.0]), 0.33) == 400
    with pytest.raises(ConfigError, match=r"never reaches.*maximum is 0\.2500 \(at t=800\).*lower lpips_threshold"
                                          r".*fixed t_edit"):
        calibrate.pick_t_edit(ts, np.array([0.0, 0.1, 0.2, 0.24, 0.25, 0.2]), 0.33)
    with pytest.raises(ConfigError, match="non-finite"):
        calibrate.pick_t_edit(ts, np.array([0.0, np.nan, 0.2, 0.4, 0.5, 0.6]), 0.33)


def test_random_backbone_lpips_is_frozen_and_downloads_nothing(lpips_rand, offline):
    assert lpips_rand.random_backbone and not lpips_rand.training
    assert not any(p.requires_grad for p in lpips_rand.parameters())
    # the linear layers are the shipped ones (non-negative calibrated weights), the trunk is not loaded
    assert all((lin.model[-1].weight >= 0).all() for lin in lpips_rand.lins)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert float(lpips_rand(x, x).abs().max()) == 0.0


def test_missing_backbone_names_the_file_path_and_url(offline):
    expected = offline / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert perceptual.backbone_checkpoint("alex") == (expected, "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")
    with pytest.raises(CheckpointError) as err:
        perceptual.load_lpips(random_backbone=False, allow_download=False)
    msg = str(err.value)
    assert str(expected) in msg and "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg
    assert not expected.exists()


def test_cached_backbone_is_loaded_into_the_lpips_trunk(offline):
    import torchvision

    features = torchvision.models.AlexNet().features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = offline / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    model = perceptual.load_lpips(allow_download=False)
    assert not model.random_backbone
    assert torch.equal(model.net.slice1._modules["0"].weight, features[0].weight)
    assert torch.equal(model.net.slice3._modules["6"].bias, features[6].bias)
    assert torch.equal(model.net.slice5._modules["10"].weight, features[10].weight)
    torch.save({"features.0.weight": state["features.0.weight"]}, path)  # not AlexNet's features
    with pytest.raises(CheckpointError, match="does not hold"):
        perceptual.load_lpips()


def test_small_inputs_are_upsampled_for_alexnet(lpips_rand):
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    up = perceptual.lpips_input(x, torch.device("cpu"))
    assert up.shape == (2, 3, 64, 64) and up.min() >= -1 and up.max() <= 1
    assert perceptual.lpips_input(torch.zeros(1, 1, 64, 64), torch.device("cpu")).shape == (1, 3, 64, 64)
    assert torch.isfinite(lpips_rand(up, up.flip(0))).all()


def test_lpips_curve_oracle_is_zero(lpips_rand):
    engine = FakeEngine(steps=6)
    ts, curve = calibrate.lpips_curve(engine, _images(5), lpips_rand, batch_size=2)
    assert ts == timestep_grid(6)[:-1] and curve.shape == (5,)
    assert curve[0] == 0.0  # t = 0: abar = 1, the predicted x0 is x0 bit for bit
    assert np.all(np.abs(curve) < 1e-5)


def test_lpips_curve_on_a_real_unet_one_value_per_step(lpips_rand):
    torch.manual_seed(0)
    cfg = InjectionConfig(inversion_steps=6, generation_steps=6, batch_size=4)
    engine = InjectionEngine(build_unet("tiny_32"), cfg, _images(2, seed=1), "cpu")
    images = _images(6, seed=2)
    ts, curve = calibrate.lpips_curve(engine, images, lpips_rand, batch_size=4)
    assert ts == engine.plan.inversion_grid[:-1] and ts[0] == 0 and len(curve) == cfg.inversion_steps - 1
    assert np.isfinite(curve).all() and (curve >= 0).all()
    # the mean does not depend on the batching
    _, again = calibrate.lpips_curve(engine, images, lpips_rand, batch_size=32)
    np.testing.assert_allclose(curve, again, rtol=1e-4, atol=1e-6)


def test_calibrate_picks_plots_and_uses_what_it_has(lpips_rand, tmp_path, caplog):
    engine = FakeEngine(steps=6, noise=1.0)
    images = _images(4)
    ts, curve = calibrate.lpips_curve(engine, images, lpips_rand)
    assert np.all(np.diff(curve) > 0)  # the noise grows with t
    threshold = float((curve[2] + curve[3]) / 2)
    cfg = InjectionConfig(inversion_steps=6, lpips_threshold=threshold, calibration_images=100)
    plot = tmp_path / "plots" / "t_edit.png"
    with caplog.at_level(logging.WARNING, logger="diffinject.stages.inject.calibrate"):
        t_edit, ts2, curve2 = calibrate.calibrate_t_edit(engine, images, cfg, lpips_rand, plot_path=plot)
    assert t_edit == ts[3] and ts2 == ts
    np.testing.assert_allclose(curve2, curve)
    assert plot.is_file() and plot.stat().st_size > 0
    assert "only 4 given" in caplog.text and "not meaningful" in caplog.text

    # fewer asked for than given: only the first ones are used
    _, _, first2 = calibrate.calibrate_t_edit(engine, images, InjectionConfig(
        inversion_steps=6, lpips_threshold=0.0, calibration_images=2), lpips_rand)
    np.testing.assert_allclose(first2, calibrate.lpips_curve(engine, images[:2], lpips_rand)[1])

    # never reached: the plot is still drawn, then the error
    high = InjectionConfig(inversion_steps=6, lpips_threshold=float(curve.max()) + 1.0)
    plot2 = tmp_path / "never.png"
    with pytest.raises(ConfigError, match="never reaches"):
        calibrate.calibrate_t_edit(engine, images, high, lpips_rand, plot_path=plot2)
    assert plot2.is_file()
