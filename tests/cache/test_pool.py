"""pyramid_jax.cache.pool: page numbering (per head group), the empty cache's shapes, 8-bit
quantization, writing entries into slots' pages, entry means and key RoPE, each against
hand-worked pages or a plain-numpy rotation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pyramid_jax import sharding
from pyramid_jax.cache import pool
from pyramid_jax.cache.head_map import ANCHOR, VEIL, WAVE
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.pyramid import PyramidPolicy

# 2 x 3 latent tokens per frame, pages of 4 tokens: a frame fills 2 pages (the second holds 2)
SPEC = PoolSpec(num_layers=1, num_heads=2, head_dim=4, grid=(2, 3))
TP = 4

# jitted: one compile instead of many eager ops' compiles (seconds on a busy CPU)
write_entries = jax.jit(pool.write_entries)
quantize = jax.jit(pool.quantize, static_argnums=1)
entry_means = jax.jit(pool.entry_means, static_argnums=1)
rope_keys = jax.jit(pool.rope_keys, static_argnums=0)


def two_slot_state(spec=SPEC, batch=1, dtype=jnp.float32):
    """Every head of every layer owns two frame slots of 2 pages each. With one layer: head 0's
    slots start at pages 0 and 2, head 1's at 4 and 6."""
    pages = np.full((spec.num_layers, spec.num_heads, 2), 2)
    return pool.empty_state(spec, batch, dtype, pages, TP)


def tokens(shape, start=1.0):
    """Distinct, non-zero values (no entry can be mistaken for an empty page)."""
    return np.arange(start, start + math.prod(shape), dtype=np.float32).reshape(shape)


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- PoolSpec ------------------------------------------------------------------------------------


def test_pool_spec_facts():
    assert SPEC.tokens_per_frame == 6
    assert SPEC.frames_per_chunk == 3
    assert SPEC.page_dtype(jnp.bfloat16) == jnp.bfloat16  # "" = the model's dtype
    assert PoolSpec(1, 2, 4, (2, 3), kv_dtype="int8").page_dtype(jnp.bfloat16) == jnp.int8
    assert PoolSpec(1, 2, 4, (2, 3), kv_dtype="float32").page_dtype("bfloat16") == jnp.float32
    assert set(pool.KV_DTYPES) == {"", "bfloat16", "float32", "int8", "float8_e4m3fn"}


# -- allocate ------------------------------------------------------------------------------------


def test_allocate_numbers_units_in_layer_head_slot_order():
    units = np.array([[[2, 1], [0, 3]]])  # L=1, H=2, S=2
    first, block = pool.allocate(units)
    # head 0: slot 0 -> 0,1; slot 1 -> 2; head 1: slot 1 -> 3,4,5; the missing slot gets the total
    np.testing.assert_array_equal(first, [[[0, 2], [6, 3]]])
    assert first.dtype == np.int32 and block == 6


def test_allocate_pads_head_groups_to_the_largest():
    units = np.array([[[1], [2]], [[3], [0]]])  # L=2, H=2, S=1; group g = head g
    first, block = pool.allocate(units, head_groups=2)
    # group 0 (head 0): layer 0 -> 0, layer 1 -> 1..3 (4 units); group 1 (head 1) starts at 4
    assert block == 4
    np.testing.assert_array_equal(first, [[[0], [4]], [[1], [8]]])


def test_allocate_groups_own_disjoint_contiguous_blocks():
    rng = np.random.default_rng(0)
    units = rng.integers(0, 4, (3, 4, 5))
    first, block = pool.allocate(units, head_groups=2)
    owner = np.full(block * 2, -1)
    for l, h, s in zip(*np.nonzero(units)):
        run = np.arange(first[l, h, s], first[l, h, s] + units[l, h, s])
        assert np.all(owner[run] == -1), "two slots share a unit"
        owner[run] = h
        group = h // 2
        assert run.min() >= group * block and run.max() < (group + 1) * block
    assert np.all(first[units == 0] == 2 * block)


def test_allocate_refuses_uneven_head_groups():
    with pytest.raises(ValueError, match="^3 heads cannot be split into 2 equal groups$"):
        pool.allocate(np.ones((1, 3, 1), np.int64), head_groups=2)


# -- empty_state ---------------------------------------------------------------------------------


def test_empty_state_shapes_and_contents():
    s = two_slot_state(batch=2)
    assert s.k.shape == s.v.shape == (2, 8, TP, 4) and s.k.dtype == jnp.float32
    assert not np.any(np.asarray(s.k)) and not np.any(np.asarray(s.v))
    np.testing.assert_array_equal(s.page_len, np.full(8, 6))  # a whole frame until written
    np.testing.assert_array_equal(s.slot_time, np.full((1, 2, 2), -1))
    np.testing.assert_array_equal(s.slot_page, [[[0, 2], [4, 6]]])
    assert s.own == ()  # a policy that keeps nothing besides the pages
    assert s.k_scale.shape == s.v_scale.shape == (2, 0, 1, 1)
    for name in ("page_len", "slot_time", "slot_page"):
        assert getattr(s, name).dtype == jnp.int32, name


def test_empty_state_pages_follow_kv_dtype():
    spec = PoolSpec(1, 2, 4, (2, 3), kv_dtype="int8")
    s = two_slot_state(spec, batch=1, dtype=jnp.bfloat16)
    assert s.k.dtype == s.v.dtype == jnp.int8
    assert s.k_scale.shape == s.v_scale.shape == (1, 8, TP, 1) and s.k_scale.dtype == jnp.float32
    assert two_slot_state(dtype=jnp.bfloat16).k.dtype == jnp.bfloat16
    f8 = two_slot_state(PoolSpec(1, 2, 4, (2, 3), kv_dtype="float8_e4m3fn"))
    assert f8.k.dtype == jnp.float8_e4m3fn and f8.k_scale.shape[1] == 8


def test_pyramid_state_merge_rows_and_head_kinds():
    """The pyramid cache's own state (CacheState.own): head types, and an accumulator row per
    merging (Veil) head."""
    spec = PoolSpec(num_layers=2, num_heads=2, head_dim=4, grid=(2, 3))
    kind = np.array([[VEIL, ANCHOR], [WAVE, VEIL]])
    own = PyramidPolicy(spec, kind).init(3, jnp.float32).own
    # rows in (layer, head) order: L0H0 -> 0, L1H1 -> 1; the others get NA = 2
    np.testing.assert_array_equal(own.merge_row, [[0, 2], [2, 1]])
    # a pooled block: ceil(2 / 2) x ceil(3 / 2) = 2 tokens
    assert own.merge_k.shape == own.merge_v.shape == (3, 2, 2, 4) and own.merge_k.dtype == jnp.float32
    np.testing.assert_array_equal(own.head_kind, kind)
    assert own.head_kind.dtype == own.merge_row.dtype == jnp.int32


def test_empty_state_with_head_groups_pads_each_group():
    spec = PoolSpec(num_layers=1, num_heads=2, head_dim=4, grid=(2, 3))
    s = pool.empty_state(spec, 1, jnp.float32, np.array([[[2], [1]]]), TP, head_groups=2)
    assert s.k.shape[1] == 4  # two blocks of 2 pages
    np.testing.assert_array_equal(s.slot_page, [[[0], [2]]])


def test_empty_state_without_pages_keeps_one_page_per_group():
    s = pool.empty_state(SPEC, 1, jnp.float32, np.zeros((1, 2, 3)), TP, head_groups=2)
    assert s.k.shape == (1, 2, TP, 4)
    np.testing.assert_array_equal(s.slot_page, np.full((1, 2, 3), 2))  # no slot owns a page


def test_nbytes_counts_every_leaf():
    s = two_slot_state()
    # k, v: 8 pages x 4 tokens x 4 floats; page_len 8; slot_time, slot_page 4 each (int32);
    # the scale leaves are empty
    assert s.nbytes == 2 * 8 * 4 * 4 * 4 + 8 * 4 + 2 * 4 * 4


def test_pool_view_carries_scales_only_for_8bit_pages():
    plain = two_slot_state().pool()
    assert plain.k_scale is None and plain.v_scale is None
    np.testing.assert_array_equal(plain.page_len, np.full(8, 6))
    q = two_slot_state(PoolSpec(1, 2, 4, (2, 3), kv_dtype="int8")).pool()
    assert q.k.dtype == jnp.int8 and q.k_scale.shape == (1, 8, TP, 1) and q.v_scale.shape == (1, 8, TP, 1)


def test_logical_axes_fit_every_leaf():
    spec = PoolSpec(num_layers=2, num_heads=2, head_dim=4, grid=(2, 3), kv_dtype="int8")
    s = PyramidPolicy(spec, np.full((2, 2), VEIL)).init(1, jnp.float32)
    axes = s.logical_axes()
    is_spec = lambda a: isinstance(a, P)
    assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(s)  # one spec per leaf
    for leaf, logical in zip(jax.tree.leaves(s), jax.tree.leaves(axes, is_leaf=is_spec)):
        assert len(logical) <= leaf.ndim
    assert two_slot_state().logical_axes().own == ()
    # merge rows go with the heads, as the pages do
    assert sharding.mesh_spec(axes.own.merge_k) == P("data", "model")
    assert sharding.mesh_spec(axes.own.head_kind) == P(None, "model")
    # pages go with the heads (model axis), the batch with data
    assert sharding.mesh_spec(axes.k) == P("data", "model")
    assert sharding.mesh_spec(axes.page_len) == P("model")
    assert sharding.mesh_spec(axes.slot_page) == P(None, "model")


# -- quantize / dequantize -----------------------------------------------------------------------


def test_quantize_int8_scales_each_row_to_127():
    x = jnp.array([[1.0, -3.0, 0.5, 4.0], [0.0, 0.0, -2.0, 0.0]])
    q, scale = quantize(x, jnp.int8)
    assert q.dtype == jnp.int8 and scale.shape == (2, 1) and scale.dtype == jnp.float32
    np.testing.assert_allclose(scale[:, 0], [4 / 127, 2 / 127], rtol=1e-6)
    # 1 * 127/4 = 31.75, -3 * 127/4 = -95.25, 0.5 * 127/4 = 15.875
    np.testing.assert_array_equal(q, [[32, -95, 16, 127], [0, 0, -127, 0]])


def test_quantize_float8_scales_each_row_to_448():
    x = jnp.array([[2.0, -1.0, 0.0, 0.25]])
    q, scale = quantize(x, jnp.float8_e4m3fn)
    assert q.dtype == jnp.float8_e4m3fn
    np.testing.assert_allclose(scale, [[2 / 448]], rtol=1e-6)
    # 448 and 224 are exact in e4m3; 0.25 * 224 = 56 too
    np.testing.assert_array_equal(np.asarray(q, np.float32), [[448, -224, 0, 56]])


def test_quantize_a_zero_row_stays_finite():
    q, scale = quantize(jnp.zeros((2, 4)), jnp.int8)
    assert np.all(np.asarray(scale) > 0)
    np.testing.assert_array_equal(pool.dequantize(q, scale), np.zeros((2, 4)))


@pytest.mark.parametrize("dtype, top", [("int8", 127), ("float8_e4m3fn", 448)])
def test_quantize_round_trip(dtype, top):
    x = normal(0, (3, 5, 16)) * np.float32([0.01, 1.0, 100.0])[:, None, None]
    q, scale = quantize(x, jnp.dtype(dtype))
    back = pool.dequantize(q, scale)
    assert back.dtype == jnp.float32 and back.shape == x.shape
    row_max = np.abs(x).max(-1, keepdims=True)
    np.testing.assert_array_equal(np.abs(np.asarray(q, np.float32)).max(-1), top)  # each row's largest lands on top
    # int8: half a step of max/127; e4m3 (3 mantissa bits): 1/16 of the value, plus subnormals
    tol = row_max / 127 / 2 if dtype == "int8" else np.abs(x) / 16 + row_max / 448 * 2 ** -9
    assert np.all(np.abs(np.asarray(back) - x) <= tol * 1.001 + 1e-12)
    assert pool.dequantize(q, scale, jnp.bfloat16).dtype == jnp.bfloat16


def test_dequantize_without_scale_only_casts():
    x = jnp.array([1.5, -2.25], jnp.bfloat16)
    got = pool.dequantize(x, None)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, [1.5, -2.25])


# -- write_entries -------------------------------------------------------------------------------


def expected_pages(entries, num_pages=8, dh=4):
    """Pages [NP, Tp, Dh] holding each (first page, [n, Dh] tokens) entry, zero elsewhere."""
    out = np.zeros((num_pages, TP, dh), np.float32)
    for first, toks in entries:
        for i, row in enumerate(np.asarray(toks)):
            out[first + i // TP, i % TP] = row
    return out


def test_write_entries_fills_each_slots_pages():
    s = two_slot_state()
    k = tokens((1, 1, 2, 1, 5, 4))  # [L, B, H, E, n=5, Dh]: 5 tokens take 2 pages
    v = -k
    slots = jnp.array([[[0], [1]]])  # head 0 -> its slot 0 (page 0), head 1 -> its slot 1 (page 6)
    out = write_entries(s, k, v, slots, jnp.array([[[5], [7]]]))
    want = expected_pages([(0, k[0, 0, 0, 0]), (6, k[0, 0, 1, 0])])
    np.testing.assert_array_equal(out.k[0], want)
    np.testing.assert_array_equal(out.v[0], -want)
    np.testing.assert_array_equal(out.page_len, [5, 6, 6, 6, 6, 6, 5, 6])
    np.testing.assert_array_equal(out.slot_time, [[[5, -1], [-1, 7]]])
    np.testing.assert_array_equal(out.slot_page, s.slot_page)  # static


def test_write_entries_several_per_head_and_batch():
    s = two_slot_state(batch=2)
    k = tokens((1, 2, 2, 2, 6, 4))  # each head fills both of its slots, a whole frame each
    slots = jnp.array([[[1, 0], [0, 1]]])
    out = write_entries(s, k, k * 2, slots, jnp.array([[[3, 4], [8, 9]]]))
    for b in range(2):
        want = expected_pages([(2, k[0, b, 0, 0]), (0, k[0, b, 0, 1]), (4, k[0, b, 1, 0]), (6, k[0, b, 1, 1])])
        np.testing.assert_array_equal(out.k[b], want)
        np.testing.assert_array_equal(out.v[b], 2 * want)
    np.testing.assert_array_equal(out.slot_time, [[[4, 3], [8, 9]]])


def test_write_entries_skips_slots_past_the_last():
    s = two_slot_state()
    k = tokens((1, 1, 2, 1, 6, 4))
    out = write_entries(s, k, k, jnp.array([[[0], [2]]]), jnp.array([[[1], [1]]]))
    want = expected_pages([(0, k[0, 0, 0, 0])])  # head 1's entry is dropped
    np.testing.assert_array_equal(out.k[0], want)
    np.testing.assert_array_equal(out.slot_time, [[[1, -1], [-1, -1]]])
    np.testing.assert_array_equal(out.page_len, np.full(8, 6))


def test_write_entries_one_layer_traced():
    spec = PoolSpec(num_layers=2, num_heads=2, head_dim=4, grid=(2, 3))
    s = pool.empty_state(spec, 1, jnp.float32, np.full((2, 2, 1), 2), TP)  # L1H0 at page 4, L1H1 at 6
    k = tokens((1, 2, 1, 3, 4))  # [B, H, E, n=3, Dh]
    out = write_entries(s, k, -k, jnp.array([[0], [0]]), jnp.array([[2], [2]]), layer=jnp.int32(1))
    want = expected_pages([(4, k[0, 0, 0]), (6, k[0, 1, 0])])
    np.testing.assert_array_equal(out.k[0], want)
    np.testing.assert_array_equal(out.v[0], -want)
    np.testing.assert_array_equal(out.slot_time, [[[-1], [-1]], [[2], [2]]])
    np.testing.assert_array_equal(out.page_len, [6, 6, 6, 6, 3, 6, 3, 6])


def test_write_entries_8bit_pages_store_values_and_scales():
    s = two_slot_state(PoolSpec(1, 2, 4, (2, 3), kv_dtype="int8"))
    k = normal(1, (1, 1, 2, 1, 6, 4))
    out = write_entries(s, k, 3 * k, jnp.array([[[0], [1]]]), jnp.array([[[0], [1]]]))
    assert out.k.dtype == jnp.int8
    want = expected_pages([(0, k[0, 0, 0, 0]), (6, k[0, 0, 1, 0])])
    row_max = np.abs(want).max(-1, keepdims=True)
    written = row_max[..., 0] > 0
    np.testing.assert_allclose(np.asarray(out.k_scale[0])[written], row_max[written] / 127, rtol=1e-6)
    np.testing.assert_array_equal(out.k_scale[0, 2:6], 1.0)  # other heads' pages untouched
    got_k = np.asarray(pool.dequantize(out.k, out.k_scale))[0]
    got_v = np.asarray(pool.dequantize(out.v, out.v_scale))[0]
    assert np.all(np.abs(got_k - want) <= row_max / 254 + 1e-7)
    assert np.all(np.abs(got_v - 3 * want) <= 3 * row_max / 254 + 1e-6)


# -- entry_means ---------------------------------------------------------------------------------


def test_entry_means_average_each_written_entry():
    s = two_slot_state()
    k = tokens((1, 1, 2, 1, 5, 4))
    out = write_entries(s, k, k, jnp.array([[[0], [1]]]), jnp.array([[[0], [1]]]))
    means = entry_means(out, SPEC.tokens_per_frame)
    assert means.shape == (1, 1, 2, 2, 4) and means.dtype == jnp.float32
    want = np.zeros((1, 1, 2, 2, 4), np.float32)
    want[0, 0, 0, 0] = np.asarray(k[0, 0, 0, 0]).mean(0)  # over its 5 tokens, not the page's 8 rows
    want[0, 0, 1, 1] = np.asarray(k[0, 0, 1, 0]).mean(0)
    np.testing.assert_allclose(means, want, rtol=1e-6)


def test_entry_means_of_8bit_pages_are_dequantized():
    s = two_slot_state(PoolSpec(1, 2, 4, (2, 3), kv_dtype="int8"))
    k = normal(2, (1, 1, 2, 1, 6, 4))
    out = write_entries(s, k, k, jnp.array([[[1], [0]]]), jnp.array([[[0], [0]]]))
    means = np.asarray(entry_means(out, 6))
    np.testing.assert_allclose(means[0, 0, 0, 1], np.asarray(k[0, 0, 0, 0]).mean(0), atol=0.02)
    np.testing.assert_allclose(means[0, 0, 1, 0], np.asarray(k[0, 0, 1, 0]).mean(0), atol=0.02)
    np.testing.assert_array_equal(means[0, 0, 0, 0], 0)
    np.testing.assert_array_equal(means[0, 0, 1, 1], 0)


# -- rope_keys -----------------------------------------------------------------------------------


def numpy_rope(k, times, grid, theta):
    """Wan's 3-D RoPE in float64: a head of 12 splits into frame / row / column widths of 4,
    each rotating adjacent pairs (x[2i], x[2i+1]) by position * theta^(-2i / width)."""
    k = np.asarray(k, np.float64)
    out = np.empty_like(k)
    freq = theta ** (-np.arange(0, 4, 2) / 4)
    gh, gw = grid
    for f, t in enumerate(times):
        for tok in range(gh * gw):
            ang = np.concatenate([t * freq, (tok // gw) * freq, (tok % gw) * freq])
            x0, x1 = k[f, tok, 0::2], k[f, tok, 1::2]
            out[f, tok, 0::2] = x0 * np.cos(ang) - x1 * np.sin(ang)
            out[f, tok, 1::2] = x0 * np.sin(ang) + x1 * np.cos(ang)
    return out


def test_rope_keys_match_a_numpy_rotation():
    spec = PoolSpec(num_layers=1, num_heads=1, head_dim=12, grid=(2, 3))
    k = normal(3, (2, 6, 12))  # [F, T, Dh]
    times = [3, 250]
    got = rope_keys(spec, k, jnp.array(times, jnp.int32))
    assert got.shape == k.shape and got.dtype == k.dtype
    np.testing.assert_allclose(got, numpy_rope(k, times, spec.grid, spec.theta), atol=2e-5)


def test_rope_keys_leading_axes_and_origin():
    spec = PoolSpec(num_layers=1, num_heads=1, head_dim=12, grid=(2, 3))
    k = normal(4, (2, 3, 1, 6, 12))  # [B, H, F, T, Dh]
    got = np.asarray(rope_keys(spec, k, jnp.array([0], jnp.int32)))
    np.testing.assert_allclose(got[..., 0, :], k[..., 0, :], atol=1e-6)  # frame 0, row 0, col 0: no turn
    for b in range(2):
        for h in range(3):
            np.testing.assert_allclose(got[b, h], numpy_rope(k[b, h], [0], spec.grid, spec.theta), atol=2e-5)
    assert rope_keys(spec, k.astype(jnp.bfloat16), jnp.array([1])).dtype == jnp.bfloat16
