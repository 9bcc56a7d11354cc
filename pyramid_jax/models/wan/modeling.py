"""Causal Wan2.1 diffusion transformer (flax.nnx).

One call denoises a chunk of F latent frames against cached pages of earlier frames.
The model never mutates the cache: it returns the chunk's keys (before RoPE) and values
so a cache policy can commit them.

Layouts: latents [B, F, C, H, W]; tokens in (f, h, w) row-major order; per-layer
tensors are stacked on a leading L axis and the blocks run under one `lax.scan`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pyramid_jax import attention as attn_lib
from pyramid_jax.attention import reference as ref_attn
from pyramid_jax import rope
from pyramid_jax.sharding import param_meta


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Shape of a Wan DiT. Defaults are Wan2.1-T2V-1.3B."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = rope.WAN_THETA
    dtype: str = "float32"
    # What the head predicts: "flow" (Wan, Self Forcing: v = noise - x0) or "x0" (the clean
    # frames; the call still returns the flow). A pixel model with patches wider than the
    # model (8x8x3 = 192 values a token, width 128) cannot pass white noise through a token:
    # predicting the clean frames, which are smooth, needs no such width.
    prediction: str = "flow"

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.patch_size[0] != 1:
            raise ValueError("frame-causal generation needs a temporal patch of 1, "
                             f"got patch_size {self.patch_size}")
        if self.prediction not in ("flow", "x0"):
            raise ValueError(f"prediction must be flow or x0, got {self.prediction!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WanConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown WanConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **kw) -> "WanConfig":
        return dataclasses.replace(self, **kw)


PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(),
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}
# Heads are not visible in weight shapes; the published models fix them by width.
HEADS_BY_DIM = {c.dim: c.num_heads for c in PRESETS.values()}


def _f32(x):
    return x.astype(jnp.float32)


def layer_norm(x, eps, scale=None, bias=None):
    """LayerNorm over the last axis, computed in float32, cast back to x.dtype."""
    xf = _f32(x)
    mu = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mu).mean(-1, keepdims=True)
    y = (xf - mu) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * _f32(scale) + _f32(bias)
    return y.astype(x.dtype)


def rms_norm(x, scale, eps):
    """RMS statistic over the last axis in float32, cast to x.dtype, then times the weight."""
    xf = _f32(x)
    ms = jnp.square(xf).sum(-1, keepdims=True) / x.shape[-1]
    y = (xf * jax.lax.rsqrt(ms + eps)).astype(x.dtype)
    return y * scale.astype(x.dtype)


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _linear(cfg: WanConfig, din: int, dout: int, rngs: nnx.Rngs, axes=(None, None)) -> nnx.Linear:
    """A Linear whose kernel [din, dout] has logical axes `axes` (its bias: axes[1])."""
    return nnx.Linear(din, dout, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_dtype,
                      precision=jax.lax.Precision.HIGHEST, rngs=rngs,
                      kernel_metadata=param_meta(*axes), bias_metadata=param_meta(axes[1]))


class MLP(nnx.Module):
    """Linear -> act -> Linear (text embedding, time embedding, FFN)."""

    def __init__(self, cfg: WanConfig, din: int, dhidden: int, dout: int, act, rngs: nnx.Rngs, hidden_axis=None):
        self.fc1 = _linear(cfg, din, dhidden, rngs, (None, hidden_axis))
        self.fc2 = _linear(cfg, dhidden, dout, rngs, (hidden_axis, None))
        self.act = act

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nnx.Module):
    """q, k, v, o projections with full-width RMSNorm on q and k."""

    def __init__(self, cfg: WanConfig, rngs: nnx.Rngs):
        d = cfg.dim
        self.q, self.k, self.v = (_linear(cfg, d, d, rngs, (None, "heads")) for _ in range(3))
        self.o = _linear(cfg, d, d, rngs, ("heads", None))
        self.norm_q = nnx.Param(jnp.ones((d,), cfg.jnp_dtype), **param_meta("heads"))
        self.norm_k = nnx.Param(jnp.ones((d,), cfg.jnp_dtype), **param_meta("heads"))
        self.cfg = cfg

    def heads(self, x):
        return x.reshape(x.shape[:-1] + (self.cfg.num_heads, self.cfg.head_dim))

    def _norm(self, x, scale):
        return rms_norm(x, scale[...], self.cfg.eps) if self.cfg.qk_norm else x

    def project_q(self, x):
        return self.heads(self._norm(self.q(x), self.norm_q))

    def project_kv(self, x):
        return self.heads(self._norm(self.k(x), self.norm_k)), self.heads(self.v(x))


class WanBlock(nnx.Module):
    """One transformer block: modulated self-attn, cross-attn, modulated FFN."""

    def __init__(self, cfg: WanConfig, rngs: nnx.Rngs):
        d = cfg.dim
        self.modulation = nnx.Param(
            jax.random.normal(rngs.params(), (6, d), cfg.jnp_dtype) / math.sqrt(d))
        self.self_attn = Attention(cfg, rngs)
        self.cross_attn = Attention(cfg, rngs)
        self.norm3_scale = nnx.Param(jnp.ones((d,), cfg.jnp_dtype))
        self.norm3_bias = nnx.Param(jnp.zeros((d,), cfg.jnp_dtype))
        self.ffn = MLP(cfg, d, cfg.ffn_dim, d, gelu_tanh, rngs, hidden_axis="mlp")
        self.cfg = cfg

    def text_kv(self, ctx):
        """ctx [B, Lt, D] (embedded text) -> k, v [B, H, Lt, Dh] (head-major)."""
        k, v = self.cross_attn.project_kv(ctx)
        return k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def __call__(self, x, e0, text_k, text_v, cos, sin, attend):
        """x [B, F, T, D]; e0 [B, F, 6, D] float32; text_k/v [B, H, Lt, Dh];
        cos, sin [F*T, Dh/2]; attend(q, k, k_pre, v) -> (y [B, F*T, H, Dh], aux) with q, k
        post-RoPE and k_pre before it.
        Returns x, the chunk's (k before RoPE, v), each [B, F*T, H, Dh], the queries after
        RoPE [B, F*T, H, Dh] (for head profiling; dropped by XLA when unused) and attend's aux.
        """
        cfg = self.cfg
        b, f, t, d = x.shape
        mod = _f32(self.modulation[...]) + e0  # [B, F, 6, D]
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (mod[:, :, i, None, :] for i in range(6))

        h = (_f32(layer_norm(x, cfg.eps)) * (1 + scale_a) + shift_a).astype(x.dtype)
        h = h.reshape(b, f * t, d)
        q = self.self_attn.project_q(h)
        k, v = self.self_attn.project_kv(h)
        cs, sn = cos[:, None], sin[:, None]  # broadcast over heads
        q = rope.apply_rope(q, cs, sn)
        y, aux = attend(q, rope.apply_rope(k, cs, sn), k, v)
        y = self.self_attn.o(y.reshape(b, f * t, d)).reshape(b, f, t, d)
        x = (_f32(x) + _f32(y) * gate_a).astype(x.dtype)

        hc = x.reshape(b, f * t, d)
        if cfg.cross_attn_norm:
            hc = layer_norm(hc, cfg.eps, self.norm3_scale[...], self.norm3_bias[...])
        qc = self.cross_attn.project_q(hc).transpose(0, 2, 1, 3)
        yc = ref_attn.mha(qc, text_k, text_v).transpose(0, 2, 1, 3)
        x = x + self.cross_attn.o(yc.reshape(b, f * t, d)).reshape(b, f, t, d)

        h = (_f32(layer_norm(x, cfg.eps)) * (1 + scale_f) + shift_f).astype(x.dtype)
        ffn = self.ffn(h)
        x = (_f32(x) + _f32(ffn) * gate_f).astype(x.dtype)
        return x, (k, v), q, aux


class Head(nnx.Module):
    def __init__(self, cfg: WanConfig, rngs: nnx.Rngs):
        self.modulation = nnx.Param(
            jax.random.normal(rngs.params(), (2, cfg.dim), cfg.jnp_dtype) / math.sqrt(cfg.dim))
        self.proj = _linear(cfg, cfg.dim, cfg.out_channels * math.prod(cfg.patch_size), rngs)
        self.cfg = cfg

    def __call__(self, x, e):
        """x [B, F, T, D]; e [B, F, D] float32 (time embedding) -> [B, F, T, 4C]."""
        mod = _f32(self.modulation[...]) + e[:, :, None, :]  # [B, F, 2, D]
        shift, scale = mod[:, :, None, 0], mod[:, :, None, 1]
        h = (_f32(layer_norm(x, self.cfg.eps)) * (1 + scale) + shift).astype(x.dtype)
        return self.proj(h)


# ---- what a chunk's self-attention reads (one of these, or None: the chunk alone) --------
class Committed(NamedTuple):
    """The denoising passes: attend the committed cache as planned."""

    pool: attn_lib.KVPool  # pages of earlier frames
    plan: attn_lib.PagePlan  # entries per (layer, query frame, head); plan.frame0: the chunk's first frame


class Staging(NamedTuple):
    """The pass that writes the cache: before layer l attends, stage(state, l, k_pre, v, q) ->
    (state, KVPool, the layer's PagePlan) puts that layer's keys (k_pre before RoPE, v;
    [B, H, F, T, Dh]) into the cache state and says what the layer attends; q, the layer's
    queries after RoPE [B, N, H, Dh], lets a policy type heads online."""

    state: Any  # the policy's cache state, carried from layer to layer
    stage: Callable
    frame0: jax.Array  # int32 scalar, the chunk's first frame (may be traced)


class FrameMask(NamedTuple):
    """No cache: query frame i attends key frame j of the chunk where mask[i, j] (block-causal
    training, the full-sequence reference of a policy)."""

    mask: Any  # [F, F] bool, numpy (static: a block-causal mask runs as prefix attention) or traced


@dataclasses.dataclass(frozen=True)
class ChunkOutput:
    """What the model returns for a chunk; it unpacks as the pair (flow, chunk_kv)."""

    flow: jax.Array  # [B, F, C, H, W] in the model's dtype
    chunk_kv: tuple  # (k before RoPE, v), each [L, B, H, F, T, Dh], T = tokens per frame
    state: Any = None  # Staging: the cache state after the last layer
    probe: Any = None  # probe_frame: that frame's queries after RoPE, [L, B, T, H, Dh]

    def __iter__(self):
        return iter((self.flow, self.chunk_kv))

    def __getitem__(self, i):
        return (self.flow, self.chunk_kv)[i]


class CausalWan(nnx.Module):
    """Causal Wan DiT. See `__call__` for the chunk contract."""

    def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs, attention_backend: str = "reference"):
        self.cfg = cfg
        self.attention_backend = attn_lib.check_backend(attention_backend)
        c, d = cfg.in_channels, cfg.dim
        _, ph, pw = cfg.patch_size
        # Conv3d with kernel == stride is a Linear over (c, p, q, r) patch vectors.
        self.patch_embedding = _linear(cfg, c * ph * pw, d, rngs)
        self.text_embedding = MLP(cfg, cfg.text_dim, d, d, gelu_tanh, rngs)
        self.time_embedding = MLP(cfg, cfg.freq_dim, d, d, jax.nn.silu, rngs)
        self.time_projection = _linear(cfg, d, 6 * d, rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
        def make_blocks(r):
            return WanBlock(cfg, r)

        self.blocks = make_blocks(rngs)
        self.head = Head(cfg, rngs)

    # ---- text ----------------------------------------------------------------------
    def text_kv(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-layer cross-attention K/V, computed once per prompt.

        context: [B, Lt, text_dim] -> (k, v) each [L, B, H, Lt, Dh] in cfg.dtype.
        """
        ctx = self.text_embedding(context.astype(self.cfg.jnp_dtype))
        graphdef, state = nnx.split(self.blocks)
        return jax.vmap(lambda s: nnx.merge(graphdef, s).text_kv(ctx))(state)

    # ---- time ----------------------------------------------------------------------
    def time_embed(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """t [B, F] -> e [B, F, D] float32 (head), e0 [B, F, 6, D] float32 (blocks)."""
        sinus = rope.timestep_sinusoid(t, self.cfg.freq_dim).astype(self.cfg.jnp_dtype)
        e = self.time_embedding(sinus)
        e0 = self.time_projection(jax.nn.silu(e))
        return _f32(e), _f32(e0).reshape(e0.shape[:-1] + (6, self.cfg.dim))

    # ---- patches -------------------------------------------------------------------
    def patchify(self, x):
        """[B, F, C, H, W] -> tokens [B, F, h*w, C*ph*pw] ordered (c, p, q)."""
        b, f, c, hh, ww = x.shape
        _, ph, pw = self.cfg.patch_size
        if hh % ph or ww % pw:
            raise ValueError(f"latent size {hh}x{ww} is not divisible by the patch {ph}x{pw}")
        x = x.reshape(b, f, c, hh // ph, ph, ww // pw, pw)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, f, (hh // ph) * (ww // pw), c * ph * pw)

    def unpatchify(self, y, hh, ww):
        """[B, F, h*w, ph*pw*C] (C fastest) -> [B, F, C, H, W]."""
        b, f = y.shape[:2]
        _, ph, pw = self.cfg.patch_size
        c = self.cfg.out_channels
        y = y.reshape(b, f, hh // ph, ww // pw, ph, pw, c)
        y = y.transpose(0, 1, 6, 2, 4, 3, 5)
        return y.reshape(b, f, c, hh, ww)

    # ---- forward ----------------------------------------------------------------
    def __call__(self, x, t, text_kv, attend: Committed | Staging | FrameMask | None = None, *,
                 probe_frame: int | None = None, remat: bool = False) -> ChunkOutput:
        """Predict the flow of a chunk.

        x: [B, F, C, H, W] noisy latents of F consecutive frames.
        t: [B, F] per-frame timesteps (or [B], one per sample).
        text_kv: (k, v) each [L, B, H, Lt, Dh] from `text_kv`.
        attend: what self-attention reads besides the chunk: `Committed` (the cache as
            planned), `Staging` (the pass that writes the cache), `FrameMask` (a mask over the
            chunk, no cache) or None (the chunk alone, frame0 = 0).
        probe_frame: also return the queries (after RoPE) of this frame of the chunk, for
            head profiling.
        remat: recompute each block in the backward pass (training): only one layer's
            attention scores [B, H, N, N] are alive at a time instead of every layer's.
        """
        cfg = self.cfg
        b, f, _, hh, ww = x.shape
        _, ph, pw = cfg.patch_size
        gh, gw = hh // ph, ww // pw
        tpf = gh * gw
        if t.ndim == 1:
            t = jnp.broadcast_to(t[:, None], (b, f))
        frame0 = {Committed: lambda a: a.plan.frame0, Staging: lambda a: a.frame0}.get(
            type(attend), lambda a: jnp.zeros((), jnp.int32))(attend)

        tokens = self.patch_embedding(self.patchify(x.astype(cfg.jnp_dtype)))  # [B, F, T, D]
        e, e0 = self.time_embed(t)
        cos, sin = rope.rope_tables(frame0, f, gh, gw, cfg.head_dim, cfg.rope_theta)
        to_pool = lambda a: a.reshape(b, f, tpf, -1, cfg.head_dim).transpose(0, 3, 1, 2, 4)
        layer_attend, carry = self._attend_fn(f, tpf, attend, to_pool)

        graphdef, state = nnx.split(self.blocks)
        layer_xs = (state, text_kv[0], text_kv[1], jnp.arange(cfg.num_layers))

        def body(hc, xs):
            h, c = hc
            block = nnx.merge(graphdef, xs[0])
            h, (k, v), q, c = block(h, e0, xs[1], xs[2], cos, sin, lambda q, k, k_pre, v: layer_attend(
                q, k, k_pre, v, c, xs[3]))
            probe = () if probe_frame is None else q[:, probe_frame * tpf:(probe_frame + 1) * tpf]
            return (h, c), ((to_pool(k), to_pool(v)), probe)

        (tokens, carry), (chunk_kv, probe) = jax.lax.scan(jax.checkpoint(body) if remat else body,
                                                          (tokens, carry), layer_xs)
        flow = self.unpatchify(self.head(tokens, e), hh, ww)
        if cfg.prediction == "x0":
            flow = flow_from_x0(x, flow, t)
        return ChunkOutput(flow, chunk_kv, carry if isinstance(attend, Staging) else None,
                           None if probe_frame is None else probe)

    def _attend_fn(self, f, tpf, attend, to_pool):
        """One layer's self-attention as fn(q, k, k_pre, v, carry, layer) -> (y, carry)
        ([B, N, H, Dh] tensors), and the carry it starts from (the staged state, or ())."""
        if isinstance(attend, FrameMask):
            groups = prefix_groups(attend.mask)
            if groups is not None:  # each query frame sees a prefix of frames (block-causal)
                return lambda q, k, k_pre, v, c, layer: (prefix_attention(q, k, v, groups, tpf), c), ()
            frame = jnp.arange(f * tpf) // tpf
            mask = jnp.asarray(attend.mask)[frame[:, None], frame[None, :]]
            return lambda q, k, k_pre, v, c, layer: (ref_attn.chunk_attention(q, k, v, mask), c), ()
        if attend is None:
            return lambda q, k, k_pre, v, c, layer: (ref_attn.chunk_attention(q, k, v), c), ()

        theta, dh = self.cfg.rope_theta, self.cfg.head_dim
        paged_attention = attn_lib.paged_attention_fn(self.attention_backend)

        def layer_attend(q, k, k_pre, v, carry, layer):
            if isinstance(attend, Committed):
                pool, lp = attend.pool, attn_lib.layer_plan(attend.plan, layer)
            else:
                carry, pool, lp = attend.stage(carry, layer, to_pool(k_pre), to_pool(v), q)
            if lp.own_shift is not None:  # [H, F] -> per token [N, H]
                k = rope.shift_time(k, jnp.repeat(lp.own_shift.T, tpf, axis=0)[None], dh, theta)
            b, n, h = q.shape[:3]
            out = paged_attention(q.reshape(b, f, tpf, h, dh), k, v, pool.k, pool.v, lp.slot, lp.time_shift,
                                  lp.valid, theta=theta, page_len=pool.page_len, k_scale=pool.k_scale,
                                  v_scale=pool.v_scale)
            return out.reshape(q.shape), carry

        return layer_attend, (attend.state if isinstance(attend, Staging) else ())


def prefix_groups(frame_mask) -> tuple[tuple[int, int, int], ...] | None:
    """For a static [F, F] frame mask in which every query frame attends a prefix of the key
    frames (block-causal training): runs of query frames with the same prefix, as (first query
    frame, end query frame, key frames) triples. None for a traced mask or any other pattern."""
    if not isinstance(frame_mask, np.ndarray):
        return None
    m = np.asarray(frame_mask, bool)
    ends = m.sum(1)
    if not all(m[i, :e].all() for i, e in enumerate(ends)) or (ends == 0).any():
        return None
    cuts = [0] + [i for i in range(1, len(ends)) if ends[i] != ends[i - 1]] + [len(ends)]
    return tuple((a, b, int(ends[a])) for a, b in zip(cuts[:-1], cuts[1:]))


def prefix_attention(q, k, v, groups, tpf):
    """Masked attention computed as one softmax per query group over only the key frames it
    sees: the same result as the masked [N, N] matrix, without the masked blocks' work.
    q, k, v: [B, N, H, Dh] (N = frames x tpf)."""
    outs = [ref_attn.chunk_attention(q[:, a * tpf:b * tpf], k[:, :n * tpf], v[:, :n * tpf]) for a, b, n in groups]
    return jnp.concatenate(outs, axis=1)


# The flow schedules' timesteps are 1000 x sigma (sampling.schedule.FlowSchedule).
NUM_TRAIN_TIMESTEPS = 1000
MIN_SIGMA = 1e-3  # the clean pass (t = 0) divides by this; its flow is never used


def flow_from_x0(x, x0, t):
    """The flow (x - x0) / sigma, sigma = t / 1000, of a predicted x0; x, x0 [B, F, C, H, W],
    t [B, F]. In float32, cast to x0's dtype."""
    sigma = jnp.maximum(t.astype(jnp.float32) / NUM_TRAIN_TIMESTEPS, MIN_SIGMA)[:, :, None, None, None]
    return ((x.astype(jnp.float32) - x0.astype(jnp.float32)) / sigma).astype(x0.dtype)


def block_causal_mask(num_frames: int, frames_per_chunk: int) -> np.ndarray:
    """[F, F] bool: frame i attends frame j iff j's block is not after i's."""
    blk = np.arange(num_frames) // frames_per_chunk
    return blk[:, None] >= blk[None, :]


def init_model(cfg: WanConfig, seed: int = 0, attention_backend: str = "reference") -> CausalWan:
    """A randomly initialised model (tests, demo before weights exist)."""
    return CausalWan(cfg, rngs=nnx.Rngs(seed), attention_backend=attention_backend)


def abstract_model(cfg: WanConfig, attention_backend: str = "reference") -> CausalWan:
    """The model with ShapeDtypeStruct leaves: a target for loading weights."""
    return nnx.eval_shape(lambda: CausalWan(cfg, rngs=nnx.Rngs(0), attention_backend=attention_backend))

