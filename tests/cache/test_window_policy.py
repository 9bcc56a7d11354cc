"""Window policy: attended frames per chunk equal Self Forcing semantics; memory is fixed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.window import WindowPolicy

F = 3


def sf_frames(t0, w, s, f=F):
    """Frames a chunk starting at t0 attends under Self Forcing's window W with sink S."""
    if w == -1:
        return set(range(t0 + f))
    sinks = set(range(min(s, t0 + f)))
    recent = set(range(max(0, t0 + f - (w - s)), t0 + f))
    return sinks | recent


def attended_frames(policy, state, chunk):
    plan = policy.plan(state, jnp.int32(chunk))
    page_time = dict(zip(np.asarray(state.slot_page)[0, 0].tolist(), np.asarray(state.slot_time)[0, 0].tolist()))
    times = np.array([page_time.get(int(p), -1) for p in np.asarray(plan.slot)[0, 0, 0]])
    valid = np.asarray(plan.valid)
    assert (valid == valid[:, :1]).all()  # every query frame and head sees the same pages
    got = times[valid[0, 0, 0]].tolist()
    assert len(got) == len(set(got)), f"a frame is attended twice: {got}"
    own = range(chunk * policy.spec.frames_per_chunk, (chunk + 1) * policy.spec.frames_per_chunk)
    return set(got) | set(own)


def _commit(policy, state, chunk):
    sp = policy.spec
    shape = (sp.num_layers, 1, sp.num_heads, sp.frames_per_chunk, sp.tokens_per_frame, sp.head_dim)
    kv = jnp.full(shape, 1.0) * jnp.asarray(chunk, jnp.float32)
    return policy.commit(state, (kv, kv), jnp.asarray(chunk, jnp.int32))


@pytest.mark.parametrize("w,s,f", [(21, 0, 3), (6, 1, 3), (12, 3, 3), (9, 3, 3), (-1, 0, 3), (7, 2, 1), (4, 1, 1)])
def test_window_matches_self_forcing_over_60_chunks(w, s, f):
    chunks = 60
    spec = PoolSpec(num_layers=2, num_heads=2, head_dim=8, grid=(1, 2), frames_per_chunk=f)
    policy = WindowPolicy(spec, local_attn_size=w, sink_size=s, num_frames=chunks * f)
    state = policy.init(1, jnp.float32)
    commit = jax.jit(lambda st, k: _commit(policy, st, k))
    for k in range(chunks):
        assert attended_frames(policy, state, k) == sf_frames(k * f, w, s, f), (k, w, s)
        state = commit(state, k)
        assert state.slot_time.shape[-1] == policy.num_slots
    if w != -1:
        assert policy.num_slots == w - f  # the chunk itself is never stored in advance


def test_spec_example():
    """W=6, S=1: the chunk of frames 6-8 attends frames 0, 4, 5, 6, 7, 8."""
    spec = PoolSpec(num_layers=1, num_heads=1, head_dim=8, grid=(1, 1))
    policy = WindowPolicy(spec, local_attn_size=6, sink_size=1, num_frames=30)
    state = policy.init(1, jnp.float32)
    for k in range(2):
        state = _commit(policy, state, k)
    assert attended_frames(policy, state, 2) == {0, 4, 5, 6, 7, 8}


def test_committed_values_land_in_their_slots():
    spec = PoolSpec(num_layers=1, num_heads=1, head_dim=8, grid=(1, 1))
    policy = WindowPolicy(spec, local_attn_size=6, sink_size=1, num_frames=30)
    state = policy.init(1, jnp.float32)
    for k in range(4):
        state = _commit(policy, state, k)
    times = np.asarray(state.slot_time)[0, 0]
    vals = np.asarray(state.v)[0, np.asarray(state.slot_page)[0, 0], 0, 0]
    np.testing.assert_array_equal(vals, times // F)  # each slot holds its frame's chunk value


def test_bad_window_is_refused():
    spec = PoolSpec(num_layers=1, num_heads=1, head_dim=8, grid=(1, 1))
    with pytest.raises(ValueError, match="local_attn_size"):
        WindowPolicy(spec, local_attn_size=3, sink_size=1)


def test_policies_implement_the_protocol_and_hash_by_value():
    """Window, deep sink and pyramid are CachePolicy; equal policies are equal static jit args."""
    from pyramid_jax.cache.head_map import ANCHOR, VEIL, WAVE
    from pyramid_jax.cache.policies import CachePolicy, make_policy

    spec = PoolSpec(num_layers=1, num_heads=3, head_dim=8, grid=(2, 2))
    head_map = np.array([[WAVE, ANCHOR, VEIL]])
    for name, kw in (("window", dict(local_attn_size=6, sink_size=1)), ("deep_sink", {}),
                     ("pyramid", dict(head_map=head_map))):
        a, b = make_policy(name, spec, 30, **kw), make_policy(name, spec, 30, **kw)
        assert isinstance(a, CachePolicy) and a == b and hash(a) == hash(b)
    other = make_policy("pyramid", spec, 30, head_map=head_map[:, ::-1].copy())
    assert other != make_policy("pyramid", spec, 30, head_map=head_map)
