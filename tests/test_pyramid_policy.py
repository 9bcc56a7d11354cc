"""Pyramid and deep-sink policies: attended (frame, RoPE time) sets equal SPEC section 6."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pyramid_jax.attention import reference as ref
from pyramid_jax.cache.head_map import ANCHOR, VEIL, WAVE
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.pyramid import PyramidPolicy
from pyramid_jax.cache.window import DeepSinkPolicy
from pyramid_jax.models import rope

F = 3
HEAD_MAP = np.array([[WAVE, ANCHOR, VEIL], [VEIL, WAVE, ANCHOR]])


def spec_pages(t_q, t0, typ):
    """SPEC section 6, written as plainly as possible: {(frame or ('block', k), rope time)}."""
    committed = list(range(t0))
    n_sink = {WAVE: 1, ANCHOR: 3, VEIL: 3}[typ]
    sink = {f for f in committed if f < n_sink}
    r0 = max(n_sink, t0 + F - 4)
    recent = {f for f in committed if f >= r0}
    sync = max(0, t_q - min(max(t_q, 18), 21))
    pages = {(f, sync) for f in sink} | {(f, f) for f in recent}
    if typ == WAVE:
        mids = [f for f in committed if f % 6 == t_q % 6][-4:]
    elif typ == ANCHOR:
        mids = [f for f in committed if f % 6 == 0][-4:]
    else:
        mids = []
        for k in [k for k in range(t0) if 4 * k + 3 < t0][-4:]:
            if not set(range(4 * k, 4 * k + 4)) <= (sink | recent):
                pages.add((("block", k), 4 * k + 1))
    pages |= {(f, sync) for f in mids if f not in sink and f not in recent}
    return pages


def planned_pages(policy, state, chunk):
    plan = policy.plan(state, jnp.int32(chunk))
    st = np.asarray(state.slot_time)
    plen = np.asarray(state.page_len)
    slot, shift, valid = (np.asarray(a) for a in (plan.slot, plan.time_shift, plan.valid))
    out = {}
    for layer in range(HEAD_MAP.shape[0]):
        for c in range(F):
            for h in range(HEAD_MAP.shape[1]):
                pages = []
                for p in np.flatnonzero(valid[layer, c, h]):
                    s = slot[layer, c, h, p]
                    t = int(st[layer, h, s])
                    frame = ("block", (t - 1) // 4) if plen[layer, h, s] < policy.spec.tokens_per_frame else t
                    pages.append((frame, t + int(shift[layer, c, h, p])))
                assert len(pages) == len(set(pages)), f"a page is attended twice: {pages}"
                out[layer, c, h] = set(pages)
    return out


def _policy(grid=(3, 5)):
    spec = PoolSpec(num_layers=2, num_heads=3, head_dim=16, grid=grid, frames_per_chunk=F)
    return PyramidPolicy(spec, HEAD_MAP)


def _chunk_kv(policy, chunk, seed=0):
    sp = policy.spec
    shape = (sp.num_layers, 1, sp.num_heads, F, sp.tokens_per_frame, sp.head_dim)
    k = jax.random.normal(jax.random.fold_in(jax.random.key(seed), chunk), shape)
    return k, k * 0.5


def test_pyramid_pages_match_spec_over_80_chunks():
    policy = _policy()
    assert policy.num_slots == 1 + 1 + 24  # Wave: sink + recent + 6 phases x 4
    commit = jax.jit(policy.commit)
    state = policy.init(1, jnp.float32)
    for chunk in range(80):
        got = planned_pages(policy, state, chunk)
        for (layer, c, h), pages in got.items():
            want = spec_pages(chunk * F + c, chunk * F, HEAD_MAP[layer, h])
            assert pages == want, (chunk, layer, c, h, sorted(map(str, pages ^ want)))
        state = commit(state, _chunk_kv(policy, chunk), jnp.int32(chunk))
        assert state.k.shape[3] == policy.num_slots
    # steady state: Wave 9 frames, Anchor 11, Veil 7 + 4 merged blocks (own chunk included)
    counts = {HEAD_MAP[0, h]: len(got[0, 0, h]) + F for h in range(3)}
    assert counts == {WAVE: 9, ANCHOR: 11, VEIL: 7 + 4}


def test_merged_block_is_pooled_prerope_keys_at_block_time():
    """A completed block holds mean-pooled (4 frames x 2x2, partial borders) pre-RoPE keys,
    RoPE'd at time 4k+1 and the patch corners; values mean-pooled likewise."""
    policy = _policy(grid=(3, 5))
    sp = policy.spec
    state = policy.init(1, jnp.float32)
    kvs = []
    for chunk in range(3):  # frames 0..8: blocks [0..3] and [4..7] complete
        kv = _chunk_kv(policy, chunk, seed=3)
        kvs.append(kv)
        state = policy.commit(state, kv, jnp.int32(chunk))
    k_all = np.concatenate([np.asarray(k) for k, _ in kvs], axis=3)  # [L, 1, H, 9, T, Dh]
    v_all = np.concatenate([np.asarray(v) for _, v in kvs], axis=3)
    layer, h = 0, 2  # a Veil head
    blk = 1  # frames 4..7
    grid_k = k_all[layer, 0, h, 4:8].reshape(4, 3, 5, -1)
    grid_v = v_all[layer, 0, h, 4:8].reshape(4, 3, 5, -1)
    pooled_k, pooled_v = [], []
    for py in range(2):
        for px in range(3):
            pooled_k.append(grid_k[:, 2 * py:2 * py + 2, 2 * px:2 * px + 2].reshape(-1, 16).mean(0))
            pooled_v.append(grid_v[:, 2 * py:2 * py + 2, 2 * px:2 * px + 2].reshape(-1, 16).mean(0))
    cos, sin = rope.grid_tables(jnp.array([5]), jnp.array([0, 2]), jnp.array([0, 2, 4]), sp.head_dim)
    want_k = np.asarray(rope.apply_rope(jnp.asarray(np.stack(pooled_k)), cos, sin))
    slot = int(policy.off_mid[layer, h]) + blk % 4
    assert int(state.slot_time[layer, h, slot]) == 4 * blk + 1
    assert int(state.page_len[layer, h, slot]) == 6
    np.testing.assert_allclose(np.asarray(state.k)[layer, 0, h, slot, :6], want_k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.v)[layer, 0, h, slot, :6], np.stack(pooled_v), rtol=1e-5, atol=1e-6)


def test_time_shift_equals_rerotating_keys():
    """Attention with a page's time shift equals attention over keys RoPE'd at the new time."""
    rng = np.random.default_rng(0)
    dh, gh, gw = 32, 2, 3
    t_f = gh * gw
    k_pre = rng.standard_normal((1, 2, 3, t_f, dh)).astype(np.float32)  # [B, H, S, T_f, Dh]
    stored_t = np.array([5, 40, 77])
    cos = lambda t: rope.grid_tables(jnp.array([t]), jnp.arange(gh), jnp.arange(gw), dh)
    pool_k = np.stack([np.asarray(rope.apply_rope(jnp.asarray(k_pre[:, :, s]), *cos(stored_t[s])))
                       for s in range(3)], axis=2)
    pool_v = rng.standard_normal(pool_k.shape).astype(np.float32)
    q = rng.standard_normal((1, 1, t_f, 2, dh)).astype(np.float32)
    kc = rng.standard_normal((1, t_f, 2, dh)).astype(np.float32)
    slot = np.broadcast_to(np.arange(3, dtype=np.int32), (1, 2, 3))
    new_t = np.array([[0, 39, 77], [3, 3, 3]])  # per head: remapped RoPE times
    shift = (new_t - stored_t)[None].astype(np.int32)
    valid = np.ones((1, 2, 3), bool)
    got = ref.paged_attention(*map(jnp.asarray, (q, kc, kc, pool_k, pool_v, slot, shift, valid)))
    for h in range(2):
        moved = np.stack([np.asarray(rope.apply_rope(jnp.asarray(k_pre[:, h, s]), *cos(new_t[h, s])))
                          for s in range(3)], axis=1)  # [B, S, T_f, Dh]
        pk = np.broadcast_to(moved[:, None], (1, 2, 3, t_f, dh)).copy()
        zero = np.zeros((1, 2, 3), np.int32)
        want = ref.paged_attention(*map(jnp.asarray, (q, kc, kc, pk, pool_v, slot, zero, valid)))
        np.testing.assert_allclose(np.asarray(got)[..., h, :], np.asarray(want)[..., h, :], atol=1e-5)


def test_deep_sink_moves_sinks_before_recent():
    spec = PoolSpec(num_layers=1, num_heads=1, head_dim=16, grid=(1, 2), frames_per_chunk=F)
    policy = DeepSinkPolicy(spec, num_frames=90)
    state = policy.init(1, jnp.float32)
    commit = jax.jit(policy.commit)
    for chunk in range(30):
        plan = policy.plan(state, jnp.int32(chunk))
        t0 = chunk * F
        st = np.asarray(state.slot_time)[0, 0]
        v = np.asarray(plan.valid)[0, 0, 0]
        pages = sorted((int(st[s]), int(st[s] + np.asarray(plan.time_shift)[0, 0, 0, s]))
                       for s in np.flatnonzero(v))
        frames = [f for f, _ in pages]
        want_frames = sorted(set(range(min(10, t0))) | set(range(max(0, t0 + F - 11), t0)))
        assert frames == want_frames
        r0 = t0 + F - 11
        for f, t in pages:
            assert t == (f if f >= max(10, r0) else f + max(0, t0 + F - 21))
        if t0 >= 21:  # sinks sit right before the first recent frame
            assert [t for f, t in pages if f < 10] == list(range(r0 - 10, r0))
        kv = jnp.zeros((1, 1, 1, F, 2, 16))
        state = commit(state, (kv, kv), jnp.int32(chunk))


def test_pyramid_refuses_wrong_head_map():
    spec = PoolSpec(num_layers=3, num_heads=3, head_dim=16, grid=(2, 2))
    with pytest.raises(ValueError, match="2 layers"):
        PyramidPolicy(spec, HEAD_MAP)
