"""Pyramid and deep-sink policies: what each (chunk, pass, query frame, head) attends, and at
which RoPE time, equals a plain restatement of upstream Pyramid Forcing's cache.

Attended entries are identified by their content, not the cache's metadata: frame t is
written with keys u_t (one random vector per frame, every token) and values t + 1, so an
entry's values name its source (a merged block [4b, 4b+3] holds 4b + 2.5) and its key, moved
by the plan's time shift, tells the RoPE time it is attended at.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pyramid_jax.attention import reference as ref
from pyramid_jax.cache.head_map import ANCHOR, VEIL, WAVE
from pyramid_jax.cache.policies import advance_fn
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.pyramid import PyramidPolicy
from pyramid_jax.cache.window import DeepSinkPolicy
from pyramid_jax import rope
from upstream_caches import upstream_keys

F, DH, GRID = 3, 16, (3, 5)
HEAD_MAP = np.array([[WAVE, ANCHOR, VEIL], [VEIL, WAVE, ANCHOR]])
CHUNKS = 45
U = np.random.default_rng(0).standard_normal((CHUNKS * F, DH)).astype(np.float32)


def _policy(grid=GRID):
    spec = PoolSpec(num_layers=2, num_heads=3, head_dim=DH, grid=grid, frames_per_chunk=F)
    return PyramidPolicy(spec, HEAD_MAP)


def chunk_kv(chunk, tokens, layers=2, heads=3):
    """k_pre: every token of frame t is U[t]; v: every value t + 1. [L, 1, H, F, T, Dh] each."""
    t = np.arange(chunk * F, chunk * F + F)
    k = np.broadcast_to(U[t][None, None, None, :, None], (layers, 1, heads, F, tokens, DH))
    v = np.broadcast_to((t + 1.0)[None, None, None, :, None, None], k.shape)
    return jnp.asarray(k), jnp.asarray(v, jnp.float32)


@functools.lru_cache(maxsize=None)
def _candidates():
    """Key of every source at every RoPE time, token position (0, 0): frames [T, T, Dh] and
    merged blocks [T // 4, T, Dh] (source, time)."""
    n = CHUNKS * F
    cos, sin = rope.grid_tables(jnp.arange(n), jnp.zeros(1), jnp.zeros(1), DH, rope.WAN_THETA)
    blocks = U[:n // 4 * 4].reshape(-1, 4, DH).mean(1)
    at_all = lambda u: np.asarray(rope.apply_rope(jnp.broadcast_to(jnp.asarray(u)[:, None], (len(u), n, DH)), cos, sin))
    return at_all(U), at_all(blocks)


def _name(value, key):
    """An entry's source from its value; the RoPE time its key (already moved) sits at."""
    frames, blocks = _candidates()
    src = float(value) - 1
    if abs(src - round(src)) < 1e-4:
        name, cand = int(round(src)), frames[int(round(src))]
    else:
        b = int(round((src - 1.5) / 4))
        name, cand = ("block", b), blocks[b]
    dist = np.abs(cand - key).max(-1)
    assert dist.min() < 1e-4, f"entry {name}: key matches no RoPE time (closest {dist.min():.2e})"
    return name, int(dist.argmin())


def attended_sets(pool, lplan, own_k, t0):
    """{(c, h): sorted (source, time) pairs} one layer's plan attends: entries + own frames."""
    slot, shift, valid = (np.asarray(a) for a in (lplan.slot, lplan.time_shift, lplan.valid))
    own_shift = np.zeros((valid.shape[1], F), int) if lplan.own_shift is None else np.asarray(lplan.own_shift)
    pk, pv = np.asarray(pool.k)[0, :, 0], np.asarray(pool.v)[0, :, 0, 0]  # first token of each page
    rows = []  # (c, h, stored key, shift, value)
    for c, h, p in zip(*np.nonzero(valid)):
        rows.append((c, h, pk[slot[c, h, p]], shift[c, h, p], pv[slot[c, h, p]]))
    for c in range(valid.shape[0]):
        for h in range(valid.shape[1]):
            for f in range(F):  # the chunk's own keys, at their own time, moved by own_shift
                rows.append((c, h, own_k[f], own_shift[h, f], t0 + f + 1.0))
    keys = np.asarray(rope.shift_time(jnp.asarray(np.stack([r[2] for r in rows])),
                                      jnp.asarray([r[3] for r in rows], jnp.int32), DH, rope.WAN_THETA))
    out = {}
    for (c, h, _, _, value), key in zip(rows, keys):
        out.setdefault((int(c), int(h)), []).append(_name(value, key))
    return {ch: sorted(v, key=str) for ch, v in out.items()}


@pytest.fixture(scope="module")
def recorded():
    """Roll the policy's stores over CHUNKS chunks; record every (chunk, pass, layer, c, h)."""
    policy = _policy()
    sp = policy.spec
    state = policy.init(1, jnp.float32)
    plan_fn = jax.jit(policy.plan)
    stage_fn = jax.jit(policy.stage, static_argnums=2)
    commit_fn = jax.jit(policy.commit)
    frames, _ = _candidates()
    out = {}
    for chunk in range(CHUNKS):
        t0 = chunk * F
        k, v = chunk_kv(chunk, sp.tokens_per_frame)
        own_k = frames[np.arange(t0, t0 + F), np.arange(t0, t0 + F)]
        plan = plan_fn(state, jnp.int32(chunk))
        for layer in range(2):
            lp = jax.tree.map(lambda a: a[layer] if a.ndim else a, plan)
            for (c, h), got in attended_sets(state.pool(), lp, own_k, t0).items():
                out[chunk, "noisy", layer, c, h] = got
        for layer in range(2):
            state, pool, lp = stage_fn(state, plan, layer, k[layer], v[layer], jnp.int32(chunk))
            for (c, h), got in attended_sets(pool, lp, own_k, t0).items():
                out[chunk, "clean", layer, c, h] = got
        state = commit_fn(state, (k, v), jnp.int32(chunk))
    return policy, state, out


@pytest.mark.slow
def test_every_pass_matches_upstream_over_45_chunks(recorded):
    """All three head types, noisy and clean passes, sources and RoPE times, chunks 0..44."""
    _, _, out = recorded
    for (chunk, kind, layer, c, h), got in out.items():
        want = upstream_keys(chunk * F, chunk * F + c, HEAD_MAP[layer, h], kind == "clean")
        assert got == want, (chunk, kind, layer, c, h, got, want)


@pytest.mark.slow
def test_clean_pass_reads_the_stores_with_the_chunk_in_them(recorded):
    _, _, out = recorded
    # Wave (layer 0, head 0), chunk 10 (frames 30-32): the query frame's own frame is in its
    # phase bucket only in the clean pass, attended again at sync_t = 31 - 21 = 10.
    assert (31, 10) in out[10, "clean", 0, 1, 0] and (31, 10) not in out[10, "noisy", 0, 1, 0]
    # ... and the bucket then holds 31, 25, 19, 13: frame 7 was evicted by the clean insert.
    assert (7, 10) in out[10, "noisy", 0, 1, 0] and (7, 10) not in out[10, "clean", 0, 1, 0]
    # Anchor (layer 0, head 1): frame 30 enters the stride store in chunk 10's clean pass.
    assert (30, 9) in out[10, "clean", 0, 0, 1] and (30, 9) not in out[10, "noisy", 0, 0, 1]
    # Veil (layer 0, head 2): block 7 (frames 28-31) completes in chunk 10 -> clean pass only.
    assert (("block", 7), 29) in out[10, "clean", 0, 0, 2]
    assert (("block", 7), 29) not in out[10, "noisy", 0, 0, 2]
    # no de-duplication against the recent frames: frame 30 twice, own time and sync_t
    assert out[10, "clean", 0, 0, 1].count((30, 30)) == 1


@pytest.mark.slow
def test_sinks_sit_at_sync_time_from_chunk_0(recorded):
    _, _, out = recorded
    for pass_ in ("noisy", "clean"):
        # Anchor and Veil: the chunk's own frames 0-2 are sinks, all at time 0
        assert out[0, pass_, 0, 2, 1] == [(0, 0), (1, 0), (2, 0)]
        assert out[0, pass_, 1, 0, 0] == [(0, 0), (1, 0), (2, 0)]
        # Wave keeps one sink: frames 1, 2 are recent, at their own times
        assert out[0, pass_, 0, 0, 0] == [(0, 0), (1, 1), (2, 2)]
    assert (2, 0) in out[1, "noisy", 0, 0, 1]  # chunk 1: committed sinks at sync_t = 0 too


@pytest.mark.slow
def test_veil_never_attends_block_0(recorded):
    _, _, out = recorded
    for (chunk, _, layer, c, h), got in out.items():
        if HEAD_MAP[layer, h] == VEIL:
            assert all(src != ("block", 0) for src, _ in got)
    assert (("block", 1), 5) in out[3, "noisy", 0, 0, 2]  # block 1 does appear


@pytest.mark.slow
def test_merged_blocks_stay_distinct(recorded):
    """Upstream's merge store, once full, lets older slots read the newest block's data; here
    the last 4 completed blocks stay distinct (44 chunks: blocks 29..32)."""
    _, _, out = recorded
    blocks = sorted(src[1] for src, _ in out[CHUNKS - 1, "noisy", 1, 0, 0] if isinstance(src, tuple))
    assert blocks == [29, 30, 31, 32]


def test_memory_per_head_type():
    """Pages each head owns: Wave 26 frames, Anchor 8, Veil 4 frames + 4 pooled pages."""
    policy = _policy(grid=(30, 52))
    assert policy.page_tokens == 390 and policy.num_slots == 26 and policy.max_pages == 8
    state = jax.eval_shape(lambda: policy.init(1, jnp.bfloat16))
    span = 1560 // 390
    per_layer = {WAVE: 26 * span, ANCHOR: 8 * span, VEIL: 4 * span + 4}
    assert state.k.shape[1] == sum(per_layer[t] for t in HEAD_MAP.reshape(-1))


def test_merged_block_is_pooled_prerope_keys_at_block_time():
    """A completed block holds mean-pooled (4 frames x 2x2, partial borders) pre-RoPE keys,
    RoPE'd at time 4k+1 and the patch corners; values mean-pooled likewise."""
    policy = _policy(grid=(3, 5))
    sp = policy.spec
    state = policy.init(1, jnp.float32)
    advance = advance_fn(policy)
    kvs = []
    for chunk in range(3):  # frames 0..8: blocks [0..3] and [4..7] complete
        shape = (sp.num_layers, 1, sp.num_heads, F, sp.tokens_per_frame, sp.head_dim)
        kv = jax.random.normal(jax.random.fold_in(jax.random.key(3), chunk), shape)
        kvs.append((kv, kv * 0.5))
        state = advance(state, kvs[-1], jnp.int32(chunk))
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
    cos, sin = rope.grid_tables(jnp.array([5]), jnp.array([0, 2]), jnp.array([0, 2, 4]), sp.head_dim, sp.theta)
    want_k = np.asarray(rope.apply_rope(jnp.asarray(np.stack(pooled_k)), cos, sin))
    slot = 3 + policy.recent_slots + blk % 4
    page = int(state.slot_page[layer, h, slot])
    assert int(state.slot_time[layer, h, slot]) == 4 * blk + 1
    assert int(state.page_len[page]) == 6
    np.testing.assert_allclose(np.asarray(state.k)[0, page, :6], want_k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.v)[0, page, :6], np.stack(pooled_v), rtol=1e-5, atol=1e-6)


def test_time_shift_equals_rerotating_keys():
    """Attention with a page's time shift equals attention over keys RoPE'd at the new time."""
    rng = np.random.default_rng(0)
    dh, gh, gw = 32, 2, 3
    t_f = gh * gw
    k_pre = rng.standard_normal((1, 3, t_f, dh)).astype(np.float32)  # [B, pages, T_f, Dh]
    stored_t = np.array([5, 40, 77])
    cos = lambda t: rope.grid_tables(jnp.array([t]), jnp.arange(gh), jnp.arange(gw), dh, rope.WAN_THETA)
    pool_k = np.stack([np.asarray(rope.apply_rope(jnp.asarray(k_pre[:, s]), *cos(stored_t[s])))
                       for s in range(3)], axis=1)
    pool_v = rng.standard_normal(pool_k.shape).astype(np.float32)
    q = rng.standard_normal((1, 1, t_f, 2, dh)).astype(np.float32)
    kc = rng.standard_normal((1, t_f, 2, dh)).astype(np.float32)
    slot = np.broadcast_to(np.arange(3, dtype=np.int32), (1, 2, 3))
    new_t = np.array([[0, 39, 77], [3, 3, 3]])  # per head: remapped RoPE times
    shift = (new_t - stored_t)[None].astype(np.int32)
    valid = np.ones((1, 2, 3), bool)
    got = ref.paged_attention(*map(jnp.asarray, (q, kc, kc, pool_k, pool_v, slot, shift, valid)), theta=rope.WAN_THETA)
    for h in range(2):
        moved = np.stack([np.asarray(rope.apply_rope(jnp.asarray(k_pre[:, s]), *cos(new_t[h, s])))
                          for s in range(3)], axis=1)  # [B, pages, T_f, Dh]
        zero = np.zeros((1, 2, 3), np.int32)
        want = ref.paged_attention(*map(jnp.asarray, (q, kc, kc, moved, pool_v, slot, zero, valid)), theta=rope.WAN_THETA)
        np.testing.assert_allclose(np.asarray(got)[..., h, :], np.asarray(want)[..., h, :], atol=1e-5)


def test_deep_sink_moves_sinks_before_recent():
    spec = PoolSpec(num_layers=2, num_heads=2, head_dim=16, grid=(1, 2), frames_per_chunk=F)
    policy = DeepSinkPolicy(spec, num_frames=90)
    state = policy.init(1, jnp.float32)
    commit = jax.jit(policy.commit)
    for chunk in range(30):
        plan = policy.plan(state, jnp.int32(chunk))
        t0 = chunk * F
        page_time = dict(zip(np.asarray(state.slot_page).reshape(-1).tolist(),
                             np.asarray(state.slot_time).reshape(-1).tolist()))
        # one row may stand for every query frame ([L, 1, H, P])
        valid, slot, shift = (np.broadcast_to(np.asarray(a), (2, F) + a.shape[2:])
                              for a in (plan.valid, plan.slot, plan.time_shift))
        for layer, c, h in np.ndindex(2, F, 2):  # every layer, query frame and head alike
            v = valid[layer, c, h]
            pages = sorted((page_time[int(p)], page_time[int(p)] + int(s)) for p, s, ok in
                           zip(slot[layer, c, h], shift[layer, c, h], v) if ok)
            frames = [f for f, _ in pages]
            want_frames = sorted(set(range(min(10, t0))) | set(range(max(0, t0 + F - 11), t0)))
            assert frames == want_frames
            r0 = t0 + F - 11
            for f, t in pages:
                assert t == (f if f >= max(10, r0) else f + max(0, t0 + F - 21)), (layer, h, f, t)
            if t0 >= 21:  # sinks sit right before the first recent frame
                assert [t for f, t in pages if f < 10] == list(range(r0 - 10, r0))
        kv = jnp.zeros((2, 1, 2, F, 2, 16))
        state = commit(state, (kv, kv), jnp.int32(chunk))


def test_pyramid_refuses_wrong_head_map():
    spec = PoolSpec(num_layers=3, num_heads=3, head_dim=16, grid=(2, 2))
    with pytest.raises(ValueError, match="2 layers"):
        PyramidPolicy(spec, HEAD_MAP)
