"""DDIM sampling: an oracle denoiser lands exactly on its target; determinism; shapes."""
from types import SimpleNamespace

import pytest
import torch

from diffinject.nets.diffusion import build_unet, ddim_sample, linear_alphas_cumprod


class OracleDenoiser(torch.nn.Module):
    """Predicts the eps that makes x0 = target exactly, at every t."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target
        self.abar = linear_alphas_cumprod()

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x - a.sqrt() * self.target) / (1 - a).sqrt())


@pytest.mark.parametrize("steps,eta", [(10, 0.0), (50, 0.0), (20, 1.0)])
def test_oracle_denoiser_reaches_its_target(steps, eta):
    target = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    out = ddim_sample(OracleDenoiser(target), 2, 8, steps=steps, eta=eta, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-4)


def test_eta_zero_is_deterministic_and_learned_sigma_is_handled():
    torch.manual_seed(0)
    unet = build_unet("tiny_32").eval()
    a = ddim_sample(unet, 2, 32, steps=3, generator=torch.Generator().manual_seed(5))
    b = ddim_sample(unet, 2, 32, steps=3, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and a.abs().max() <= 1.0
    six = OracleDenoiser(torch.zeros(1, 3, 8, 8))
    wrapped = lambda x, t: SimpleNamespace(sample=torch.cat([six(x, t).sample, torch.ones_like(x)], 1))  # noqa: E731
    assert torch.allclose(ddim_sample(wrapped, 1, 8, steps=5), torch.zeros(1, 3, 8, 8), atol=1e-4)


def test_bad_step_count():
    with pytest.raises(ValueError, match="at least one step"):
        ddim_sample(OracleDenoiser(torch.zeros(1, 3, 8, 8)), 1, 8, steps=0)


def test_predicted_x0_is_clipped_at_every_step():
    """A denoiser that predicts eps = 0 says x0 = x_t / sqrt(abar_t): ~160 x_T at t = 999. With
    guided-diffusion's clip_denoised, every later x_t = sqrt(abar) * clip(x0) stays in [-1, 1]."""
    seen = []

    def zero_eps(x, t):
        seen.append(x.clone())
        return SimpleNamespace(sample=torch.zeros_like(x))

    ddim_sample(zero_eps, 2, 8, steps=5, generator=torch.Generator().manual_seed(0))
    assert seen[0].abs().max() > 1.5  # x_T is plain noise
    assert all(x.abs().max() <= 1.0 for x in seen[1:])


def test_batches_give_the_images_of_one_batch():
    """Sampling in batches (bounded memory for any count) changes no image at eta = 0: image i
    starts from the same noise as in one batch, and every batch fits in `batch_size`."""
    sizes = []

    def shrink(x, t):  # an eps that depends on x, so each image shows its own start noise
        sizes.append(len(x))
        return SimpleNamespace(sample=0.3 * x)

    one = ddim_sample(shrink, 7, 8, steps=4, generator=torch.Generator().manual_seed(3))
    sizes.clear()
    batched = ddim_sample(shrink, 7, 8, steps=4, generator=torch.Generator().manual_seed(3), batch_size=3)
    assert set(sizes) == {3, 1} and max(sizes) == 3
    assert batched.shape == (7, 3, 8, 8) and torch.equal(batched, one)
