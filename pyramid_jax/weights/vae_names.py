"""Wan VAE weights: upstream `Wan2.1_VAE.pth` / diffusers `AutoencoderKLWan` -> decoder params.

The diffusers names are canonical (`models/vae.py` reads them); upstream names are mapped
onto them. Only the decoder and post_quant_conv are kept (encoder keys are recognised and
dropped); kernels are stored channel-last.
"""

from __future__ import annotations

import re

import numpy as np

from pyramid_jax.models.vae import VAEConfig
from pyramid_jax.weights.errors import ConversionError, check_state_dict

OTHER_LAYOUT = "diffusers"  # the non-upstream layout these names read

_RES = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
        "residual.3.gamma": "norm2.gamma", "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
        "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}


def is_upstream(keys) -> bool:
    return any(k.startswith("decoder.upsamples.") or k.startswith("decoder.middle.") for k in keys)


def upstream_rename(sd: dict) -> dict:
    """Rename upstream Wan VAE keys (decoder part) to diffusers names; encoder keys dropped."""
    ups = sorted({int(m.group(1)) for k in sd if (m := re.match(r"decoder\.upsamples\.(\d+)\.", k))})
    # upstream's flat list: per stage, its resnets then (except the last stage) one resampler
    stage_of, stage, local = {}, 0, 0
    for idx in ups:
        is_resample = any(k.startswith(f"decoder.upsamples.{idx}.resample.") for k in sd)
        stage_of[idx] = (stage, None if is_resample else local)
        if is_resample:
            stage, local = stage + 1, 0
        else:
            local += 1
    out = {}
    for key, val in sd.items():
        if key.startswith(("encoder.", "conv1.")):
            continue
        new = {"conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias",
               "decoder.conv1.weight": "decoder.conv_in.weight", "decoder.conv1.bias": "decoder.conv_in.bias",
               "decoder.head.0.gamma": "decoder.norm_out.gamma", "decoder.head.2.weight": "decoder.conv_out.weight",
               "decoder.head.2.bias": "decoder.conv_out.bias"}.get(key)
        if new is None and (m := re.match(r"decoder\.middle\.(\d)\.(.+)$", key)):
            i, rest = int(m.group(1)), m.group(2)
            new = (f"decoder.mid_block.attentions.0.{rest}" if i == 1
                   else f"decoder.mid_block.resnets.{i // 2}.{_RES.get(rest, rest)}")
        if new is None and (m := re.match(r"decoder\.upsamples\.(\d+)\.(.+)$", key)):
            s, j = stage_of[int(m.group(1))]
            rest = m.group(2)
            new = (f"decoder.up_blocks.{s}.upsamplers.0.{rest}" if j is None
                   else f"decoder.up_blocks.{s}.resnets.{j}.{_RES.get(rest, rest)}")
        out[new or key] = val
    return out


def infer_config(sd: dict, dtype: str = "float32") -> VAEConfig:
    def shape(k):
        if k not in sd:
            raise ConversionError(f"cannot infer the VAE shape: missing key {k}")
        return sd[k].shape

    z = shape("post_quant_conv.weight")[0]
    out_ch, base = shape("decoder.conv_out.weight")[:2]
    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))})
    if not stages:
        raise ConversionError("no decoder.up_blocks in the checkpoint (is it a Wan VAE?)")
    res = sorted({int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))})
    outs = [shape(f"decoder.up_blocks.{i}.resnets.0.conv1.weight")[0] for i in stages]
    mult = tuple(int(o // base) for o in outs[::-1])
    t_up = tuple(f"decoder.up_blocks.{i}.upsamplers.0.time_conv.weight" in sd for i in stages[:-1])
    return VAEConfig(z_dim=int(z), base_dim=int(base), dim_mult=mult, num_res_blocks=len(res) - 1,
                     temperal_downsample=t_up[::-1], out_channels=int(out_ch), dtype=dtype)


def expected_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Every decoder key (diffusers names, torch layouts) of a config, with its shape."""
    out = {"post_quant_conv.weight": (cfg.z_dim, cfg.z_dim, 1, 1, 1), "post_quant_conv.bias": (cfg.z_dim,)}

    def conv(name, cin, cout, k):
        out[name + ".weight"] = (cout, cin) + k
        out[name + ".bias"] = (cout,)

    def res(name, cin, cout):
        out[name + ".norm1.gamma"] = (cin, 1, 1, 1)
        conv(name + ".conv1", cin, cout, (3, 3, 3))
        out[name + ".norm2.gamma"] = (cout, 1, 1, 1)
        conv(name + ".conv2", cout, cout, (3, 3, 3))
        if cin != cout:
            conv(name + ".conv_shortcut", cin, cout, (1, 1, 1))

    dims = cfg.dims
    conv("decoder.conv_in", cfg.z_dim, dims[0], (3, 3, 3))
    res("decoder.mid_block.resnets.0", dims[0], dims[0])
    a = "decoder.mid_block.attentions.0"
    out[a + ".norm.gamma"] = (dims[0], 1, 1)
    conv(a + ".to_qkv", dims[0], 3 * dims[0], (1, 1))
    conv(a + ".proj", dims[0], dims[0], (1, 1))
    res("decoder.mid_block.resnets.1", dims[0], dims[0])
    n = len(cfg.dim_mult)
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        cin = cin // 2 if i > 0 else cin
        for j in range(cfg.num_res_blocks + 1):
            res(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i != n - 1:
            u = f"decoder.up_blocks.{i}.upsamplers.0"
            conv(u + ".resample.1", cout, cout // 2, (3, 3))
            if cfg.temperal_upsample[i]:
                conv(u + ".time_conv", cout, 2 * cout, (3, 1, 1))
    out["decoder.norm_out.gamma"] = (dims[-1], 1, 1, 1)
    conv("decoder.conv_out", dims[-1], cfg.out_channels, (3, 3, 3))
    return out


def params(sd: dict, cfg: VAEConfig) -> dict:
    """Check names and shapes, then lay kernels out channel-last."""
    sd = {k: v for k, v in sd.items() if not k.startswith(("encoder.", "quant_conv."))}
    check_state_dict(sd, expected_shapes(cfg))
    out = {}
    for k, v in sd.items():
        a = np.asarray(v)
        if a.ndim == 5:
            a = a.transpose(2, 3, 4, 1, 0)
        elif a.ndim == 4 and k.endswith("weight"):
            a = a.transpose(2, 3, 1, 0)
        elif k.endswith("gamma"):
            a = a.reshape(-1)
        out[k] = a
    return out


def random_vae_params(cfg: VAEConfig, seed: int = 0) -> dict:
    """Random decoder params of a config (demos and tests before trained weights exist)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for k, shape in expected_shapes(cfg).items():
        if k.endswith("gamma"):
            sd[k] = np.ones(shape, np.float32)
        elif k.endswith("bias"):
            sd[k] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[k] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return params(sd, cfg)
