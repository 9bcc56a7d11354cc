"""Wan2.1 VAE encoder: video -> normalised latents, one chunk of frames at a time.

`WanVAEEncoder` holds the encoder and quant_conv parameters by their diffusers
`AutoencoderKLWan` names, channel-last like the decoder (`vae.py`, whose layers it shares).
As upstream's `WanVAE.encode`: the first frame alone, then 4 frames at a time, every causal
conv carrying its last 2 input frames and every temporal downsampler its last input frame
from chunk to chunk (here as explicit state, so a long video is encoded with bounded memory
under jit); 1 + 4k frames give 1 + k latent frames (trailing frames that do not fill a chunk
are dropped, as upstream does). The latents are the posterior mean, normalised per channel:
(mu - mean) * (1 / std).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pyramid_jax.models.convs import conv2d
from pyramid_jax.models.named import NamedWeights, channel_axes
from pyramid_jax.models.vae.modeling import ShapeTable, VAEConfig, _conv, attention, causal_conv, resnet, rms_norm

FRAMES_PER_CHUNK = 4  # video frames per latent frame after the first


def param_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Every encoder parameter (and quant_conv), by its diffusers name, channel-last."""
    out = ShapeTable()
    conv, res = out.conv, out.res
    dims = [cfg.base_dim * u for u in (1,) + cfg.dim_mult]
    conv("encoder.conv_in", 3, dims[0], (3, 3, 3))
    for kind, name, cin, cout in _down_layers(cfg):
        if kind == "res":
            res(name, cin, cout)
        else:
            conv(name + ".resample.1", cout, cout, (3, 3))
            if kind == "downsample3d":
                conv(name + ".time_conv", cout, cout, (3, 1, 1))
    d = dims[-1]
    out.mid_block("encoder.mid_block", d)
    out["encoder.norm_out.gamma"] = (d,)
    conv("encoder.conv_out", d, 2 * cfg.z_dim, (3, 3, 3))
    conv("quant_conv", 2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1))
    return dict(out)


def _down_layers(cfg: VAEConfig):
    """diffusers' flat encoder.down_blocks list: (kind, name, in, out) with kind "res",
    "downsample2d" or "downsample3d"."""
    dims = [cfg.base_dim * u for u in (1,) + cfg.dim_mult]
    layers, k, n = [], 0, len(cfg.dim_mult)
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(cfg.num_res_blocks):
            layers.append(("res", f"encoder.down_blocks.{k}", cin, cout))
            cin, k = cout, k + 1
        if i != n - 1:
            kind = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
            layers.append((kind, f"encoder.down_blocks.{k}", cout, cout))
            k += 1
    return layers


class WanVAEEncoder(NamedWeights):
    """The Wan VAE's encoder: video in [-1, 1] -> normalised latents. Parameters by diffusers
    name; they come from a checkpoint (weights.checkpoint.load_vae_encoder)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg, param_shapes(cfg), channel_axes)

    def __call__(self, video):
        """video [B, T, H, W, 3] -> latents [B, 1 + (T - 1) // 4, H/8, W/8, z_dim]."""
        return encode_video(self.params(), self.cfg, video)


def downsample(p, name, x, mode, first, state, new_state):
    """Zero-pad right and bottom, Conv2d stride 2; downsample3d then halves time with a causal
    conv (kernel 3, stride 2) over the previous chunk's last frame and this chunk's frames
    (skipped for the first chunk, whose frame is only remembered)."""
    b, t, hh, ww, c = x.shape
    y = jnp.pad(x.reshape(b * t, hh, ww, c), ((0, 0), (0, 1), (0, 1), (0, 0)))
    w = p[name + ".resample.1.weight"]
    y = conv2d(y, w.astype(x.dtype), [(0, 0), (0, 0)], stride=2) + p[name + ".resample.1.bias"].astype(x.dtype)
    x = y.reshape(b, t, *y.shape[1:])
    if mode == "downsample3d":
        tc = name + ".time_conv"
        new_state[tc] = x[:, -1:]
        if not first:
            xx = jnp.concatenate([state[tc].astype(x.dtype), x], axis=1)
            x = jax.lax.conv_general_dilated(xx, p[tc + ".weight"].astype(x.dtype), (2, 1, 1), "VALID",
                                             dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
                                             precision=jax.lax.Precision.HIGHEST) + p[tc + ".bias"].astype(x.dtype)
    return x


def _encoder(p, cfg: VAEConfig, x, state, first):
    new_state = {}
    x = causal_conv(p, "encoder.conv_in", x, state, new_state)
    for kind, name, _, _ in _down_layers(cfg):
        if kind == "res":
            x = resnet(p, name, x, state, new_state)
        else:
            x = downsample(p, name, x, kind, first, state, new_state)
    x = resnet(p, "encoder.mid_block.resnets.0", x, state, new_state)
    x = attention(p, "encoder.mid_block.attentions.0", x)
    x = resnet(p, "encoder.mid_block.resnets.1", x, state, new_state)
    x = jax.nn.silu(rms_norm(p, "encoder.norm_out", x))
    x = causal_conv(p, "encoder.conv_out", x, state, new_state)
    return _conv(x, p["quant_conv.weight"], p["quant_conv.bias"], [(0, 0)] * 3), new_state


def normalize(cfg: VAEConfig, mu):
    """(mu - mean) * (1 / std) per channel (the reciprocal taken in float32, as upstream's
    scale). mu [..., C]."""
    inv_std = 1.0 / jnp.asarray(cfg.latents_std, jnp.float32)
    return ((mu.astype(jnp.float32) - jnp.asarray(cfg.latents_mean, jnp.float32)) * inv_std).astype(mu.dtype)


def encode_chunk(p, cfg: VAEConfig, frames, state, first: bool):
    """One chunk: frames [B, 1 (first) or 4, H, W, 3] in [-1, 1] -> (latents [B, 1, H/8, W/8,
    z_dim] normalised, new state). The first chunk starts from state {} (causal zeros) and
    returns every cache the later chunks carry."""
    out, new_state = _encoder(p, cfg, frames, state, first)
    return normalize(cfg, out[..., :cfg.z_dim]), new_state


def encode_video(p, cfg: VAEConfig, video):
    """video [B, T, H, W, 3] -> [B, 1 + (T - 1) // 4, H/8, W/8, z_dim], chunk by chunk."""
    n = 1 + (video.shape[1] - 1) // FRAMES_PER_CHUNK
    start, step = _steps(cfg)
    first, state = start(p, video[:, :1])
    outs = [first]
    for i in range(1, n):
        z, state = step(p, video[:, 1 + FRAMES_PER_CHUNK * (i - 1):1 + FRAMES_PER_CHUNK * i], state)
        outs.append(z)
    return jnp.concatenate(outs, axis=1)


@functools.lru_cache(maxsize=None)
def _steps(cfg: VAEConfig):
    """The jitted first chunk and next chunk of a config, shared by every call (no recompiles)."""
    return (jax.jit(lambda p, x: encode_chunk(p, cfg, x, {}, first=True)),
            jax.jit(lambda p, x, s: encode_chunk(p, cfg, x, s, first=False)))
