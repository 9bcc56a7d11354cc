"""3-D rotary position embedding (frame, height, width) and accurate sinusoids.

Angles are computed directly from positions, never from a position table, so there is
no 1024-frame limit. Large positions stay accurate in float32 (TPUs have no float64):
`turns` evaluates position * frequency as a fraction of a turn with an exact
split-product, so the error is ~1e-6 rad at any position below 2**24.

Layout (Wan's): a head of dim d is split into real widths
d_t = d - 4 * (d // 6) (frame) and 2 * (d // 6) each (height, width); pairs are
adjacent, (x[2i], x[2i + 1]), GPT-J style.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

WAN_THETA = 10000.0  # Wan's RoPE base: WanConfig.rope_theta's default


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real widths (frame, height, width) of the RoPE axes for one head."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def axis_frequencies(width: int, theta: float) -> np.ndarray:
    """Float64 frequencies theta^(-2i/width) of the width // 2 pairs of one axis."""
    return theta ** (-np.arange(0, width, 2, dtype=np.float64) / width)


def _split12(x):
    """Split float32 x into hi + lo with 12 significant bits each (hi exact)."""
    if isinstance(x, np.ndarray):
        hi = (x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)
        return hi, (x.astype(np.float32) - hi)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0xFFFFF000)
    hi = jax.lax.bitcast_convert_type(bits, jnp.float32)
    return hi, x - hi


def _frac(x):
    return x - jnp.floor(x)


def turns(pos: jax.Array, freq: np.ndarray) -> jax.Array:
    """Fraction of a turn of pos * freq / (2 pi), accurate in float32.

    pos: [...] float32 (integers or any float32 value); freq: [K] float64 host constants.
    Returns [..., K] float32 in [0, 1).

    freq / 2pi is stored as g1 + g2 + g3 (g1, g2 with 12 significant bits) and pos as
    p_hi + p_lo (12 bits each), so every product except pos * g3 is exact in float32 and
    its integer part can be dropped without loss.
    """
    g = np.asarray(freq, np.float64) / (2 * math.pi)
    g1, _ = _split12(g.astype(np.float32))
    g1 = g1.astype(np.float64)
    g2, _ = _split12((g - g1).astype(np.float32))
    g3 = (g - g1 - g2.astype(np.float64)).astype(np.float32)
    g1, g2 = g1.astype(np.float32), g2.astype(np.float32)

    pos = jnp.asarray(pos, jnp.float32)[..., None]
    p_hi, p_lo = _split12(pos)
    acc = _frac(p_hi * g1)
    for part in (p_hi * g2, p_lo * g1, p_lo * g2, pos * g3):
        acc = _frac(acc + _frac(part))
    return acc


def angles(pos: jax.Array, freq: np.ndarray) -> jax.Array:
    """Angles pos * freq in radians, reduced to [0, 2 pi). pos [...] -> [..., K]."""
    return turns(pos, freq) * jnp.float32(2 * math.pi)


def rope_tables(
    frame0: jax.Array, num_frames: int, height: int, width: int, head_dim: int,
    theta: float,
) -> tuple[jax.Array, jax.Array]:
    """cos, sin for the tokens of frames frame0..frame0+F-1 of an h x w grid.

    frame0 may be traced. Tokens are in (f, h, w) row-major order.
    Returns cos, sin: [F * h * w, head_dim // 2] float32.
    """
    times = jnp.asarray(frame0, jnp.float32) + jnp.arange(num_frames, dtype=jnp.float32)
    return grid_tables(times, jnp.arange(height), jnp.arange(width), head_dim, theta)


def grid_tables(times, rows, cols, head_dim: int, theta: float):
    """cos, sin for the grid times x rows x cols (any positions, e.g. pooled patch corners).

    times [F], rows [h], cols [w] -> cos, sin [F * h * w, head_dim // 2] float32.
    """
    d_t, d_h, d_w = axis_dims(head_dim)
    a_t = angles(jnp.asarray(times, jnp.float32), axis_frequencies(d_t, theta))
    a_h = angles(jnp.asarray(rows, jnp.float32), axis_frequencies(d_h, theta))
    a_w = angles(jnp.asarray(cols, jnp.float32), axis_frequencies(d_w, theta))
    shape = (a_t.shape[0], a_h.shape[0], a_w.shape[0])
    ang = jnp.concatenate(
        [
            jnp.broadcast_to(a_t[:, None, None, :], shape + a_t.shape[-1:]),
            jnp.broadcast_to(a_h[None, :, None, :], shape + a_h.shape[-1:]),
            jnp.broadcast_to(a_w[None, None, :, :], shape + a_w.shape[-1:]),
        ],
        axis=-1,
    ).reshape(-1, head_dim // 2)
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate interleaved pairs of x in float32 and cast back.

    x: [..., Dh]; cos, sin: broadcastable to x.shape[:-1] + (Dh // 2,) (callers insert the
    head axis, e.g. cos[:, None] for x [B, N, H, Dh]).
    """
    xf = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def shift_time(x: jax.Array, shift: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """Rotate the frame part of RoPE'd vectors by `shift` frames (height/width untouched).

    x: [..., Dh]; shift: broadcastable to x.shape[:-1] (integers, may be negative).
    R(a + s) = R(s) R(a), so a key stored at time a and rotated here is at time a + s.
    """
    d_t, _, _ = axis_dims(head_dim)
    ang = angles(jnp.asarray(shift, jnp.float32), axis_frequencies(d_t, theta))
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    xt = x[..., :d_t].astype(jnp.float32).reshape(x.shape[:-1] + (d_t // 2, 2))
    x0, x1 = xt[..., 0], xt[..., 1]
    rot = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1).reshape(x.shape[:-1] + (d_t,))
    return jnp.concatenate([rot.astype(x.dtype), x[..., d_t:]], axis=-1)


def timestep_sinusoid(t: jax.Array, dim: int) -> jax.Array:
    """Wan time sinusoid: [cos | sin] of t * 10000^(-k / (dim/2)), float32.

    Upstream evaluates this in float64; `turns` gives float64-quality angles in float32.
    t: [...] -> [..., dim].
    """
    half = dim // 2
    freq = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
    a = angles(t, freq)
    return jnp.concatenate([jnp.cos(a), jnp.sin(a)], axis=-1)
