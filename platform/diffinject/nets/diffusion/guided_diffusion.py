"""Load openai guided-diffusion / P2-weighting checkpoints into our UNet2DModel presets.

The released P2 models (``ffhq_p2.pt``, ``afhqdog_p2.pt``, ...) are plain state dicts in the
key layout of openai's ``UNetModel`` (guided_diffusion/unet.py). The mapping to diffusers is
derived from the preset (docs/design.md 2.2); every expected key must be present with the preset's
shape and every key of the checkpoint must be used, so a checkpoint for another architecture
is an error, never a silent partial load.

The checkpoints use ``QKVAttentionLegacy``: the fused qkv projection is laid out per head as
[q, k, v], so it is split per head, not with a plain chunk(3) (which loads and gives garbage).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.nets.diffusion.checkpoint_file import read_checkpoint_file
from diffinject.nets.diffusion.models import UNetPreset, build_unet, get_preset

__all__ = ["convert_guided_diffusion_state_dict", "load_guided_diffusion_checkpoint"]

# openai ResBlock sub-module -> diffusers ResnetBlock2D sub-module.
_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


@dataclass(frozen=True)
class _Module:
    """One openai module and the diffusers module it becomes."""
    src: str                 # openai prefix, e.g. "input_blocks.1.0"
    dst: str                 # diffusers prefix, e.g. "down_blocks.0.resnets.0"
    kind: str                # "res", "attn", "conv", "linear", "norm", "down", "up"
    dims: tuple[int, ...]    # res: (in, out, emb); attn/norm/down/up: (ch,); conv/linear: (in, out)


def _resolve(preset: UNetPreset | str) -> UNetPreset:
    return get_preset(preset) if isinstance(preset, str) else preset


def _layout(p: UNetPreset) -> list[_Module]:
    """openai's UNetModel module tree for a preset, paired with diffusers' names."""
    chans, nrb, n = p.block_out_channels, p.layers_per_block, len(p.block_out_channels)
    mc = chans[0]
    emb = 4 * mc
    mods = [_Module("time_embed.0", "time_embedding.linear_1", "linear", (mc, emb)),
            _Module("time_embed.2", "time_embedding.linear_2", "linear", (emb, emb)),
            _Module("input_blocks.0.0", "conv_in", "conv", (3, mc))]

    def resample(src: str, dst: str, ch: int, direction: str) -> _Module:
        if p.resample == "resnet":   # ResBlock(up/down=True), resblock_updown
            return _Module(src, dst, "res", (ch, ch, emb))
        return _Module(src, dst, direction, (ch,))

    ch, idx, skips = mc, 1, [mc]
    for level, out in enumerate(chans):
        for j in range(nrb):
            mods.append(_Module(f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", "res", (ch, out, emb)))
            ch = out
            if level in p.attention_levels:
                mods.append(_Module(f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}", "attn", (ch,)))
            skips.append(ch)
            idx += 1
        if level != n - 1:
            mods.append(resample(f"input_blocks.{idx}.0", f"down_blocks.{level}.downsamplers.0", ch, "down"))
            skips.append(ch)
            idx += 1

    mods += [_Module("middle_block.0", "mid_block.resnets.0", "res", (ch, ch, emb)),
             _Module("middle_block.1", "mid_block.attentions.0", "attn", (ch,)),
             _Module("middle_block.2", "mid_block.resnets.1", "res", (ch, ch, emb))]

    idx = 0
    for up, level in enumerate(reversed(range(n))):
        out = chans[level]
        for j in range(nrb + 1):
            mods.append(_Module(f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{j}", "res",
                                (ch + skips.pop(), out, emb)))
            ch, sub = out, 1
            if level in p.attention_levels:
                mods.append(_Module(f"output_blocks.{idx}.1", f"up_blocks.{up}.attentions.{j}", "attn", (ch,)))
                sub = 2
            if level and j == nrb:
                mods.append(resample(f"output_blocks.{idx}.{sub}", f"up_blocks.{up}.upsamplers.0", ch, "up"))
            idx += 1

    mods += [_Module("out.0", "conv_norm_out", "norm", (ch,)),
             _Module("out.2", "conv_out", "conv", (ch, 6 if p.learned_sigma else 3))]
    return mods


def _shapes(m: _Module) -> dict[str, tuple[int, ...]]:
    """openai parameter suffix -> shape for one module."""
    if m.kind == "res":
        cin, cout, emb = m.dims
        s = {"in_layers.0.weight": (cin,), "in_layers.0.bias": (cin,),
             "in_layers.2.weight": (cout, cin, 3, 3), "in_layers.2.bias": (cout,),
             "emb_layers.1.weight": (2 * cout, emb), "emb_layers.1.bias": (2 * cout,),  # scale-shift norm
             "out_layers.0.weight": (cout,), "out_layers.0.bias": (cout,),
             "out_layers.3.weight": (cout, cout, 3, 3), "out_layers.3.bias": (cout,)}
        if cin != cout:
            s |= {"skip_connection.weight": (cout, cin, 1, 1), "skip_connection.bias": (cout,)}
        return s
    if m.kind == "attn":
        (c,) = m.dims
        return {"norm.weight": (c,), "norm.bias": (c,), "qkv.weight": (3 * c, c, 1), "qkv.bias": (3 * c,),
                "proj_out.weight": (c, c, 1), "proj_out.bias": (c,)}
    if m.kind in ("down", "up"):
        (c,) = m.dims
        name = "op" if m.kind == "down" else "conv"
        return {f"{name}.weight": (c, c, 3, 3), f"{name}.bias": (c,)}
    if m.kind == "norm":
        (c,) = m.dims
        return {"weight": (c,), "bias": (c,)}
    cin, cout = m.dims
    return {"weight": (cout, cin, 3, 3) if m.kind == "conv" else (cout, cin), "bias": (cout,)}


def _key(prefix: str, suffix: str) -> str:
    return f"{prefix}.{suffix}"


def _split_legacy_qkv(weight: torch.Tensor, bias: torch.Tensor, heads: int):
    """Split QKVAttentionLegacy's fused qkv (per head [q, k, v]) into q, k, v linear params."""
    c = weight.shape[1]
    d = c // heads
    w = weight.reshape(heads, 3, d, c)
    b = bias.reshape(heads, 3, d)
    return [(w[:, i].reshape(heads * d, c).contiguous(), b[:, i].reshape(heads * d).contiguous()) for i in range(3)]


def _few(keys: list[str], k: int = 5) -> str:
    more = f" (and {len(keys) - k} more)" if len(keys) > k else ""
    return ", ".join(repr(x) for x in keys[:k]) + more


def convert_guided_diffusion_state_dict(state: dict[str, torch.Tensor], preset: UNetPreset | str) -> dict[str, torch.Tensor]:
    """Convert an openai UNetModel state dict into a state dict for ``build_unet(preset)``.

    Raises CheckpointError when the keys or shapes do not match the preset exactly.
    """
    p = _resolve(preset)
    if not isinstance(state, dict):
        raise CheckpointError(f"expected a state dict (dict of tensors), got {type(state).__name__}")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor; "
                                  "expected an openai UNetModel state dict")
    for level in (*p.attention_levels, len(p.block_out_channels) - 1):
        if p.block_out_channels[level] % p.attention_head_dim:
            raise ConfigError(f"preset {p.name!r}: {p.block_out_channels[level]} channels are not a multiple "
                              f"of attention_head_dim {p.attention_head_dim}")

    mods = _layout(p)
    expected = {_key(m.src, s): shape for m in mods for s, shape in _shapes(m).items()}
    hint = f"the checkpoint is probably for another architecture than preset {p.name!r}"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise CheckpointError(f"guided-diffusion state dict does not fit preset {p.name!r}: "
                              f"{'; '.join(parts)}; {hint}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"guided-diffusion state dict does not fit preset {p.name!r}: {k!r} has shape "
                                  f"{tuple(state[k].shape)}, expected {shape}; {hint}")

    out: dict[str, torch.Tensor] = {}
    for m in mods:
        if m.kind == "res":
            for s in _shapes(m):
                sub, param = s.rsplit(".", 1)
                out[f"{m.dst}.{_RESBLOCK[sub]}.{param}"] = state[_key(m.src, s)]
        elif m.kind == "attn":
            (c,) = m.dims
            heads = c // p.attention_head_dim
            qkv = _split_legacy_qkv(state[_key(m.src, "qkv.weight")], state[_key(m.src, "qkv.bias")], heads)
            for name, (w, b) in zip(("to_q", "to_k", "to_v"), qkv):
                out[f"{m.dst}.{name}.weight"], out[f"{m.dst}.{name}.bias"] = w, b
            out[f"{m.dst}.group_norm.weight"] = state[_key(m.src, "norm.weight")]
            out[f"{m.dst}.group_norm.bias"] = state[_key(m.src, "norm.bias")]
            out[f"{m.dst}.to_out.0.weight"] = state[_key(m.src, "proj_out.weight")].squeeze(-1)
            out[f"{m.dst}.to_out.0.bias"] = state[_key(m.src, "proj_out.bias")]
        elif m.kind in ("down", "up"):
            name = "op" if m.kind == "down" else "conv"
            for param in ("weight", "bias"):
                out[f"{m.dst}.conv.{param}"] = state[_key(m.src, f"{name}.{param}")]
        else:
            for param in ("weight", "bias"):
                out[f"{m.dst}.{param}"] = state[_key(m.src, param)]
    return out


def _tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def load_guided_diffusion_checkpoint(path: str | os.PathLike, preset: UNetPreset | str):
    """Load an openai guided-diffusion / P2 checkpoint file into ``build_unet(preset)`` (eval mode).

    Accepts a plain state dict, or one nested under a "state_dict" or "model" key.
    """
    return guided_diffusion_unet(read_checkpoint_file(path), preset, path)


def guided_diffusion_unet(obj: object, preset: UNetPreset | str, path: str | os.PathLike):
    """``build_unet(preset)`` (eval mode) with the weights of `obj`, what torch.load read from the
    guided-diffusion / P2 checkpoint file `path`."""
    p = _resolve(preset)
    if isinstance(obj, dict) and not _tensor_dict(obj):
        for wrapper in ("state_dict", "model"):
            if _tensor_dict(obj.get(wrapper)):
                obj = obj[wrapper]
                break
    if not _tensor_dict(obj):
        if isinstance(obj, dict):
            what = "an empty dict" if not obj else "a dict that is not a tensor state dict"
        else:
            what = f"a {type(obj).__name__}"
        raise CheckpointError(f"checkpoint {path} holds {what}; expected a state dict of tensors "
                              "(openai guided-diffusion UNetModel)")
    try:
        converted = convert_guided_diffusion_state_dict(obj, p)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    unet = build_unet(p)
    unet.load_state_dict(converted, strict=True)
    return unet.eval()
