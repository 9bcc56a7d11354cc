"""The Wan VAE decoder's conv rewrites against the plain sums they replace: temporal Winograd
tiles, the nearest-x2 upsample as phase convs, the first frame's skipped zero taps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pyramid_jax.models import convs
from pyramid_jax.models.vae import modeling as vae


def _direct(x, taps, padding):
    """The 3-D conv as the plain sum over temporal taps of per-frame 2-D convs."""
    b, tt, hh, ww, c = x.shape
    t = tt - len(taps) + 1
    y = sum(convs.conv2d(x[:, k:k + t].reshape((b * t, hh, ww, c)), w, padding) for k, w in enumerate(taps))
    return y.reshape((b, t) + y.shape[1:])


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 7, 8, 16])
def test_temporal_winograd_matches_the_tap_sum(frames):
    rng = np.random.default_rng(frames)
    x = jnp.asarray(rng.standard_normal((2, frames + 2, 6, 5, 8)), jnp.float32)
    taps = tuple(jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.float32) for _ in range(3))
    got = vae._frames_conv(x, taps, [(1, 1), (1, 1)])
    want = _direct(x, taps, [(1, 1), (1, 1)])
    assert got.shape == want.shape == (2, frames, 6, 5, 16)
    assert _rel(got, want) <= 5e-6


def test_winograd_tables_compute_the_correlation():
    """Y = A^T [(G g) * (B^T d)] is sum_k g[k] d[t + k] for every tile size, in float64."""
    rng = np.random.default_rng(0)
    for m, (bt, g, at) in vae._WINOGRAD.items():
        d, k = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), np.correlate(d, k, "valid"), rtol=1e-12, atol=1e-12)


def test_bf16_keeps_the_direct_sum():
    """Winograd's transforms amplify rounding: bfloat16 convs keep the plain sum, bit for bit."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, 6, 4, 4, 8)), jnp.bfloat16)
    taps = tuple(jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.bfloat16) for _ in range(3))
    np.testing.assert_array_equal(np.asarray(vae._frames_conv(x, taps, [(1, 1), (1, 1)]), np.float32),
                                  np.asarray(_direct(x, taps, [(1, 1), (1, 1)]), np.float32))


@pytest.mark.parametrize("hw", [(4, 4), (5, 7)])
def test_upsample_phase_convs_match_upsample_then_conv(hw):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((3, *hw, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 4)), jnp.float32)
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    want = convs.conv2d(up, w, [(1, 1), (1, 1)])
    got = convs.upsample2x_conv(x, w)
    assert got.shape == want.shape == (3, 2 * hw[0], 2 * hw[1], 4)
    assert _rel(got, want) <= 2e-6


def test_first_frame_skips_only_zero_taps():
    """A causal conv with no cache (a video's start) and one frame: the last tap alone, the
    same output and the same new cache as the full conv over the zero padding."""
    rng = np.random.default_rng(3)
    p = {"c.weight": jnp.asarray(rng.standard_normal((3, 3, 3, 8, 16)), jnp.float32),
         "c.bias": jnp.asarray(rng.standard_normal((16,)), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((2, 1, 5, 6, 8)), jnp.float32)
    new = {}
    got = vae.causal_conv(p, "c", x, {}, new)
    zeros = jnp.zeros((2, 2, 5, 6, 8), jnp.float32)
    want = _direct(jnp.concatenate([zeros, x], 1), vae._taps(p["c.weight"]), [(1, 1), (1, 1)]) + p["c.bias"]
    assert _rel(got, want) <= 1e-6
    np.testing.assert_array_equal(np.asarray(new["c"]), np.asarray(jnp.concatenate([zeros[:, 1:], x], 1)))


def test_split_taps_gives_the_same_decode():
    """The streaming decoders' prepared weights (taps split once) decode as the stored ones."""
    cfg = vae.VAEConfig(base_dim=8, dim_mult=(1, 2), num_res_blocks=1, temperal_downsample=(True,))
    shapes = vae.param_shapes(cfg)
    rng = np.random.default_rng(4)
    p = {k: jnp.asarray(rng.standard_normal(s) * 0.2, jnp.float32) for k, s in shapes.items()}
    z = jnp.asarray(rng.standard_normal((1, 1, 3, 4, cfg.z_dim)), jnp.float32)
    state = vae.init_state(p, cfg, 1, (3, 4))
    a, sa = jax.jit(lambda p, z, s: vae.decode_frame(p, cfg, z, s, first=False))(p, z, state)
    b, sb = jax.jit(lambda p, z, s: vae.decode_frame(p, cfg, z, s, first=False))(vae.split_taps(p), z, state)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
