"""Wan2.1 VAE decoder, streaming one latent frame at a time.

`WanVAEDecoder` holds its parameters by their diffusers `AutoencoderKLWan` names
(convolution kernels stored channel-last: Conv3d [kt, kh, kw, in, out], Conv2d
[kh, kw, in, out]; norm gammas [C]); the math is pure functions over that flat dict.
Activations are channel-last [B, T, H, W, C].

Every causal Conv3d with a temporal kernel of 3 keeps the last 2 frames of its input as
explicit state (zeros at the start, which is upstream's causal zero padding), so decoding
runs chunk by chunk under jit with static shapes. The first latent frame gives 1 video
frame (the temporal upsamplers are skipped), every later one 4.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from pyramid_jax.models.convs import conv2d, upsample2x_conv
from pyramid_jax.models.named import NamedWeights, channel_axes

LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    z_dim: int = 16
    base_dim: int = 96
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    out_channels: int = 3
    latents_mean: tuple[float, ...] = LATENTS_MEAN
    latents_std: tuple[float, ...] = LATENTS_STD
    dtype: str = "float32"

    def __post_init__(self):
        for f in ("dim_mult", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, f, tuple(getattr(self, f)))

    @property
    def temperal_upsample(self):
        return self.temperal_downsample[::-1]

    @property
    def dims(self):
        m = self.dim_mult
        return [self.base_dim * u for u in (m[-1],) + m[::-1]]

    @property
    def time_stride(self) -> int:
        return 2 ** sum(self.temperal_upsample)

    @property
    def space_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


# Wan2.1's VAE: video frames per latent frame (after the first) and pixels per latent pixel.
TIME_STRIDE, SPACE_STRIDE = VAEConfig().time_stride, VAEConfig().space_stride


class ShapeTable(dict):
    """Parameter shapes by diffusers name, channel-last, filled a layer kind at a time (the
    encoder's and the decoder's tables share these)."""

    def conv(self, name, cin, cout, k):
        self[name + ".weight"] = k + (cin, cout)
        self[name + ".bias"] = (cout,)

    def res(self, name, cin, cout):
        self[name + ".norm1.gamma"] = (cin,)
        self.conv(name + ".conv1", cin, cout, (3, 3, 3))
        self[name + ".norm2.gamma"] = (cout,)
        self.conv(name + ".conv2", cout, cout, (3, 3, 3))
        if cin != cout:
            self.conv(name + ".conv_shortcut", cin, cout, (1, 1, 1))

    def mid_block(self, prefix, d):
        """resnet, attention, resnet at width d."""
        self.res(prefix + ".resnets.0", d, d)
        a = prefix + ".attentions.0"
        self[a + ".norm.gamma"] = (d,)
        self.conv(a + ".to_qkv", d, 3 * d, (1, 1))
        self.conv(a + ".proj", d, d, (1, 1))
        self.res(prefix + ".resnets.1", d, d)


def param_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Every decoder parameter, by its diffusers name, in our (channel-last) layout."""
    out = ShapeTable({"post_quant_conv.weight": (1, 1, 1, cfg.z_dim, cfg.z_dim), "post_quant_conv.bias": (cfg.z_dim,)})
    conv, res = out.conv, out.res
    dims = cfg.dims
    conv("decoder.conv_in", cfg.z_dim, dims[0], (3, 3, 3))
    out.mid_block("decoder.mid_block", dims[0])
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
    out["decoder.norm_out.gamma"] = (dims[-1],)
    conv("decoder.conv_out", dims[-1], cfg.out_channels, (3, 3, 3))
    return dict(out)


class WanVAEDecoder(NamedWeights):
    """The Wan VAE's decoder: normalised latents -> video in [-1, 1], one latent frame at a
    time. Parameters by diffusers name; they come from a checkpoint (weights.checkpoint.load_vae)
    or random_vae_params."""

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg, param_shapes(cfg), channel_axes)

    def init_state(self, batch: int, latent_hw: tuple[int, int]):
        return init_state(self.params(), self.cfg, batch, latent_hw, jnp.dtype(self.cfg.dtype))

    def decode_frame(self, z, state, first: bool):
        return streaming_steps(self.cfg)[1 if first else 2](self.params(), z, state)

    def __call__(self, z):
        """Whole-video decode of z [B, F, h, w, z_dim] -> [B, 1 + 4 (F - 1), 8h, 8w, 3]."""
        return _whole_video(self.cfg)(self.params(), z)


# ---- layers ------------------------------------------------------------------------
def _conv(x, w, b, padding):
    """x [B, T, H, W, C] (3-D kernel, no padding in time) or [N, H, W, C] (2-D kernel),
    channel-last. A 3-D kernel comes whole [kt, kh, kw, C, Co], as its taps or as Winograd
    filters (streaming_weights)."""
    if isinstance(w, WinogradTaps):
        w = WinogradTaps(w.m, tuple(u.astype(x.dtype) for u in w.u))
        return _frames_conv(x, w, padding[1:]) + b.astype(x.dtype)
    if isinstance(w, tuple) or w.ndim == 5:
        return _frames_conv(x, tuple(t.astype(x.dtype) for t in _taps(w)), padding[1:]) + b.astype(x.dtype)
    return conv2d(x, w.astype(x.dtype), padding) + b.astype(x.dtype)


def _taps(w):
    """A 3-D conv weight as its temporal taps: [kt, kh, kw, C, Co] -> kt x [kh, kw, C, Co].
    Slicing copies the weight in every call: streaming_weights does it once."""
    return w if isinstance(w, tuple) else tuple(w[k] for k in range(w.shape[0]))


# Temporal Winograd F(m, 3) (Lavin & Gray's 1-D transforms): m output frames of a 3-tap
# temporal kernel from m + 2 input frames with m + 2 spatial convs instead of 3m. Rows of
# B^T mix input frames, G mixes the taps, A^T mixes the products into output frames.
_WINOGRAD = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
}


@functools.partial(jax.tree_util.register_dataclass, data_fields=["u"], meta_fields=["m"])
@dataclasses.dataclass(frozen=True)
class WinogradTaps:
    """A 3-tap temporal kernel as its Winograd F(m, 3) filters G w: u (m + 2) x [kh, kw, C, Co].
    G's last row is [0, 0, 1]: u[-1] is the last tap itself."""
    m: int
    u: tuple


def _mix(rows, xs):
    """sum_j rows[i, j] xs[j] for every row i, skipping zero coefficients."""
    return [sum(float(c) * x for c, x in zip(row, xs) if c != 0) for row in rows]


def _winograd_tile(t: int, co: int, dtype) -> int:
    """Winograd's tile m for t output frames (0: the direct sum). In fp32 its error stays near
    rounding; in bf16 its transforms would amplify rounding, so bf16 keeps the direct sum.
    Few output channels (conv_out's 3) keep their own path."""
    if t < 2 or co < 16 or jnp.dtype(dtype) != jnp.float32:
        return 0
    return 4 if t >= 4 else 2


def _winograd_frames(x, w: WinogradTaps, padding):
    """m * n output frames of a 3-tap temporal conv by Winograd F(m, 3) tiles.
    x [B, m * n + 2, H, W, C] -> [B, m * n, H', W', Co]."""
    bt, _, at = _WINOGRAD[w.m]
    b, tt, hh, ww, c = x.shape
    m, n = w.m, (tt - 2) // w.m
    frames = [x[:, j:j + m * (n - 1) + 1:m].reshape((b * n, hh, ww, c)) for j in range(m + 2)]
    prods = [conv2d(d, u, padding) for d, u in zip(_mix(bt, frames), w.u)]
    y = jnp.stack(_mix(at, prods), axis=1)  # [B n, m, H', W', Co]
    return y.reshape((b, n * m) + y.shape[2:])


def _frames_conv(x, w, padding):
    """A 3-D conv without time padding, as 2-D convs of every frame summed over the temporal
    taps: XLA's CPU conv2d runs about twice the FLOP rate of its conv3d (2 cores, 96-384
    channels), and the sum is the same. In fp32, 3-tap kernels over 2 or more output frames go
    by temporal Winograd tiles (up to 2x fewer FLOPs). Few output channels (conv_out's 3) make
    a poor GEMM: then one conv2d gives every tap's output at once and the taps are summed
    shifted.
    x [B, T, H, W, C], w kt x [kh, kw, C, Co] or WinogradTaps -> [B, T - kt + 1, H', W', Co]."""
    b, tt, hh, ww, c = x.shape
    if isinstance(w, WinogradTaps):  # prepared for this many frames (streaming_weights)
        if (tt - 2) % w.m:
            raise ValueError(f"Winograd filters for tiles of {w.m} frames, given {tt - 2}")
        return _winograd_frames(x, w, padding)
    kt, co = len(w), w[0].shape[-1]
    t = tt - kt + 1
    m = _winograd_tile(t, co, x.dtype) if kt == 3 else 0
    if m:
        done = t - t % m
        y = _winograd_frames(x[:, :done + 2], WinogradTaps(m, tuple(_mix(_WINOGRAD[m][1], w))), padding)
        return y if done == t else jnp.concatenate([y, _frames_conv(x[:, done:], w, padding)], axis=1)
    if kt == 1 or co >= 16:
        frames = lambda k: x[:, k:k + t].reshape((b * t, hh, ww, c))
        y = sum(conv2d(frames(k), w[k], padding) for k in range(kt))
        return y.reshape((b, t) + y.shape[1:])
    y = conv2d(x.reshape((b * tt, hh, ww, c)), jnp.concatenate(w, axis=-1), padding)
    y = y.reshape((b, tt) + y.shape[1:3] + (kt, co))
    return sum(y[:, k:k + t, :, :, k] for k in range(kt))


def frames_per_call(cfg: VAEConfig, name: str) -> int:
    """Frames a decoder conv sees when one latent frame after the first is decoded: 1 up to
    the first temporal upsampler, doubled after each (conv_out: cfg.time_stride)."""
    if name.startswith("decoder.up_blocks."):
        i = int(name.split(".")[2])
        return 2 ** sum(cfg.temperal_upsample[:i])
    return cfg.time_stride if name.startswith("decoder.conv_out") else 1


def streaming_weights(p, cfg: VAEConfig):
    """The decoder's parameters as the per-latent-frame decode reads them, prepared once rather
    than in every call: each 3-D conv weight as its temporal taps, or, where that call's frames
    go by Winograd tiles, as their filters."""
    out = {}
    for name, w in p.items():
        if w.ndim == 5:
            taps = _taps(w)
            m = _winograd_tile(frames_per_call(cfg, name), w.shape[-1], cfg.dtype) if len(taps) == 3 else 0
            w = WinogradTaps(m, tuple(_mix(_WINOGRAD[m][1], taps))) if m else taps
        out[name] = w
    return out


def causal_conv(p, name, x, state, new_state):
    """Causal Conv3d: the temporal kernel sees the 2 cached frames before x (k_t = 3)."""
    w, b = p[name + ".weight"], p[name + ".bias"]
    w = w if isinstance(w, WinogradTaps) else _taps(w)
    taps = w.u if isinstance(w, WinogradTaps) else w  # Winograd filters end with the last tap
    kt = 3 if isinstance(w, WinogradTaps) else len(w)
    kh, kw = taps[-1].shape[:2]
    if kt == 1:
        return _conv(x, w, b, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)])
    cache = state.get(name)
    zeros = cache is None  # a video's start (or shape discovery): the causal zero padding
    if zeros:
        cache = jnp.zeros((x.shape[0], kt - 1) + x.shape[2:], x.dtype)
    xx = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    new_state[name] = xx[:, -(kt - 1):]
    padding = [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)]
    if zeros and x.shape[1] == 1:  # the taps on the zero frames add nothing: only the last one
        return _conv(x, taps[-1:], b, padding)
    return _conv(xx, w, b, padding)


def rms_norm(p, name, x):
    """Channel RMS norm: x / ||x||_C * sqrt(C) * gamma (L2 over channels, in fp32)."""
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    y = (xf / jnp.maximum(norm, 1e-12)).astype(x.dtype)
    return y * math.sqrt(x.shape[-1]) * p[name + ".gamma"].astype(x.dtype)


def resnet(p, name, x, state, new_state):
    h = causal_conv(p, name + ".conv_shortcut", x, state, new_state) if name + ".conv_shortcut.weight" in p else x
    x = jax.nn.silu(rms_norm(p, name + ".norm1", x))
    x = causal_conv(p, name + ".conv1", x, state, new_state)
    x = jax.nn.silu(rms_norm(p, name + ".norm2", x))
    x = causal_conv(p, name + ".conv2", x, state, new_state)
    return x + h


def attention(p, name, x):
    """Single-head spatial self-attention within each frame."""
    b, t, hh, ww, c = x.shape
    h = rms_norm(p, name + ".norm", x).reshape(b * t, hh, ww, c)
    qkv = _conv(h, p[name + ".to_qkv.weight"], p[name + ".to_qkv.bias"], [(0, 0), (0, 0)])
    q, k, v = jnp.split(qkv.reshape(b * t, hh * ww, 3 * c), 3, axis=-1)
    o = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])[:, :, 0]
    o = _conv(o.reshape(b * t, hh, ww, c), p[name + ".proj.weight"], p[name + ".proj.bias"], [(0, 0), (0, 0)])
    return x + o.reshape(b, t, hh, ww, c)


def upsample(p, name, x, mode, first, state, new_state):
    """upsample2d: nearest x2 in space + Conv2d. upsample3d: first the temporal doubling by a
    causal conv to 2C channels (skipped for the first latent frame), then the same."""
    b, t, hh, ww, c = x.shape
    if mode == "upsample3d":
        tc = name + ".time_conv"
        if first:  # upstream's "Rep": no doubling now, and the next call still sees zeros
            new_state[tc] = jnp.zeros((b, 2, hh, ww, c), x.dtype) if state.get(tc) is None else state[tc]
        else:
            y = causal_conv(p, tc, x, state, new_state)  # [B, t, H, W, 2C]
            x = y.reshape(b, t, hh, ww, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, hh, ww, c)
            t = 2 * t
    w = p[name + ".resample.1.weight"]
    x = upsample2x_conv(x.reshape(b * t, hh, ww, c), w) + p[name + ".resample.1.bias"].astype(x.dtype)
    return x.reshape(b, t, 2 * hh, 2 * ww, w.shape[-1])


# ---- decoder -----------------------------------------------------------------------
def _decoder(p, cfg: VAEConfig, x, state, first):
    new_state = {}
    x = causal_conv(p, "decoder.conv_in", x, state, new_state)
    x = resnet(p, "decoder.mid_block.resnets.0", x, state, new_state)
    x = attention(p, "decoder.mid_block.attentions.0", x)
    x = resnet(p, "decoder.mid_block.resnets.1", x, state, new_state)
    n_up = len(cfg.dim_mult)
    for i in range(n_up):
        for j in range(cfg.num_res_blocks + 1):
            x = resnet(p, f"decoder.up_blocks.{i}.resnets.{j}", x, state, new_state)
        if i != n_up - 1:
            mode = "upsample3d" if cfg.temperal_upsample[i] else "upsample2d"
            x = upsample(p, f"decoder.up_blocks.{i}.upsamplers.0", x, mode, first, state, new_state)
    x = jax.nn.silu(rms_norm(p, "decoder.norm_out", x))
    x = causal_conv(p, "decoder.conv_out", x, state, new_state)
    return x, new_state


def unnormalize(cfg: VAEConfig, z):
    """z / (1/std) + mean per channel, the reciprocal taken in the latent dtype. z [..., C]."""
    inv_std = (1.0 / jnp.asarray(cfg.latents_std, jnp.float32)).astype(z.dtype)
    return z / inv_std + jnp.asarray(cfg.latents_mean, z.dtype)


def init_state(p, cfg: VAEConfig, batch: int, latent_hw: tuple[int, int], dtype=jnp.float32):
    """Zero conv caches ({conv name: [B, 2, H, W, C]}) for a latent grid of latent_hw."""
    def shapes(p):
        x = jnp.zeros((batch, 1, *latent_hw, cfg.z_dim), dtype)
        return _decoder(p, cfg, x, {}, first=False)[1]

    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes, p))


def decode_frame(p, cfg: VAEConfig, z, state, first: bool):
    """Decode one latent frame.

    z: [B, 1, h, w, z_dim] normalised latents (the DiT's output, channel-last); state: conv
    caches from init_state / the previous call (the first frame starts from the causal zeros
    whatever it is given: the convs skip the taps that would only see them). Returns (video
    [B, 1 or 4, 8h, 8w, 3] in [-1, 1], new state).
    """
    z = unnormalize(cfg, z)
    pq = _conv(z, p["post_quant_conv.weight"], p["post_quant_conv.bias"], [(0, 0)] * 3)
    out, new_state = _decoder(p, cfg, pq, {} if first else state, first)
    return jnp.clip(out, -1.0, 1.0), new_state


def decode_video(p, cfg: VAEConfig, z):
    """Whole-video decode, as the streaming decoders do it: the first frame, then one latent
    frame at a time (a scan carrying the conv caches), so that both give the same numbers.

    z: [B, F, h, w, z_dim] -> [B, 1 + 4 (F - 1), 8h, 8w, 3].
    """
    p, z = streaming_weights(p, cfg), z.astype(jnp.dtype(cfg.dtype))
    first, state = decode_frame(p, cfg, z[:, :1], {}, first=True)
    if z.shape[1] == 1:
        return first

    def step(state, zf):  # zf [B, h, w, z_dim]
        out, state = decode_frame(p, cfg, zf[:, None], state, first=False)
        return state, out

    _, rest = jax.lax.scan(step, state, jnp.moveaxis(z[:, 1:], 1, 0))  # [F - 1, B, 4, H, W, 3]
    rest = jnp.moveaxis(rest, 0, 1)
    return jnp.concatenate([first, rest.reshape((rest.shape[0], -1) + rest.shape[3:])], axis=1)


def to_uint8(video):
    """[-1, 1] -> uint8, as upstream writes videos (clamp(x * 0.5 + 0.5, 0, 1) * 255)."""
    return np.asarray(uint8_on_device(video))


def uint8_on_device(video):
    return jnp.round(jnp.clip(video.astype(jnp.float32) * 0.5 + 0.5, 0, 1) * 255).astype(jnp.uint8)


@functools.lru_cache(maxsize=None)
def _whole_video(cfg: VAEConfig):
    return jax.jit(lambda p, z: decode_video(p, cfg, z))


@functools.lru_cache(maxsize=None)
def streaming_steps(cfg: VAEConfig):
    """The jitted weight preparation, first-frame and next-frame decodes of a config, shared by
    every decoder (a new video, a new studio run) so that none compiles again."""
    return (jax.jit(lambda p: streaming_weights(p, cfg)),
            jax.jit(lambda p, z, s: decode_frame(p, cfg, z, s, first=True)),
            jax.jit(lambda p, z, s: decode_frame(p, cfg, z, s, first=False)))


class StreamingDecoder:
    """Decodes latent frames as the rollout produces them, keeping the conv state between
    calls. push(z [B, F, C, h, w] channel-first latents) -> uint8 video [B, T, 8h, 8w, 3].
    (batch and latent_hw: the latents it will be given; the first frame starts from the causal
    zeros, so no state is made before it.)"""

    def __init__(self, decoder: WanVAEDecoder, batch: int, latent_hw: tuple[int, int]):
        cfg = decoder.cfg
        prepare, self._first, self._next = streaming_steps(cfg)
        self.params, self.cfg = prepare(decoder.params()), cfg
        self.state = {}
        self.started = False

    def push(self, z) -> np.ndarray:
        return np.asarray(self.push_on_device(z))

    def push_on_device(self, z) -> jax.Array:
        """push without leaving the device: z (a device or host array) -> uint8 frames on the
        device (dispatched, not waited for)."""
        z = jnp.moveaxis(jnp.asarray(z), 2, -1).astype(jnp.dtype(self.cfg.dtype))
        outs = []
        for i in range(z.shape[1]):
            fn = self._next if self.started else self._first
            video, self.state = fn(self.params, z[:, i:i + 1], self.state)
            self.started = True
            outs.append(uint8_on_device(video))
        return jnp.concatenate(outs, axis=1)
