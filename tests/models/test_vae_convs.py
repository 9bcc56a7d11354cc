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


@pytest.mark.parametrize("frames", [1, 3, 5, 16] + [pytest.param(n, marks=pytest.mark.slow) for n in (2, 4, 7, 8)])
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


@pytest.mark.slow  # two decoder compiles; the fp32 half is also what the parity tests' whole-video decode runs
def test_streaming_weights_give_the_same_decode():
    """The streaming decoders' prepared weights (taps split and Winograd filters made once)
    decode as the stored ones, in fp32 (Winograd) and bf16 (taps only)."""
    for dtype in ("float32", "bfloat16"):
        cfg = vae.VAEConfig(base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temperal_downsample=(True, True),
                            dtype=dtype)
        rng = np.random.default_rng(4)
        p = {k: jnp.asarray(rng.standard_normal(s) * 0.2, dtype) for k, s in vae.param_shapes(cfg).items()}
        prepared = vae.streaming_weights(p, cfg)
        kinds = {type(w).__name__ for w in prepared.values()}
        assert ("WinogradTaps" in kinds) == (dtype == "float32") and "tuple" in kinds
        z = jnp.asarray(rng.standard_normal((1, 1, 3, 4, cfg.z_dim)), dtype)
        state = vae.init_state(p, cfg, 1, (3, 4), jnp.dtype(dtype))
        step = jax.jit(lambda p, z, s: vae.decode_frame(p, cfg, z, s, first=False))
        (a, sa), (b, sb) = step(p, z, state), step(prepared, z, state)
        assert a.shape == b.shape == (1, 4, 12, 16, 3)
        assert _rel(b.astype(jnp.float32), a.astype(jnp.float32)) <= (1e-6 if dtype == "float32" else 0)
        assert jax.tree.structure(sa) == jax.tree.structure(sb)


def test_frames_per_call_follows_the_temporal_upsamplers():
    cfg = vae.VAEConfig()  # Wan2.1: upsample in time after up_blocks 0 and 1
    assert [vae.frames_per_call(cfg, f"decoder.up_blocks.{i}.resnets.0.conv1") for i in range(4)] == [1, 2, 4, 4]
    assert vae.frames_per_call(cfg, "decoder.up_blocks.1.upsamplers.0.time_conv") == 2
    assert vae.frames_per_call(cfg, "decoder.conv_in") == vae.frames_per_call(cfg, "decoder.mid_block.resnets.0.conv1") == 1
    assert vae.frames_per_call(cfg, "decoder.conv_out") == 4
