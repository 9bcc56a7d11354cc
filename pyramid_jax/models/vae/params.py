"""Wan VAE weights: upstream `Wan2.1_VAE.pth` / diffusers `AutoencoderKLWan` -> the decoder's
params and, when the file has them, the encoder's.

The diffusers names are canonical (`modeling.py` and `encoder.py` beside it read them);
upstream names are mapped onto them; kernels are stored channel-last. A checkpoint holds one
flat dict: decoder + post_quant_conv, and encoder + quant_conv when the source had an encoder.
"""

from __future__ import annotations

import re

import numpy as np
from flax import nnx

from pyramid_jax.models.vae import encoder as vae_encoder
from pyramid_jax.models.vae.modeling import VAEConfig, WanVAEDecoder, param_shapes
from pyramid_jax.models.table import ConversionError
from pyramid_jax.models.table import Name, checkpoint_shapes, params_from


_RES = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
        "residual.3.gamma": "norm2.gamma", "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
        "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}


def is_upstream(keys) -> bool:
    return any(k.startswith("decoder.upsamples.") or k.startswith("decoder.middle.") for k in keys)


ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def _upstream_encoder_name(key: str) -> str | None:
    """The diffusers name of an upstream encoder key (its down list is flat in both)."""
    new = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
           "encoder.conv1.weight": "encoder.conv_in.weight", "encoder.conv1.bias": "encoder.conv_in.bias",
           "encoder.head.0.gamma": "encoder.norm_out.gamma", "encoder.head.2.weight": "encoder.conv_out.weight",
           "encoder.head.2.bias": "encoder.conv_out.bias"}.get(key)
    if new is None and (m := re.match(r"encoder\.middle\.(\d)\.(.+)$", key)):
        i, rest = int(m.group(1)), m.group(2)
        new = (f"encoder.mid_block.attentions.0.{rest}" if i == 1
               else f"encoder.mid_block.resnets.{i // 2}.{_RES.get(rest, rest)}")
    if new is None and (m := re.match(r"encoder\.downsamples\.(\d+)\.(.+)$", key)):
        new = f"encoder.down_blocks.{m.group(1)}.{_RES.get(m.group(2), m.group(2))}"
    return new


def upstream_rename(sd: dict) -> dict:
    """Rename upstream Wan VAE keys (decoder and encoder) to diffusers names."""
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
            out[_upstream_encoder_name(key) or key] = val
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


def _layout(key: str, ndim: int) -> tuple:
    """(to_param, to_ckpt) of one tensor: torch conv kernels -> channel-last, norm gammas
    [C, 1, 1(, 1)] -> [C]; biases keep theirs. ndim: the parameter's."""
    if key.endswith("gamma"):
        ones = (1, 1) if "attentions" in key else (1, 1, 1)
        return (lambda a: a.reshape(-1)), (lambda a: a.reshape(a.shape + ones))
    if key.endswith("weight") and ndim == 5:  # Conv3d [out, in, t, h, w] <-> [t, h, w, in, out]
        return (lambda a: a.transpose(2, 3, 4, 1, 0)), (lambda a: a.transpose(4, 3, 0, 1, 2))
    if key.endswith("weight") and ndim == 4:  # Conv2d [out, in, h, w] <-> [h, w, in, out]
        return (lambda a: a.transpose(2, 3, 1, 0)), (lambda a: a.transpose(3, 2, 0, 1))
    return (lambda a: a), (lambda a: a)


def names(cfg: VAEConfig) -> list[Name]:
    """The decoder's name table: diffusers key -> its parameter (WanVAEDecoder.weights[key])."""
    return [Name(k, ("weights", k), *_layout(k, len(shape))) for k, shape in param_shapes(cfg).items()]


def encoder_names(cfg: VAEConfig) -> list[Name]:
    """The encoder's name table: diffusers key -> WanVAEEncoder.weights[key]."""
    return [Name(k, ("weights", k), *_layout(k, len(shape))) for k, shape in vae_encoder.param_shapes(cfg).items()]


def abstract_params(cfg: VAEConfig, module=WanVAEDecoder) -> dict:
    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: module(cfg)), nnx.Param))


def params(sd: dict, cfg: VAEConfig) -> dict:
    """Check names and shapes against the decoder (and the encoder, if the file has one: all
    of it or a ConversionError naming what is missing), then lay kernels out channel-last: the
    flat {diffusers name: array} dict a vae checkpoint holds."""
    decoder = {k: v for k, v in sd.items() if not k.startswith(ENCODER_PREFIXES)}
    encoder = {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)}
    out = params_from(decoder, names(cfg), abstract_params(cfg))["weights"]
    if encoder:
        out.update(params_from(encoder, encoder_names(cfg), abstract_params(cfg, vae_encoder.WanVAEEncoder))["weights"])
    return out


def random_vae_params(cfg: VAEConfig, seed: int = 0, encoder: bool = False) -> dict:
    """Random decoder params of a config (demos and tests before trained weights exist), and
    the encoder's too with encoder=True."""
    rng = np.random.default_rng(seed)
    sd = {}
    shapes = checkpoint_shapes(names(cfg), abstract_params(cfg))
    if encoder:
        shapes.update(checkpoint_shapes(encoder_names(cfg), abstract_params(cfg, vae_encoder.WanVAEEncoder)))
    for k, shape in shapes.items():
        if k.endswith("gamma"):
            sd[k] = np.ones(shape, np.float32)
        elif k.endswith("bias"):
            sd[k] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[k] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return params(sd, cfg)


def canonical(sd: dict) -> tuple[dict, str]:
    """(the state dict in diffusers names, the layout it came in)."""
    return (upstream_rename(sd), "upstream") if is_upstream(sd) else (sd, "diffusers")


def describe(cfg) -> str:
    return f"z {cfg.z_dim}, base dim {cfg.base_dim}, mult {list(cfg.dim_mult)}"
