"""The Pallas paged-attention kernel (interpreted on CPU) equals the reference backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from conftest import rel_err
from pyramid_jax import rope
from pyramid_jax.attention import check_backend, in_use_only
from pyramid_jax.attention import pallas as pk
from pyramid_jax.attention import pallas_triton as pt
from pyramid_jax.attention import reference as ref
from pyramid_jax.cache.head_map import ANCHOR, DYNAMIC, STATIC, VEIL, WAVE
from pyramid_jax.cache.policies import make_policy
from pyramid_jax.cache.pool import PoolSpec, quantize
from pyramid_jax.cache.pyramid import PyramidPolicy
from pyramid_jax.models.wan.modeling import WanConfig, init_model
from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout

THETA = rope.WAN_THETA


def _case(seed, b, c, grid, h, dh, s, p, valid="random", dtype=jnp.float32, page_len=False, span=1):
    """Random q/k/v, a pool of s frames' worth of pages (a frame = `span` pages) and a plan of p
    entries per (frame, head), starting at any page."""
    rng = np.random.default_rng(seed)
    t = grid[0] * grid[1]
    tp = -(-t // span)
    n_pages = (s + 1) * span
    r = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    slot = rng.permutation(np.tile(np.arange(s), p // s + 1))[:p].reshape(1, 1, p) * span
    slot = np.broadcast_to(slot, (c, h, p)) + rng.integers(0, span, (c, h, p))
    slot[..., ::-1].sort(axis=-1)  # entries out of page order
    if valid == "none":
        ok = np.zeros((c, h, p), bool)
    elif valid == "one":
        ok = np.zeros((c, h, p), bool)
        ok[..., p // 2] = True
    elif valid == "all":
        ok = np.ones((c, h, p), bool)
    else:
        ok = rng.random((c, h, p)) < 0.6
    plen = jnp.asarray(rng.integers(1, t + 1, (n_pages,)), jnp.int32) if page_len else None
    args = (r(b, c, t, h, dh), r(b, c * t, h, dh), r(b, c * t, h, dh), r(b, n_pages, tp, dh), r(b, n_pages, tp, dh),
            jnp.asarray(slot, jnp.int32), jnp.asarray(rng.integers(-40, 40, (c, h, p)), jnp.int32), jnp.asarray(ok))
    return args, plen


CASES = [  # (name, b, c, grid, h, dh, s, p, valid, page_len, span)
    ("no valid page", 1, 3, (6, 10), 2, 64, 4, 4, "none", False, 1),
    ("one page", 1, 3, (6, 10), 2, 128, 4, 4, "one", False, 1),
    ("all pages, batch 2", 2, 3, (6, 10), 2, 64, 5, 5, "all", False, 1),
    ("random, partial entries over 4 pages", 2, 3, (3, 5), 3, 128, 6, 7, "random", True, 4),
    ("frames over 3 pages", 1, 3, (6, 10), 2, 64, 4, 4, "all", False, 3),
    ("one query frame", 1, 1, (6, 10), 2, 64, 3, 2, "random", False, 1),
    ("no pages at all", 1, 3, (6, 10), 2, 64, 3, 0, "random", False, 1),
]


# the quick loop keeps the general and the edge cases; the rest run in the full suite (and
# the Triton program and the 8-bit test run them all quickly)
_SLOW_CASES = ("one page", "all pages, batch 2", "frames over 3 pages")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c[0] in _SLOW_CASES else c
                                  for c in CASES], ids=[c[0] for c in CASES])
def test_kernel_equals_reference_fp32(case):
    _, b, c, grid, h, dh, s, p, valid, plen, span = case
    args, page_len = _case(0, b, c, grid, h, dh, s, p, valid, page_len=plen, span=span)
    want = ref.paged_attention(*args, page_len=page_len, theta=THETA)
    got = pk.paged_attention(*args, page_len=page_len, theta=THETA)
    assert not np.isnan(np.asarray(got)).any()
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_kernel_equals_reference_fp32(case):
    """The GPU (Triton) kernel's program, interpreted on CPU: masked key blocks, dynamic page loops."""
    _, b, c, grid, h, dh, s, p, valid, plen, span = case
    args, page_len = _case(0, b, c, grid, h, dh, s, p, valid, page_len=plen, span=span)
    got = pt.paged_attention(*args, page_len=page_len, theta=THETA, interpret=True, tiling=(16, 16, 4, 2))
    assert not np.isnan(np.asarray(got)).any()
    assert rel_err(got, ref.paged_attention(*args, page_len=page_len, theta=THETA)) <= 1e-5


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (the Triton lowering)")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", CASES + [("real frame", 2, 3, (30, 52), 2, 128, 4, 5, "random", True, 4)],
                         ids=[c[0] for c in CASES] + ["real frame"])
def test_triton_kernel_on_gpu(case, dtype):
    _, b, c, grid, h, dh, s, p, valid, plen, span = case
    args, page_len = _case(5, b, c, grid, h, dh, s, p, valid, dtype=dtype, page_len=plen, span=span)
    got = np.asarray(jax.jit(lambda *a: pt.paged_attention(*a, page_len=page_len, theta=THETA))(*args), np.float32)
    with jax.default_matmul_precision("highest"):  # XLA's GPU default for fp32 is TF32
        want = np.asarray(ref.paged_attention(*[x.astype(jnp.float32) if x.dtype == dtype else x for x in args],
                                              page_len=page_len, theta=THETA), np.float32)
    assert not np.isnan(got).any()
    assert rel_err(got, want) <= (1e-5 if dtype == jnp.float32 else 1e-2)


@pytest.mark.slow
def test_kernel_real_frame_size():
    """30x52 latent tokens per frame (1560, not a multiple of the q block), head dim 128."""
    args, _ = _case(1, 1, 3, (30, 52), 1, 128, 3, 3, "random", span=4)
    want = ref.paged_attention(*args, theta=THETA)
    assert rel_err(pk.paged_attention(*args, theta=THETA), want) <= 1e-5
    assert rel_err(pt.paged_attention(*args, theta=THETA, interpret=True), want) <= 1e-5


def test_kernel_bf16():
    args, page_len = _case(2, 2, 3, (6, 10), 2, 64, 4, 5, "random", dtype=jnp.bfloat16, page_len=True)
    got = pk.paged_attention(*args, page_len=page_len, theta=THETA)
    want = ref.paged_attention(*args, page_len=page_len, theta=THETA)
    err = rel_err(np.asarray(got, np.float32), np.asarray(want, np.float32))
    print(f"bf16 rel err {err:.2e}")
    assert err <= 1e-2 and not np.isnan(np.asarray(got, np.float32)).any()


@pytest.mark.slow
def test_kernel_tpu_interpreter():
    """TPU semantics (Mosaic block rules, scalar prefetch, scratch) checked by the TPU interpreter."""
    args, _ = _case(3, 1, 3, (4, 4), 2, 128, 4, 3, "random", page_len=True, span=2)
    got = pk.paged_attention(*args, theta=THETA, interpret=pltpu.InterpretParams())
    assert rel_err(got, ref.paged_attention(*args, theta=THETA)) <= 1e-5


@pytest.mark.parametrize("kv_dtype", ["int8", "float8_e4m3fn"])
@pytest.mark.parametrize("case", [CASES[3], CASES[4]], ids=[CASES[3][0], CASES[4][0]])
def test_eight_bit_pages_every_backend(case, kv_dtype):
    """8-bit pages with per-token scales: both kernels dequantize on load exactly as the
    reference does, and the reference stays close to fp32 pages."""
    _, b, c, grid, h, dh, s, p, valid, plen, span = case
    args, page_len = _case(4, b, c, grid, h, dh, s, p, valid, page_len=plen, span=span)
    (pool_k, k_scale), (pool_v, v_scale) = quantize(args[3], jnp.dtype(kv_dtype)), quantize(args[4], jnp.dtype(kv_dtype))
    eight = (*args[:3], pool_k, pool_v, *args[5:])
    kw = dict(page_len=page_len, theta=THETA, k_scale=k_scale, v_scale=v_scale)
    want = ref.paged_attention(*eight, **kw)
    assert rel_err(pk.paged_attention(*eight, **kw), want) <= 1e-5
    assert rel_err(pt.paged_attention(*eight, **kw, interpret=True, tiling=(16, 16, 4, 2)), want) <= 1e-5
    full = ref.paged_attention(*args, page_len=page_len, theta=THETA)
    assert rel_err(want, full) <= (1e-2 if kv_dtype == "int8" else 4e-2)


@pytest.mark.slow
def test_eight_bit_pages_tpu_interpreter():
    args, _ = _case(3, 1, 3, (4, 4), 2, 128, 4, 3, "random", page_len=True, span=2)
    (pool_k, k_scale), (pool_v, v_scale) = quantize(args[3], jnp.int8), quantize(args[4], jnp.int8)
    eight = (*args[:3], pool_k, pool_v, *args[5:])
    got = pk.paged_attention(*eight, theta=THETA, k_scale=k_scale, v_scale=v_scale, interpret=pltpu.InterpretParams())
    assert rel_err(got, ref.paged_attention(*eight, theta=THETA, k_scale=k_scale, v_scale=v_scale)) <= 1e-5


@pytest.mark.parametrize("shifted", [pytest.param(False, marks=pytest.mark.slow), True])
def test_shared_plan_row_equals_per_frame_plan(shifted):
    """A plan of one row for every query frame ([1, H, P]; no time shifts as None) gives what
    that row repeated per frame gives, on the reference and both kernels."""
    args, page_len = _case(4, 2, 3, (3, 5), 3, 64, 6, 5, "random", page_len=True, span=2)
    q, k, v, pool_k, pool_v, slot, shift, valid = args
    shared = (slot[:1], shift[:1] if shifted else None, valid[:1])
    repeated = (jnp.repeat(slot[:1], 3, 0), jnp.repeat(shift[:1], 3, 0) if shifted else jnp.zeros_like(shift),
                jnp.repeat(valid[:1], 3, 0))
    kw = dict(page_len=page_len, theta=THETA)
    want = ref.paged_attention(q, k, v, pool_k, pool_v, *repeated, **kw)
    for run in (ref.paged_attention, pk.paged_attention,
                lambda *a, **k: pt.paged_attention(*a, **k, interpret=True, tiling=(16, 16, 4, 2))):
        assert rel_err(run(q, k, v, pool_k, pool_v, *shared, **kw), want) <= 1e-5


@pytest.mark.parametrize("valid", ["none", pytest.param("one", marks=pytest.mark.slow), "random",
                                   pytest.param("all", marks=pytest.mark.slow)])
def test_in_use_only_equals_the_whole_plan(valid):
    """The reference over only the entries in use (cut to a bucket at run time, under jit)
    equals the reference over the whole plan, per-frame and shared rows alike."""
    args, page_len = _case(5, 2, 3, (3, 5), 3, 64, 6, 11, valid, page_len=True, span=2)
    q, k, v, pool_k, pool_v, slot, shift, ok = args
    kw = dict(page_len=page_len, theta=THETA)
    trimmed = jax.jit(lambda *a: in_use_only(ref.paged_attention)(*a, **kw))
    for plan in ((slot, shift, ok), (slot[:1], None, ok[:1])):
        want = ref.paged_attention(q, k, v, pool_k, pool_v, *plan, **kw)
        assert rel_err(trimmed(q, k, v, pool_k, pool_v, *plan), want) <= 1e-6


def test_backend_checks():
    for platform in ("cpu", "gpu", "tpu"):
        assert check_backend("pallas", platform) == "pallas"
    with pytest.raises(ValueError, match="no lowering for platform 'rocm'"):
        check_backend("pallas", "rocm")
    with pytest.raises(ValueError, match="unknown attention.backend"):
        check_backend("flash", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pyramid", "dummy_forcing", "forcing_kv"])
def test_head_aware_rollout_pallas_equals_reference(name):
    """A head-aware rollout with the pallas backend gives the reference backend's latents
    (fp32), and nothing recompiles after the first chunk (Dummy Forcing's typing chunk and
    Forcing-KV's band pages of 3 tokens included; Dummy's layout after typing compiles once more)."""
    cfg = WanConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, in_channels=4, out_channels=4,
                    text_dim=24, freq_dim=32, text_len=5)
    spec = PoolSpec(2, 4, 16, (3, 5), 3)
    sampler = Sampler()
    policy = {"pyramid": lambda: PyramidPolicy(spec, np.array([[WAVE, ANCHOR, VEIL, WAVE], [VEIL, ANCHOR, WAVE, ANCHOR]])),
              "dummy_forcing": lambda: make_policy("dummy_forcing", spec, 27, num_dummy=4),
              "forcing_kv": lambda: make_policy("forcing_kv", spec, 27, sink_size=1, num_frame_patch=5,
                                                head_map=np.array([[STATIC, DYNAMIC] * 2, [DYNAMIC, STATIC] * 2]))}[name]()
    ctx = jax.random.normal(jax.random.key(0), (1, 5, 24))
    lat = {}
    for backend in ("reference", "pallas"):
        model = init_model(cfg, seed=4, attention_backend=backend)
        compiles = [0]
        jax.monitoring.register_event_duration_secs_listener(
            lambda e, *a, **k: e == "/jax/core/compile/backend_compile_duration" and compiles.__setitem__(0, compiles[0] + 1))
        after = []
        try:
            lat[backend] = rollout(model, policy, sampler, model.text_kv(ctx),
                                   RandomNoise(1, (1, 27, 4, 6, 10), sampler), 9,
                                   on_chunk=lambda k, *_: after.append(compiles[0])).latents
        finally:
            jax.monitoring.clear_event_listeners()
        settled = 2 if name == "dummy_forcing" else 0  # Dummy's groups layout compiles once, in chunk 2
        assert after[settled:] == [compiles[0]] * (9 - settled), after
    assert rel_err(lat["pallas"], lat["reference"]) <= 1e-5
