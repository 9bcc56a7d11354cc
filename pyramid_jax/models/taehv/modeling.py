"""TAEHV, the tiny video autoencoder (`taew2_1.pth` for Wan2.1's latent space): a preview-
quality decoder (and encoder) cheap enough to decode every chunk as it is made.

`TAEHV` holds both halves by the checkpoint's own names (`decoder.3.conv.0.weight`, ...;
the positions in upstream's nn.Sequential), kernels channel-last [kh, kw, in, out]. The math
is pure functions over that flat dict, on channel-last frames [B, T, H, W, C].

The layers are 2-D convolutions applied to every frame, plus three kinds that mix time:
- MemBlock: conv(cat(x_t, x_{t-1})) + x_t, the previous frame's input at the same block
  (zeros before the first); carried here as explicit state, so decoding chunk by chunk
  equals decoding the whole video at once (upstream's parallel and sequential paths);
- TGrow (decoder): a 1x1 conv to `stride` times the channels, split into `stride` frames;
- TPool (encoder): `stride` consecutive frames stacked on channels, a 1x1 conv.
Frame counts, as upstream's: the decoder gives 4 frames per latent frame and keeps them all
(`decode_video`); its streaming use drops the first 3 of the video (upstream's demo does, so a
video of F latent frames has 1 + 4 (F - 1) frames, as with the Wan VAE). The encoder takes
4 frames per latent frame (a multiple of 4).
Values: frames in [0, 1] (upstream's convention; the video writer maps them), latents as the
DiT makes them (the normalised Wan latents: no scaling).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pyramid_jax.models.convs import conv2d, upsample2x_conv
from pyramid_jax.models.named import NamedWeights, channel_axes

TIME_STRIDE, SPACE_STRIDE = 4, 8


@dataclasses.dataclass(frozen=True)
class TAEHVConfig:
    latent_channels: int = 16
    image_channels: int = 3
    decoder_time_upscale: tuple[bool, ...] = (True, True)
    decoder_space_upscale: tuple[bool, ...] = (True, True, True)
    dtype: str = "float32"

    def __post_init__(self):
        for f in ("decoder_time_upscale", "decoder_space_upscale"):
            object.__setattr__(self, f, tuple(bool(v) for v in getattr(self, f)))

    @property
    def frames_to_trim(self) -> int:
        """Frames the streaming decode drops at the start of a video."""
        return 2 ** sum(self.decoder_time_upscale) - 1

    @property
    def time_stride(self) -> int:
        return 2 ** sum(self.decoder_time_upscale)


# A layer: (kind, in, out, stride); kind conv (3x3, bias), conv_nb (3x3, no bias), relu, clamp,
# mem (MemBlock), tpool / tgrow (1x1 over `stride` frames), up (nearest, x stride in space).
def encoder_layers(cfg: TAEHVConfig) -> list[tuple]:
    c = 64
    stage = lambda t: [("tpool", c, c, t), ("conv_nb", c, c, 2)] + [("mem", c, c, 1)] * 3
    return ([("conv", cfg.image_channels, c, 1), ("relu", 0, 0, 1)] + stage(2) + stage(2) + stage(1)
            + [("conv", c, cfg.latent_channels, 1)])


def decoder_layers(cfg: TAEHVConfig) -> list[tuple]:
    n = (256, 128, 64, 64)
    time = (1,) + tuple(2 if t else 1 for t in cfg.decoder_time_upscale)
    out = [("clamp", 0, 0, 1), ("conv", cfg.latent_channels, n[0], 1), ("relu", 0, 0, 1)]
    for i in range(3):
        out += [("mem", n[i], n[i], 1)] * 3
        out += [("up", 0, 0, 2 if cfg.decoder_space_upscale[i] else 1), ("tgrow", n[i], n[i], time[i]),
                ("conv_nb", n[i], n[i + 1], 1)]
    return out + [("relu", 0, 0, 1), ("conv", n[3], cfg.image_channels, 1)]


def _layer_shapes(prefix: str, layers: list[tuple]) -> dict[str, tuple[int, ...]]:
    out = {}
    for i, (kind, cin, cout, stride) in enumerate(layers):
        name = f"{prefix}.{i}"
        if kind in ("conv", "conv_nb"):
            out[name + ".weight"] = (3, 3, cin, cout)
            if kind == "conv":
                out[name + ".bias"] = (cout,)
        elif kind == "mem":
            for j, ci in ((0, 2 * cin), (2, cout), (4, cout)):
                out[f"{name}.conv.{j}.weight"] = (3, 3, ci, cout)
                out[f"{name}.conv.{j}.bias"] = (cout,)
            if cin != cout:
                out[name + ".skip.weight"] = (1, 1, cin, cout)
        elif kind == "tpool":
            out[name + ".conv.weight"] = (1, 1, cin * stride, cout)
        elif kind == "tgrow":
            out[name + ".conv.weight"] = (1, 1, cin, cout * stride)
    return out


def param_shapes(cfg: TAEHVConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter (encoder and decoder) by its checkpoint name, channel-last."""
    return {**_layer_shapes("encoder", encoder_layers(cfg)), **_layer_shapes("decoder", decoder_layers(cfg))}


class TAEHV(NamedWeights):
    """TAEHV's encoder and decoder; parameters from `convert_checkpoint.py --kind taehv`
    (weights.checkpoint.load_taehv) or random_taehv_params."""

    def __init__(self, cfg: TAEHVConfig):
        super().__init__(cfg, param_shapes(cfg), channel_axes)

    def decode_video(self, z):
        """z [B, F, h, w, C] -> frames [B, 4 F, 8h, 8w, 3] (about [0, 1]), all kept."""
        return _whole_video(self.cfg)(self.params(), z)

    def encode_video(self, video):
        """video [B, T, H, W, 3] in [0, 1], T a multiple of 4 -> latents [B, T / 4, H/8, W/8, C]."""
        return encode_video(self.params(), self.cfg, video)


# ---- layers ------------------------------------------------------------------------
def _conv(p, name, x, stride=1, bias=True):
    """3x3 (padding 1) or 1x1 conv of every frame. x [B, T, H, W, C] -> [B, T, H', W', C']."""
    w = p[name + ".weight"]
    b, t = x.shape[:2]
    pad = w.shape[0] // 2
    y = conv2d(x.reshape((b * t,) + x.shape[2:]), w.astype(x.dtype), [(pad, pad), (pad, pad)], stride)
    if bias:
        y = y + p[name + ".bias"].astype(x.dtype)
    return y.reshape((b, t) + y.shape[1:])


def _memblock(p, name, x, past):
    h = jax.nn.relu(_conv(p, name + ".conv.0", jnp.concatenate([x, past], axis=-1)))
    h = jax.nn.relu(_conv(p, name + ".conv.2", h))
    h = _conv(p, name + ".conv.4", h)
    skip = _conv(p, name + ".skip", x, bias=False) if name + ".skip.weight" in p else x
    return jax.nn.relu(h + skip)


def run_layers(p, prefix: str, layers: list[tuple], x, memory: dict):
    """Apply the layers to x [B, T, H, W, C] after the frames whose last inputs `memory` holds
    ({layer index: [B, H, W, C]}; missing = zeros, a video's start). Returns (out, memory)."""
    new = {}
    up = 1  # a nearest upsample not applied yet: the 1x1 tgrow commutes with it, and the 3x3
    # conv after it runs as phase convs on the small grid (convs.upsample2x_conv)
    for i, (kind, _, _, stride) in enumerate(layers):
        name = f"{prefix}.{i}"
        phase_conv = kind == "conv_nb" and up == 2 and p[name + ".weight"].shape[0] == 3
        if up > 1 and kind != "tgrow" and not phase_conv:
            x, up = jnp.repeat(jnp.repeat(x, up, axis=2), up, axis=3), 1
        if phase_conv:
            b, t = x.shape[:2]
            y = upsample2x_conv(x.reshape((b * t,) + x.shape[2:]), p[name + ".weight"])
            x, up = y.reshape((b, t) + y.shape[1:]), 1
        elif kind == "mem":
            last = memory.get(i, jnp.zeros_like(x[:, 0]))
            past = jnp.concatenate([last[:, None].astype(x.dtype), x[:, :-1]], axis=1)
            new[i] = x[:, -1]
            x = _memblock(p, name, x, past)
        elif kind in ("conv", "conv_nb"):
            x = _conv(p, name, x, stride, bias=kind == "conv")
        elif kind == "relu":
            x = jax.nn.relu(x)
        elif kind == "clamp":
            x = jnp.tanh(x / 3) * 3
        elif kind == "up":
            up *= stride
        elif kind == "tgrow":  # frame t's channel block s becomes frame stride * t + s
            y = _conv(p, name + ".conv", x, bias=False)
            b, t, hh, ww, c = y.shape
            x = y.reshape(b, t, hh, ww, stride, c // stride).transpose(0, 1, 4, 2, 3, 5).reshape(
                b, t * stride, hh, ww, c // stride)
        elif kind == "tpool":  # frames stride * t .. stride * t + stride - 1 stacked on channels
            b, t, hh, ww, c = x.shape
            x = x.reshape(b, t // stride, stride, hh, ww, c).transpose(0, 1, 3, 4, 2, 5).reshape(
                b, t // stride, hh, ww, stride * c)
            x = _conv(p, name + ".conv", x, bias=False)
    if up > 1:
        x = jnp.repeat(jnp.repeat(x, up, axis=2), up, axis=3)
    return x, new


def decode_chunk(p, cfg: TAEHVConfig, z, memory: dict):
    """z [B, F, h, w, C] after the frames `memory` remembers -> (frames [B, 4 F, 8h, 8w, 3],
    memory after z)."""
    return run_layers(p, "decoder", decoder_layers(cfg), z, memory)


def decode_video(p, cfg: TAEHVConfig, z):
    return decode_chunk(p, cfg, z, {})[0]


def encode_chunk(p, cfg: TAEHVConfig, video, memory: dict):
    """video [B, T, H, W, 3] (T a multiple of 4) after `memory` -> (latents [B, T / 4, ...], memory)."""
    return run_layers(p, "encoder", encoder_layers(cfg), video, memory)


def encode_video(p, cfg: TAEHVConfig, video, frames_per_call: int = 16):
    """video [B, T, H, W, 3] in [0, 1], T a multiple of 4 -> [B, T / 4, H/8, W/8, C], encoded
    `frames_per_call` frames at a time (bounded memory; equal to one call)."""
    t = video.shape[1]
    if t % TIME_STRIDE:
        raise ValueError(f"TAEHV encodes 4 frames per latent frame; got {t} frames")
    step = _encode_step(cfg)
    memory, outs = {}, []
    for s in range(0, t, frames_per_call):
        z, memory = step(p, video[:, s:s + frames_per_call], memory)
        outs.append(z)
    return jnp.concatenate(outs, axis=1)


def init_memory(p, cfg: TAEHVConfig, batch: int, latent_hw: tuple[int, int], dtype=jnp.float32) -> dict:
    """Zero decoder memory for a latent grid (what a video's first chunk starts from)."""
    x = jax.ShapeDtypeStruct((batch, 1, *latent_hw, cfg.latent_channels), dtype)
    shapes = jax.eval_shape(lambda p, x: decode_chunk(p, cfg, x, {})[1], p, x)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def to_uint8_on_device(frames):
    """[0, 1] -> uint8 (clamp, x 255, round)."""
    return jnp.round(jnp.clip(frames.astype(jnp.float32), 0, 1) * 255).astype(jnp.uint8)


class StreamingTAEHV:
    """Decodes each chunk as the rollout makes it, carrying the MemBlock memory, and drops the
    video's first `frames_to_trim` frames: push(z [B, F, C, h, w] channel-first) -> uint8
    [B, T, 8h, 8w, 3]. Same interface as vae.StreamingDecoder."""

    def __init__(self, model: TAEHV, batch: int, latent_hw: tuple[int, int]):
        cfg = model.cfg
        self.params, self.cfg = model.params(), cfg
        self.memory = init_memory(self.params, cfg, batch, latent_hw, jnp.dtype(cfg.dtype))
        self.to_trim = cfg.frames_to_trim
        self._step = _streaming_step(cfg)

    def push(self, z) -> np.ndarray:
        return np.asarray(self.push_on_device(z))

    def push_on_device(self, z) -> jax.Array:
        z = jnp.moveaxis(jnp.asarray(z), 2, -1).astype(jnp.dtype(self.cfg.dtype))
        frames, self.memory = self._step(self.params, z, self.memory)
        trim, self.to_trim = min(self.to_trim, frames.shape[1]), max(0, self.to_trim - frames.shape[1])
        return frames[:, trim:]


@functools.lru_cache(maxsize=None)
def _encode_step(cfg: TAEHVConfig):
    return jax.jit(lambda p, x, m: encode_chunk(p, cfg, x, m))


@functools.lru_cache(maxsize=None)
def _whole_video(cfg: TAEHVConfig):
    return jax.jit(lambda p, z: decode_video(p, cfg, z))


@functools.lru_cache(maxsize=None)
def _streaming_step(cfg: TAEHVConfig):
    """The jitted chunk decode of a config, shared by every StreamingTAEHV (none compiles again)."""
    def step(p, z, memory):
        frames, memory = decode_chunk(p, cfg, z, memory)
        return to_uint8_on_device(frames), memory

    return jax.jit(step)


class FramesEncoder:
    """TAEHV's encoder with the Wan VAE encoder's interface, for given frames: video
    [B, T, H, W, 3] in [-1, 1] -> latents [B, 1 + (T - 1) // 4, H/8, W/8, C]. The first frame
    is repeated 3 times in front (the frames the streaming decode drops), so 1 + 4k frames
    give 1 + k latent frames, as with the Wan VAE; trailing frames short of 4 are dropped."""

    def __init__(self, model: TAEHV):
        self.params, self.cfg = model.params(), model.cfg

    def __call__(self, video):
        t = 1 + (video.shape[1] - 1) // TIME_STRIDE * TIME_STRIDE
        x = (jnp.asarray(video[:, :t]) + 1.0) / 2.0
        x = jnp.concatenate([jnp.repeat(x[:, :1], self.cfg.frames_to_trim, axis=1), x], axis=1)
        return encode_video(self.params, self.cfg, x)
