"""openai guided-diffusion / P2 checkpoints -> UNet2DModel presets (docs/design.md 2.2).

The openai key layout and the openai forward computations (ResBlock, legacy attention, the
whole UNetModel) are written out here independently of the converter.
"""
import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F

from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.nets.diffusion import UNetPreset, build_unet, get_preset
from diffinject.nets.diffusion.guided_diffusion import (convert_guided_diffusion_state_dict,
                                                        load_guided_diffusion_checkpoint)

# Attention at level 1 (32 ch, 2 heads of 16) and in the middle (64 ch, 4 heads): the legacy order matters.
GD_TINY = UNetPreset("gd_tiny", 32, (32, 32, 64), 1, (1,), True, "resnet", 16, norm_num_groups=8)
# Conv resampling, two res blocks per level, 4 heads of 8 at level 1 and in the middle.
GD_CONV = UNetPreset("gd_conv", 32, (16, 32, 32), 2, (1,), False, "conv", 8, norm_num_groups=8)


# --------------------------------------------------------------------------- openai's UNetModel layout

def openai_blocks(p):
    """openai UNetModel structure: (input_blocks, middle_block, output_blocks), each block a list of specs.

    Specs: ("conv_in", out) | ("res", in, out, None|"down"|"up") | ("attn", ch) | ("down", ch) | ("up", ch).
    """
    mc, n, nrb = p.block_out_channels[0], len(p.block_out_channels), p.layers_per_block
    inputs, hs, ch = [[("conv_in", mc)]], [mc], mc
    for level, out in enumerate(p.block_out_channels):
        for _ in range(nrb):
            block = [("res", ch, out, None)]
            ch = out
            if level in p.attention_levels:
                block.append(("attn", ch))
            inputs.append(block)
            hs.append(ch)
        if level != n - 1:
            inputs.append([("res", ch, ch, "down")] if p.resample == "resnet" else [("down", ch)])
            hs.append(ch)
    middle = [("res", ch, ch, None), ("attn", ch), ("res", ch, ch, None)]
    outputs = []
    for level in reversed(range(n)):
        out = p.block_out_channels[level]
        for i in range(nrb + 1):
            block = [("res", ch + hs.pop(), out, None)]
            ch = out
            if level in p.attention_levels:
                block.append(("attn", ch))
            if level and i == nrb:
                block.append(("res", ch, ch, "up") if p.resample == "resnet" else ("up", ch))
            outputs.append(block)
    return inputs, middle, outputs


def spec_shapes(spec, emb):
    kind = spec[0]
    if kind == "conv_in":
        return {"weight": (spec[1], 3, 3, 3), "bias": (spec[1],)}
    if kind == "res":
        _, cin, cout, _ = spec
        s = {"in_layers.0.weight": (cin,), "in_layers.0.bias": (cin,),
             "in_layers.2.weight": (cout, cin, 3, 3), "in_layers.2.bias": (cout,),
             "emb_layers.1.weight": (2 * cout, emb), "emb_layers.1.bias": (2 * cout,),
             "out_layers.0.weight": (cout,), "out_layers.0.bias": (cout,),
             "out_layers.3.weight": (cout, cout, 3, 3), "out_layers.3.bias": (cout,)}
        if cin != cout:
            s.update({"skip_connection.weight": (cout, cin, 1, 1), "skip_connection.bias": (cout,)})
        return s
    if kind == "attn":
        c = spec[1]
        return {"norm.weight": (c,), "norm.bias": (c,), "qkv.weight": (3 * c, c, 1), "qkv.bias": (3 * c,),
                "proj_out.weight": (c, c, 1), "proj_out.bias": (c,)}
    c = spec[1]
    name = "op" if kind == "down" else "conv"
    return {f"{name}.weight": (c, c, 3, 3), f"{name}.bias": (c,)}


def openai_shapes(p):
    """Every key of an openai UNetModel state dict for the preset, with its shape."""
    mc = p.block_out_channels[0]
    emb = 4 * mc
    inputs, middle, outputs = openai_blocks(p)
    shapes = {"time_embed.0.weight": (emb, mc), "time_embed.0.bias": (emb,),
              "time_embed.2.weight": (emb, emb), "time_embed.2.bias": (emb,)}
    for name, blocks in (("input_blocks", inputs), ("output_blocks", outputs)):
        for i, block in enumerate(blocks):
            for j, spec in enumerate(block):
                shapes.update({f"{name}.{i}.{j}.{k}": s for k, s in spec_shapes(spec, emb).items()})
    for j, spec in enumerate(middle):
        shapes.update({f"middle_block.{j}.{k}": s for k, s in spec_shapes(spec, emb).items()})
    shapes.update({"out.0.weight": (mc,), "out.0.bias": (mc,),
                   "out.2.weight": (6 if p.learned_sigma else 3, mc, 3, 3), "out.2.bias": (6 if p.learned_sigma else 3,)})
    return shapes


def random_openai_state(p, seed=0):
    """A random float32 openai state dict whose activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in openai_shapes(p).items():
        if len(shape) == 1:
            is_norm_weight = k.endswith("weight")  # only norms have 1-d weights
            state[k] = (1.0 if is_norm_weight else 0.0) + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            state[k] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return state


# --------------------------------------------------------------------------- openai's forward computations

def ref_group_norm(x, P, prefix, groups):
    return F.group_norm(x, groups, P[f"{prefix}.weight"], P[f"{prefix}.bias"], eps=1e-5)


def ref_resblock(P, prefix, x, emb, groups, updown=None):
    """openai ResBlock with use_scale_shift_norm=True (and up/down=True for resblock_updown)."""
    h = F.silu(ref_group_norm(x, P, f"{prefix}.in_layers.0", groups))
    if updown == "down":
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    elif updown == "up":
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
    h = F.conv2d(h, P[f"{prefix}.in_layers.2.weight"], P[f"{prefix}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), P[f"{prefix}.emb_layers.1.weight"], P[f"{prefix}.emb_layers.1.bias"])[..., None, None]
    scale, shift = e.chunk(2, dim=1)
    h = ref_group_norm(h, P, f"{prefix}.out_layers.0", groups) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), P[f"{prefix}.out_layers.3.weight"], P[f"{prefix}.out_layers.3.bias"], padding=1)
    if f"{prefix}.skip_connection.weight" in P:
        x = F.conv2d(x, P[f"{prefix}.skip_connection.weight"], P[f"{prefix}.skip_connection.bias"])
    return x + h


def ref_legacy_attention(P, prefix, x, heads, groups):
    """openai AttentionBlock with QKVAttentionLegacy."""
    b, c, hh, ww = x.shape
    x = x.reshape(b, c, -1)
    qkv = F.conv1d(ref_group_norm(x, P, f"{prefix}.norm", groups), P[f"{prefix}.qkv.weight"], P[f"{prefix}.qkv.bias"])
    d = c // heads
    q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
    scale = 1 / math.sqrt(math.sqrt(d))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
    h = F.conv1d(a, P[f"{prefix}.proj_out.weight"], P[f"{prefix}.proj_out.bias"])
    return (x + h).reshape(b, c, hh, ww)


def ref_timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    args = t[:, None].double() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def ref_unet(P, p, x, t):
    """openai UNetModel.forward on the state dict P."""
    g = p.norm_num_groups
    mc = p.block_out_channels[0]
    emb = F.linear(ref_timestep_embedding(t, mc), P["time_embed.0.weight"], P["time_embed.0.bias"])
    emb = F.linear(F.silu(emb), P["time_embed.2.weight"], P["time_embed.2.bias"])

    def apply(spec, prefix, h):
        kind = spec[0]
        if kind == "conv_in":
            return F.conv2d(h, P[f"{prefix}.weight"], P[f"{prefix}.bias"], padding=1)
        if kind == "res":
            return ref_resblock(P, prefix, h, emb, g, spec[3])
        if kind == "attn":
            return ref_legacy_attention(P, prefix, h, spec[1] // p.attention_head_dim, g)
        if kind == "down":
            return F.conv2d(h, P[f"{prefix}.op.weight"], P[f"{prefix}.op.bias"], stride=2, padding=1)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        return F.conv2d(h, P[f"{prefix}.conv.weight"], P[f"{prefix}.conv.bias"], padding=1)

    inputs, middle, outputs = openai_blocks(p)
    hs, h = [], x
    for i, block in enumerate(inputs):
        for j, spec in enumerate(block):
            h = apply(spec, f"input_blocks.{i}.{j}", h)
        hs.append(h)
    for j, spec in enumerate(middle):
        h = apply(spec, f"middle_block.{j}", h)
    for i, block in enumerate(outputs):
        h = torch.cat([h, hs.pop()], dim=1)
        for j, spec in enumerate(block):
            h = apply(spec, f"output_blocks.{i}.{j}", h)
    h = F.silu(ref_group_norm(h, P, "out.0", g))
    return F.conv2d(h, P["out.2.weight"], P["out.2.bias"], padding=1)


# --------------------------------------------------------------------------- helpers

def as_double(state):
    return {k: v.double() for k, v in state.items()}


def converted_unet(p, state):
    unet = build_unet(p)
    unet.load_state_dict(convert_guided_diffusion_state_dict(state, p), strict=True)
    return unet.double().eval()


@pytest.fixture(scope="module")
def tiny():
    state = random_openai_state(GD_TINY)
    return state, converted_unet(GD_TINY, state)


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("preset", [GD_TINY, GD_CONV, get_preset("tiny_32"), get_preset("small_32")],
                         ids=lambda p: p.name)
def test_conversion_loads_strictly_with_the_presets_keys_and_shapes(preset):
    state = random_openai_state(preset)
    converted = convert_guided_diffusion_state_dict(state, preset)
    expected = build_unet(preset).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    build_unet(preset).load_state_dict(converted, strict=True)


# (openai prefix, diffusers module path, heads)
ATTENTIONS = [("middle_block.1", "mid_block.attentions.0", 4),
              ("input_blocks.3.1", "down_blocks.1.attentions.0", 2),
              ("output_blocks.3.1", "up_blocks.1.attentions.1", 2)]


@pytest.mark.parametrize("src,dst,heads", ATTENTIONS)
def test_attention_matches_openai_legacy_attention_and_naive_chunk_does_not(tiny, src, dst, heads):
    state, unet = tiny
    attn = unet.get_submodule(dst)
    c = state[f"{src}.norm.weight"].shape[0]
    assert c // heads == GD_TINY.attention_head_dim and attn.heads == heads
    x = torch.randn(2, c, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = ref_legacy_attention(as_double(state), src, x, heads, GD_TINY.norm_num_groups)
    with torch.no_grad():
        out = attn(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    # A naive chunk(3) of the fused qkv loads without error but computes something else.
    naive = copy.deepcopy(attn)
    w = state[f"{src}.qkv.weight"].squeeze(-1).double()
    b = state[f"{src}.qkv.bias"].double()
    for lin, wi, bi in zip((naive.to_q, naive.to_k, naive.to_v), w.chunk(3), b.chunk(3)):
        lin.weight.data.copy_(wi)
        lin.bias.data.copy_(bi)
    with torch.no_grad():
        wrong = naive(x)
    assert not torch.allclose(wrong, ref, rtol=1e-3, atol=1e-3)
    assert (wrong - ref).abs().max() > 1e-2


# (openai prefix, diffusers module path, up/down)
RESBLOCKS = [("input_blocks.1.0", "down_blocks.0.resnets.0", None),        # scale-shift, same channels
             ("input_blocks.5.0", "down_blocks.2.resnets.0", None),        # 32 -> 64, 1x1 skip conv
             ("output_blocks.0.0", "up_blocks.0.resnets.0", None),         # 128 -> 64 after the skip concat
             ("input_blocks.2.0", "down_blocks.0.downsamplers.0", "down"),  # resblock_updown down
             ("output_blocks.1.1", "up_blocks.0.upsamplers.0", "up")]      # resblock_updown up


@pytest.mark.parametrize("src,dst,updown", RESBLOCKS)
def test_resblock_matches_openai_resblock(tiny, src, dst, updown):
    state, unet = tiny
    resnet = unet.get_submodule(dst)
    cin = state[f"{src}.in_layers.0.weight"].shape[0]
    emb_dim = state[f"{src}.emb_layers.1.weight"].shape[1]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, cin, 8, 8, dtype=torch.float64, generator=g)
    emb = torch.randn(2, emb_dim, dtype=torch.float64, generator=g)
    ref = ref_resblock(as_double(state), src, x, emb, GD_TINY.norm_num_groups, updown)
    with torch.no_grad():
        out = resnet(x, emb)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", [GD_TINY, GD_CONV], ids=lambda p: p.name)
def test_whole_unet_matches_openai_unet_forward(preset):
    state = random_openai_state(preset, seed=3)
    unet = converted_unet(preset, state)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=g)
    t = torch.tensor([3, 780])
    with torch.no_grad():
        out = unet(x, t).sample
    ref = ref_unet(as_double(state), preset, x, t)
    assert out.shape == (2, 6 if preset.learned_sigma else 3, 16, 16)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("other", ["tiny_32", "small_32"])
def test_state_dict_for_another_preset_is_rejected(other):
    state = random_openai_state(GD_TINY)
    with pytest.raises(CheckpointError, match=rf"preset '{other}'.*(missing|unexpected) key.*another architecture"):
        convert_guided_diffusion_state_dict(state, other)


def test_same_keys_other_widths_name_the_first_mismatched_shape():
    wider = UNetPreset("gd_wide", 32, (64, 64, 128), 1, (1,), True, "resnet", 16, norm_num_groups=8)
    with pytest.raises(CheckpointError, match=r"'time_embed\.0\.weight' has shape \(128, 32\), expected \(256, 64\)"):
        convert_guided_diffusion_state_dict(random_openai_state(GD_TINY), wider)


def test_missing_key_is_named():
    state = random_openai_state(GD_TINY)
    del state["middle_block.1.qkv.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): 'middle_block\.1\.qkv\.bias'") as e:
        convert_guided_diffusion_state_dict(state, GD_TINY)
    assert "unexpected" not in str(e.value) and "gd_tiny" in str(e.value)


def test_extra_key_is_named():
    state = random_openai_state(GD_TINY)
    state["output_blocks.6.0.in_layers.0.weight"] = torch.ones(32)
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): 'output_blocks\.6\.0\.in_layers\.0\.weight'"):
        convert_guided_diffusion_state_dict(state, GD_TINY)


def test_many_missing_keys_are_summarised():
    state = {k: v for k, v in random_openai_state(GD_TINY).items() if not k.startswith("output_blocks")}
    with pytest.raises(CheckpointError, match=r"missing key\(s\): ('[^']+', ){4}'[^']+' \(and \d+ more\)"):
        convert_guided_diffusion_state_dict(state, GD_TINY)


def test_wrong_shape_names_key_and_both_shapes():
    state = random_openai_state(GD_TINY)
    state["input_blocks.3.1.qkv.weight"] = torch.zeros(96, 32)
    with pytest.raises(CheckpointError, match=r"'input_blocks\.3\.1\.qkv\.weight' has shape \(96, 32\), "
                                              r"expected \(96, 32, 1\)"):
        convert_guided_diffusion_state_dict(state, GD_TINY)


def test_non_tensor_value_is_rejected():
    state = random_openai_state(GD_TINY)
    state["out.2.bias"] = [0.0] * 6
    with pytest.raises(CheckpointError, match=r"'out\.2\.bias'.*not a tensor"):
        convert_guided_diffusion_state_dict(state, GD_TINY)


def test_load_round_trip_from_file(tmp_path):
    state = random_openai_state(GD_CONV, seed=5)
    path = tmp_path / "ffhq_p2.pt"
    torch.save(state, path)
    unet = load_guided_diffusion_checkpoint(path, GD_CONV)
    assert not unet.training
    direct = build_unet(GD_CONV)
    direct.load_state_dict(convert_guided_diffusion_state_dict(state, GD_CONV), strict=True)
    direct.eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([250])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, direct(x, t).sample)

    torch.save({"state_dict": state}, tmp_path / "nested.pt")  # a wrapped state dict is accepted too
    nested = load_guided_diffusion_checkpoint(tmp_path / "nested.pt", GD_CONV)
    with torch.no_grad():
        assert torch.equal(nested(x, t).sample, direct(x, t).sample)


def test_load_by_preset_name(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(random_openai_state(get_preset("tiny_32")), path)
    assert load_guided_diffusion_checkpoint(str(path), "tiny_32").config.block_out_channels == (16, 32)
    with pytest.raises(ConfigError, match="unknown U-Net preset"):
        load_guided_diffusion_checkpoint(path, "no_such_preset")
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r".*preset 'small_32'"):
        load_guided_diffusion_checkpoint(path, "small_32")


def test_load_errors_name_the_path(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match=re.escape(str(garbage)) + " is unreadable"):
        load_guided_diffusion_checkpoint(garbage, GD_TINY)

    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=re.escape(str(missing)) + " does not exist"):
        load_guided_diffusion_checkpoint(missing, GD_TINY)

    holds_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], holds_list)
    with pytest.raises(CheckpointError, match=re.escape(str(holds_list)) + ".*list.*state dict"):
        load_guided_diffusion_checkpoint(holds_list, GD_TINY)

    not_weights = tmp_path / "dict.pt"
    torch.save({"step": 3, "lr": 1e-4}, not_weights)
    with pytest.raises(CheckpointError, match=re.escape(str(not_weights)) + ".*not a tensor state dict"):
        load_guided_diffusion_checkpoint(not_weights, GD_TINY)


def test_p2_256_released_layout_converts_exactly():
    p = get_preset("p2_256")
    shapes = openai_shapes(p)
    # Anchors of the released layout: 12 input / 12 output blocks, attention at 16x16 (level 4), learned sigma.
    assert shapes["input_blocks.9.1.qkv.weight"] == (1536, 512, 1)
    assert shapes["input_blocks.10.0.in_layers.2.weight"] == (512, 512, 3, 3)   # ResBlock(down=True)
    assert shapes["output_blocks.2.1.qkv.weight"] == shapes["output_blocks.3.1.qkv.weight"] == (1536, 512, 1)
    assert shapes["output_blocks.3.2.emb_layers.1.weight"] == (1024, 512)      # ResBlock(up=True)
    assert "output_blocks.3.2.skip_connection.weight" not in shapes
    assert shapes["out.2.weight"] == (6, 128, 3, 3)
    assert not any(k.startswith(("input_blocks.12", "output_blocks.12")) for k in shapes)
    assert round(sum(math.prod(s) for s in shapes.values()) / 1e6, 1) == 93.6

    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted = convert_guided_diffusion_state_dict(state, "p2_256")
    with torch.device("meta"):
        reference = build_unet("p2_256").state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert round(sum(v.numel() for v in converted.values()) / 1e6, 1) == 93.6
