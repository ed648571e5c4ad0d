"""The speed levers (diffinject.core.accel and the engine's, stage 2's and the classifier's switches):
each against the eager float32 reference path, on the CPU where torch supports the lever."""
import math

import numpy as np
import pytest
import torch

from diffinject.config.schema import ClassifierConfig, DiffusionConfig, InjectionConfig
from diffinject.core.accel import pairs_that_fit, set_attention
from diffinject.core.errors import ConfigError
from diffinject.nets.injection import _mix32, counter_normal, counter_uniform
from diffinject.stages.inject import InjectionEngine


def attention_kernels(unet) -> set[str]:
    """The attention processor classes in use (empty for a model without attention)."""
    from diffusers.models.attention_processor import Attention

    return {type(m.processor).__name__ for m in unet.modules() if isinstance(m, Attention)}


# A float32 lever computes the same passes with another summation order (conv algorithm, kernel
# fusion), which DDIM inversion amplifies: within half a uint8 level (1/255 in [-1, 1] units).
RTOL, ATOL = 1e-4, 1 / 255


def mix32_reference(x: int) -> int:
    """_mix32 in plain Python integers, the formula it implements."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x4C2A6E8B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_is_the_32_bit_finaliser_without_overflow():
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1]
    got = _mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [mix32_reference(v) for v in values]
    assert all(0 <= v < 2**32 for v in got)


def test_counter_noise_is_per_pair_and_independent_of_the_batch():
    seeds = torch.tensor([7, 3, 2**40 + 7, 11], dtype=torch.int64)
    together = counter_normal(seeds, 500, (3, 4, 4))
    for i in range(len(seeds)):
        assert torch.equal(counter_normal(seeds[i:i + 1], 500, (3, 4, 4))[0], together[i])
    # every input matters: seed (low and high 32 bits), step
    assert not torch.equal(together[0], together[2])
    assert not torch.equal(together[0], counter_normal(seeds[:1], 499, (3, 4, 4))[0])


def test_counter_noise_is_standard_normal_and_uncorrelated():
    from scipy import stats

    seeds = torch.arange(64, dtype=torch.int64)
    z = counter_normal(seeds, 200, (3, 32, 32)).double()
    flat = z.flatten().numpy()
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    assert stats.kstest(flat, "norm").statistic < 0.005
    rows = z.flatten(1)
    # neighbouring elements, neighbouring seeds, neighbouring steps
    assert abs(np.corrcoef(rows[:, :-1].flatten(), rows[:, 1:].flatten())[0, 1]) < 0.01
    assert abs(np.corrcoef(rows[:-1].flatten(), rows[1:].flatten())[0, 1]) < 0.01
    other = counter_normal(seeds, 201, (3, 32, 32)).double().flatten()
    assert abs(np.corrcoef(flat, other.numpy())[0, 1]) < 0.01
    u = counter_uniform(seeds, 0, 1000, 0)
    assert u.min() > 0 and u.max() < 1


def test_pairs_that_fit_is_a_multiple_of_eight_within_the_fraction():
    assert pairs_that_fit(80 * 2**30, 2**20, 0.8) == 4096                  # capped
    assert pairs_that_fit(1000 * 2**20, 3 * 2**20, 0.5) == 160             # 166 -> multiple of 8
    assert pairs_that_fit(10 * 2**20, 2**30, 0.8) == 8                     # at least one step of 8
    with pytest.raises(ConfigError, match="memory_fraction"):
        pairs_that_fit(2**30, 2**20, 1.5)


@pytest.fixture(scope="module")
def shipped_unet():
    """The trained small_32 model the project ships: an untrained U-Net is chaotic under DDIM
    inversion, a trained one is not. It has self-attention (the attention lever matters)."""
    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
    from diffinject.experiment.shipped_diffusion import quick_checkpoint

    unet, _ = load_unet_checkpoint(quick_checkpoint("colored_digits"))
    return unet


@pytest.fixture(scope="module")
def pairs(digits_parquet):
    from diffinject.data.parquet import load_split

    images = load_split(digits_parquet, "train").images
    return images[:6], images[100:103], np.arange(6) % 3, np.arange(6)


def generate(unet, pairs, **levers):
    originals, contents, content_index, seeds = pairs
    cfg = InjectionConfig(**{**dict(inversion_steps=6, generation_steps=8, t_edit=300, t_boost=200, batch_size=4,
                                    precision="fp32"), **levers})
    return InjectionEngine(unet, cfg, contents).generate_tensor(originals, content_index, seeds)


@pytest.fixture(scope="module")
def eager(shipped_unet, pairs):
    return generate(shipped_unet, pairs)


@pytest.mark.parametrize("levers", [dict(channels_last=True), dict(attention="classic")], ids=str)
def test_layout_and_attention_levers_match_the_eager_path(shipped_unet, pairs, eager, levers):
    out = generate(shipped_unet, pairs, **levers)
    assert torch.allclose(out, eager, rtol=RTOL, atol=ATOL)
    # the caller's model keeps its layout and kernel
    assert attention_kernels(shipped_unet) == {"AttnProcessor2_0"}
    assert next(shipped_unet.parameters()).is_contiguous()


def test_inductor_compile_matches_the_eager_path_with_a_padded_last_batch(shipped_unet, pairs, eager):
    """6 pairs at 4 per pass: the last pass is padded to 4 (static shapes) and cut back."""
    out = generate(shipped_unet, pairs, compile="inductor")
    assert out.shape == eager.shape
    assert torch.allclose(out, eager, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("precision", ["bf16_autocast", "bf16_weights"])
def test_bf16_levers_stay_near_the_float32_images(shipped_unet, pairs, eager, precision):
    """bf16 rounds each pass to ~3 significant digits, which DDIM inversion amplifies: the images
    stay within a few uint8 levels on average (not the float32 tolerance)."""
    out = generate(shipped_unet, pairs, precision=precision)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    mean_levels = float((out - eager).abs().mean()) * 127.5
    assert 0 < mean_levels < 8, mean_levels
    assert next(shipped_unet.parameters()).dtype == torch.float32


def test_counter_noise_changes_only_the_boosted_steps_and_not_with_the_batch(shipped_unet, pairs, eager):
    counter = generate(shipped_unet, pairs, noise="counter")
    assert not torch.allclose(counter, eager, rtol=RTOL, atol=ATOL)
    originals, contents, content_index, seeds = pairs
    apart = torch.cat([generate(shipped_unet, (originals[i:i + 1], contents, content_index[i:i + 1], seeds[i:i + 1]),
                                noise="counter") for i in range(len(seeds))])
    assert torch.allclose(counter, apart, rtol=RTOL, atol=ATOL)
    no_boost = dict(t_boost=-1)
    cfg = dict(inversion_steps=6, generation_steps=8, t_edit=300, batch_size=4, precision="fp32", **no_boost)
    host = InjectionEngine(shipped_unet, InjectionConfig(**cfg), contents).generate_tensor(
        originals, content_index, seeds)
    dev = InjectionEngine(shipped_unet, InjectionConfig(**cfg, noise="counter"), contents).generate_tensor(
        originals, content_index, seeds)
    assert torch.equal(host, dev)


def test_lever_errors_name_the_field(shipped_unet, pairs):
    contents = pairs[1]
    with pytest.raises(ConfigError, match="injection.compile=cudagraphs .*needs a GPU"):
        InjectionEngine(shipped_unet, InjectionConfig(compile="cudagraphs"), contents)
    with pytest.raises(ConfigError, match="injection.precision must be one of"):
        InjectionEngine(shipped_unet, InjectionConfig(precision="fp8"), contents)
    with pytest.raises(ConfigError, match="attention must be one of"):
        set_attention(shipped_unet, "flash")
    engine = InjectionEngine(shipped_unet, InjectionConfig(batch_size=0, inversion_steps=4, generation_steps=4),
                             contents)
    assert engine.batch_size == 32 and engine.precision == "fp32"  # batch_size 0 on a CPU; auto precision


def test_the_config_validates_the_lever_fields():
    from diffinject.config.overrides import apply_overrides
    from diffinject.config.schema import ExperimentConfig

    for bad in ("injection.compile=fast", "injection.precision=fp16", "injection.noise=gpu",
                "diffusion.compile=yes", "injection.memory_fraction=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            apply_overrides(ExperimentConfig(), [bad])
    cfg = apply_overrides(ExperimentConfig(), ["injection.batch_size=0", "injection.compile=inductor",
                                               "classifier.channels_last=true", "diffusion.fused_adam=true"])
    assert cfg.injection.batch_size == 0 and cfg.classifier.channels_last and cfg.diffusion.fused_adam


def test_diffusion_training_levers_match_the_reference_loop(digits_parquet):
    """channels_last and fused AdamW (both run on the CPU) give the reference loop's losses."""
    from diffinject.data.parquet import load_split
    from diffinject.stages.stage2 import train_diffusion
    from diffinject.training.loop import TrainContext

    images = load_split(digits_parquet, "train").images[:64]

    def losses(**levers):
        cfg = DiffusionConfig(preset="tiny_32", batch_size=8, num_steps=4, log_every=1, sample_every=0,
                              checkpoint_every=100, hflip=False, **levers)
        logged = []
        ctx = TrainContext(log=lambda step, m: logged.append(m["loss"]) if "loss" in m else None)
        result = train_diffusion(cfg, images, ctx, seed=0)
        return np.array(logged), result.ema_unet

    reference, ref_unet = losses()
    for levers in (dict(channels_last=True), dict(fused_adam=True)):
        got, unet = losses(**levers)
        np.testing.assert_allclose(got, reference, rtol=1e-4, err_msg=str(levers))
        for a, b in zip(unet.parameters(), ref_unet.parameters()):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="diffusion.compile=cudagraphs"):
        losses(compile="cudagraphs")


def test_classifier_channels_last_trains_like_the_reference(digits_parquet):
    """ResNet-18 with NHWC activations and weights: the same losses up to float rounding (compared
    over two steps: Adam's normalised first step turns rounding-level gradients into lr-sized
    moves, so later losses drift apart by design); bf16 is a GPU lever: a CPU run stays float32."""
    from diffinject.data.parquet import ArraySplit, load_split
    from diffinject.methods.registry import train_method
    from diffinject.training.loop import TrainContext, TrainData

    split = load_split(digits_parquet, "train")
    small = ArraySplit(split.images[:32], split.labels[:32], split.biases[:32], split.ids[:32])
    data = TrainData(train=small, valid=small, test=small, num_classes=10, num_biases=10)

    def run(**levers):
        cfg = ClassifierConfig(arch="resnet18", num_steps=2, batch_size=8, eval_every=2, log_every=1, **levers)
        logged = []
        ctx = TrainContext(log=lambda step, m: logged.append(m["train_loss"]) if "train_loss" in m else None)
        nets = train_method("vanilla", cfg, data, ctx, seed=0).method.nets
        conv = next(m for m in nets["model"].modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cfg.channels_last
        return np.array(logged)

    reference = run()
    got = run(channels_last=True)
    np.testing.assert_allclose(got[0], reference[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], reference[1], rtol=1e-3)
    np.testing.assert_array_equal(run(bf16=True), reference)
    assert math.isfinite(float(reference.sum()))
