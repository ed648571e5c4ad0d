"""U-Net presets, h-space access and the P2 loss (stage 2 building blocks)."""
import pytest
import torch

from diffinject.core.errors import ConfigError
from diffinject.nets.diffusion import HSpace, build_unet, get_preset, linear_alphas_cumprod, p2_loss, p2_weights


def test_p2_256_is_the_released_architecture():
    unet = build_unet("p2_256")
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 93.6
    assert unet.config.out_channels == 6
    with HSpace(unet) as hs, torch.no_grad():
        out = unet(torch.zeros(1, 3, 256, 256), torch.tensor([500])).sample
    assert out.shape == (1, 6, 256, 256)
    assert tuple(hs.captured.shape) == (1, 512, 8, 8) == (1, *get_preset("p2_256").h_shape)


@pytest.mark.parametrize("name,h_shape", [("adm_32", (256, 4, 4)), ("small_32", (128, 4, 4)), ("tiny_32", (32, 16, 16))])
def test_h_shapes(name, h_shape):
    unet = build_unet(name).eval()
    with HSpace(unet) as hs, torch.no_grad():
        unet(torch.randn(2, 3, 32, 32), torch.tensor([10, 900]))
    assert tuple(hs.captured.shape) == (2, *h_shape) and get_preset(name).h_shape == h_shape


def test_replacing_h_with_itself_is_bit_identical_and_with_other_changes_output():
    torch.manual_seed(0)
    unet = build_unet("small_32").eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([100, 700])
    with HSpace(unet) as hs, torch.no_grad():
        plain = unet(x, t).sample
        h = hs.captured.clone()
        hs.replace_with(h)
        same = unet(x, t).sample
        hs.replace_with(torch.randn_like(h))
        other = unet(x, t).sample
        again = unet(x, t).sample  # a replacement lasts one forward pass
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, other)
    assert torch.equal(plain, again)


def test_hspace_replacement_of_wrong_shape_is_an_error():
    unet = build_unet("tiny_32").eval()
    with HSpace(unet) as hs, torch.no_grad():
        hs.replace_with(torch.zeros(1, 1, 1, 1))
        with pytest.raises(ValueError, match="h-space replacement has shape"):
            unet(torch.zeros(1, 3, 32, 32), torch.tensor([1]))


def test_hook_is_removed_on_exit():
    unet = build_unet("tiny_32").eval()
    with HSpace(unet) as hs:
        pass
    with torch.no_grad():
        unet(torch.zeros(1, 3, 32, 32), torch.tensor([1]))
    assert hs.captured is None


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown U-Net preset 'p3'"):
        build_unet("p3")


def test_linear_schedule_end_points():
    abar = linear_alphas_cumprod()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(abar.double(), torch.cumprod(1 - betas, 0), rtol=1e-5)


@pytest.mark.parametrize("gamma,k", [(1.0, 1.0), (0.5, 1.0), (0.0, 1.0), (1.0, 0.1)])
def test_p2_weights_formula(gamma, k):
    abar = linear_alphas_cumprod()
    expected = (k + abar.double() / (1 - abar.double())) ** -gamma
    assert torch.allclose(p2_weights(abar, gamma, k).double(), expected, rtol=1e-5)
    if gamma == 0.0:
        assert torch.equal(p2_weights(abar, gamma, k), torch.ones_like(abar))
    else:  # noisy steps (low SNR) weigh more
        w = p2_weights(abar, gamma, k)
        assert w[999] > w[500] > w[0]


def test_p2_loss_is_per_sample_mean_of_weight_times_squared_error():
    torch.manual_seed(0)
    eps, eps_pred = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 10, 999])
    weights = p2_weights(linear_alphas_cumprod(), 1.0, 1.0)
    loss = p2_loss(eps, eps_pred, t, weights)
    for i in range(3):
        assert loss[i] == pytest.approx(float(weights[t[i]] * ((eps[i] - eps_pred[i]) ** 2).mean()), rel=1e-6)


def test_public_entry_points():
    import diffinject
    from diffinject.nets.diffusion.guided_diffusion import load_guided_diffusion_checkpoint

    abar = linear_alphas_cumprod()
    assert torch.allclose(diffinject.p2_weights(abar, 1.0, 1.0), 1.0 / (1.0 + abar / (1.0 - abar)), rtol=1e-6)
    assert diffinject.load_guided_diffusion_checkpoint is load_guided_diffusion_checkpoint
