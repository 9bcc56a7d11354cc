"""3-D RoPE: axis split, float32 accuracy at huge positions, rotation and time shifts."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from pyramid_jax import rope


def test_axis_dims():
    assert rope.axis_dims(128) == (44, 42, 42)
    assert rope.axis_dims(16) == (8, 4, 4)
    assert rope.axis_dims(32) == (12, 10, 10)


def _wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


@pytest.mark.parametrize("d_axis", [44, 42, 8])
def test_angles_accurate_to_100k_frames(d_axis):
    """Positions up to 100,000 latent frames: error <= 1e-4 rad in float32 (target ~1e-6)."""
    freq = rope.axis_frequencies(d_axis, rope.WAN_THETA)
    pos = np.concatenate([np.arange(0, 64), np.arange(1020, 1030), [4096, 65535, 99_999, 100_000],
                          np.random.default_rng(0).integers(0, 100_001, 200)]).astype(np.float64)
    got = np.asarray(rope.angles(jnp.asarray(pos, jnp.float32), freq), np.float64)
    want = pos[:, None] * freq[None, :]
    err = np.abs(_wrap(got - want)).max()
    assert err <= 1e-5, err
    # Negative positions (time shifts that move a page earlier) are as accurate.
    got = np.asarray(rope.angles(jnp.asarray(-pos, jnp.float32), freq), np.float64)
    assert np.abs(_wrap(got + want)).max() <= 1e-5


def test_timestep_sinusoid_matches_float64():
    t = np.array([1000.0, 937.5, 833.3333, 625.0, 250.0, 0.0], np.float32)
    got = np.asarray(rope.timestep_sinusoid(jnp.asarray(t), 256), np.float64)
    freq = np.power(10000.0, -np.arange(128, dtype=np.float64) / 128)
    arg = t.astype(np.float64)[:, None] * freq
    want = np.concatenate([np.cos(arg), np.sin(arg)], axis=-1)
    assert np.abs(got - want).max() <= 2e-6


def _complex_rope(x, f, h, w, head_dim):
    """Float64 complex reference: upstream's rope_apply for one token grid."""
    d_t, d_h, d_w = rope.axis_dims(head_dim)
    ang = []
    for pos, d in ((f, d_t), (h, d_h), (w, d_w)):
        ang.append(pos * rope.axis_frequencies(d, rope.WAN_THETA))
    a = np.concatenate(ang)
    xc = x[..., 0::2] + 1j * x[..., 1::2]
    y = xc * np.exp(1j * a)
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = y.real, y.imag
    return out


def test_apply_rope_matches_complex_reference():
    dh, nf, gh, gw = 16, 3, 2, 3
    rng = np.random.default_rng(1)
    x = rng.standard_normal((nf * gh * gw, 2, dh))
    cos, sin = rope.rope_tables(jnp.int32(5000), nf, gh, gw, dh, rope.WAN_THETA)
    got = np.asarray(rope.apply_rope(jnp.asarray(x, jnp.float32), cos[:, None], sin[:, None]))
    i = 0
    for f in range(nf):
        for h in range(gh):
            for w in range(gw):
                np.testing.assert_allclose(got[i], _complex_rope(x[i], 5000 + f, h, w, dh), atol=2e-5)
                i += 1


def test_shift_time_moves_only_the_frame_axis():
    """shift_time(rope(k at t), s) == rope(k at t + s)."""
    dh, gh, gw = 32, 2, 2
    k = np.random.default_rng(2).standard_normal((gh * gw, 3, dh)).astype(np.float32)
    cos, sin = rope.rope_tables(jnp.int32(40), 1, gh, gw, dh, rope.WAN_THETA)
    cos2, sin2 = rope.rope_tables(jnp.int32(40 - 25), 1, gh, gw, dh, rope.WAN_THETA)
    shifted = rope.shift_time(rope.apply_rope(jnp.asarray(k), cos[:, None], sin[:, None]), jnp.int32(-25), dh, rope.WAN_THETA)
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(rope.apply_rope(jnp.asarray(k), cos2[:, None], sin2[:, None])),
                               atol=1e-5)
