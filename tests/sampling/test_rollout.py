"""Rollout: cached chunks equal a full masked forward; one compile for any length; replay."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import rel_err
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.window import WindowPolicy, full_sequence_mask
from pyramid_jax.models.wan.modeling import ChunkOutput, Committed, FrameMask, WanConfig, init_model
from pyramid_jax.sampling.rollout import RandomNoise, ReplayNoise, Sampler, rollout
from pyramid_jax.sampling.schedule import FlowSchedule

CFG = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                text_dim=24, freq_dim=32, text_len=5)
C, HH, WW = 4, 4, 6


@pytest.fixture(scope="module")
def model():
    return init_model(CFG, seed=7)


def _policy(w, s, frames, f=3):
    spec = PoolSpec(CFG.num_layers, CFG.num_heads, CFG.head_dim, (HH // 2, WW // 2), frames_per_chunk=f)
    return WindowPolicy(spec, local_attn_size=w, sink_size=s, num_frames=frames)


@pytest.mark.parametrize("w,s", [(-1, 0), (6, 1), (9, 3)])
def test_cached_chunks_equal_full_masked_forward(model, w, s):
    """8 chunks through plan/commit equal one forward with the policy's frame mask."""
    chunks, f = 8, 3
    n = chunks * f
    policy = _policy(w, s, n)
    key = jax.random.key(0)
    x = jax.random.normal(key, (1, n, C, HH, WW))
    t = jax.random.uniform(jax.random.key(1), (1, n), maxval=1000.0)
    tkv = model.text_kv(jax.random.normal(jax.random.key(2), (1, CFG.text_len, CFG.text_dim)))
    graphdef, params = nnx.split(model)
    full = jax.jit(lambda params, mask: nnx.merge(graphdef, params)(x, t, tkv, FrameMask(mask)).flow)(
        params, full_sequence_mask(policy, n))

    @jax.jit
    def chunk_call(params, state, xc, tc, k):
        m = nnx.merge(graphdef, params)
        flow, kv = m(xc, tc, tkv, Committed(state.pool(), policy.plan(state, k)))
        return flow, policy.commit(state, kv, k)

    state = policy.init(1, jnp.float32)
    outs = []
    for k in range(chunks):
        flow, state = chunk_call(params, state, x[:, k * f:(k + 1) * f], t[:, k * f:(k + 1) * f], jnp.int32(k))
        outs.append(flow)
    assert rel_err(jnp.concatenate(outs, 1), full) <= 1e-5


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(graphdef, params, x, t, tkv, pool, plan):
    """One model pass against fixed pages, jitted whole (the eager op-by-op call took ~20 s of
    a quick test); the loop around it stays plain Python."""
    out = nnx.merge(graphdef, params)(x, t, tkv, Committed(pool, plan))
    return out.flow, out.chunk_kv


def _reference_rollout(model, policy, sampler, tkv, noise, renoise, chunks, initial=None):
    """The upstream loop written plainly: the given frames (initial) one chunk at a time at
    t = 0 into the cache; then per chunk, steps with re-noise, then the clean pass."""
    sched, f = sampler.schedule, sampler.frames_per_chunk
    graphdef, params = nnx.split(model)
    model = lambda x, t, tkv, committed: ChunkOutput(*_forward(graphdef, params, x, t, tkv, committed.pool,
                                                               committed.plan))
    state = policy.init(noise.shape[0], jnp.float32)
    out, given = [], 0
    if initial is not None:
        for k in range(initial.shape[1] // f):
            plan = policy.plan(state, jnp.int32(k))
            x0 = jnp.asarray(initial[:, k * f:(k + 1) * f])
            state = policy.commit(state, model(x0, jnp.zeros(x0.shape[:2]), tkv, Committed(state.pool(), plan)).chunk_kv, jnp.int32(k))
            out.append(np.asarray(x0))
        given = initial.shape[1] // f
    for j in range(chunks):
        k = given + j
        noise_k = noise[:, j * f:(j + 1) * f]
        plan = policy.plan(state, jnp.int32(k))
        x = jnp.asarray(noise_k)
        for i, ti in enumerate(sampler.timesteps):
            tt = jnp.full(x.shape[:2], ti)
            flow = model(x, tt, tkv, Committed(state.pool(), plan)).flow
            x0 = sched.flow_to_x0(x, flow, tt)
            if i + 1 < sampler.num_steps:
                x = sched.add_noise(x0, jnp.asarray(renoise[j * (sampler.num_steps - 1) + i]),
                                    jnp.full(x.shape[:2], sampler.timesteps[i + 1]))
        kv = model(x0, jnp.full(x.shape[:2], sampler.context_noise), tkv, Committed(state.pool(), plan)).chunk_kv
        state = policy.commit(state, kv, jnp.int32(k))
        out.append(np.asarray(x0))
    return np.concatenate(out, 1)


@pytest.mark.slow
@pytest.mark.parametrize("f", [3, 1])
def test_jitted_rollout_equals_plain_loop(model, f):
    chunks = 4
    sampler = Sampler(timesteps=tuple(FlowSchedule().warp([1000, 750, 500, 250])), frames_per_chunk=f)
    policy = _policy(6, 1, chunks * f, f)
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((2, chunks * f, C, HH, WW)).astype(np.float32)
    renoise = rng.standard_normal((chunks * 3, 2, f, C, HH, WW)).astype(np.float32)
    tkv = model.text_kv(jnp.asarray(rng.standard_normal((2, CFG.text_len, CFG.text_dim)), jnp.float32))
    got = rollout(model, policy, sampler, tkv, ReplayNoise(noise, renoise, sampler), chunks).latents
    want = _reference_rollout(model, policy, sampler, tkv, noise, renoise, chunks)
    assert got.shape == (2, chunks * f, C, HH, WW)
    assert rel_err(got, want) <= 1e-5


@pytest.mark.slow
def test_compiles_once_for_any_length(model):
    """The compile count of a 4-chunk rollout equals that of a 40-chunk one."""
    sampler = Sampler()
    tkv = model.text_kv(jnp.ones((1, CFG.text_len, CFG.text_dim)))
    counts = []

    def count(event, *args, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            counts[-1] += 1

    after_first = []
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        for chunks in (4, 40):
            jax.clear_caches()
            counts.append(0)
            policy = _policy(21, 0, 120)  # same policy shape for both lengths
            noise = RandomNoise(0, (1, chunks * 3, C, HH, WW), sampler)
            rollout(model, policy, sampler, tkv, noise, chunks,
                    on_chunk=lambda k, *_: k == 0 and after_first.append(counts[-1]))
    finally:
        jax.monitoring.clear_event_listeners()
    assert counts[0] == counts[1] and counts[0] > 0, counts
    assert after_first == counts  # nothing compiles after the first chunk


@pytest.mark.parametrize("w,s", [pytest.param(-1, 0, marks=pytest.mark.slow), (6, 1)])
def test_rollout_from_given_frames_equals_plain_loop(model, w, s):
    """Continuing given frames (two chunks of latents, as upstream's initial_latent path): each
    given chunk's cache-writing pass at t = 0, then the chunks made after them; the output
    starts with the given frames. Batch 2 (upstream's own path builds a [B, 1] timestep and
    runs one sample at a time)."""
    chunks, given = 3, 6
    sampler = Sampler(timesteps=tuple(FlowSchedule().warp([1000, 750, 500, 250])), context_noise=37.0)
    policy = _policy(w, s, given + chunks * 3)
    rng = np.random.default_rng(5)
    initial = rng.standard_normal((2, given, C, HH, WW)).astype(np.float32)
    noise = rng.standard_normal((2, chunks * 3, C, HH, WW)).astype(np.float32)
    renoise = rng.standard_normal((chunks * 3, 2, 3, C, HH, WW)).astype(np.float32)
    tkv = model.text_kv(jnp.asarray(rng.standard_normal((2, CFG.text_len, CFG.text_dim)), jnp.float32))
    got = rollout(model, policy, sampler, tkv, ReplayNoise(noise, renoise, sampler), chunks, initial=initial).latents
    assert got.shape == (2, given + chunks * 3, C, HH, WW)
    np.testing.assert_array_equal(got[:, :given], initial)
    plain = _reference_rollout(model, policy, sampler, tkv, noise, renoise, chunks, initial=initial)
    assert rel_err(got, plain) <= 1e-5
    ignoring = rollout(model, policy, sampler, tkv, ReplayNoise(noise, renoise, sampler), chunks).latents
    assert rel_err(got[:, given:], ignoring) > 1e-3  # the given frames matter


def test_replay_round_trip(model):
    sampler = Sampler()
    chunks = 3
    policy = _policy(6, 1, chunks * 3)
    tkv = model.text_kv(jnp.ones((2, CFG.text_len, CFG.text_dim)))
    drawn = RandomNoise(11, (2, chunks * 3, C, HH, WW), sampler)
    lat, noise, renoise, _ = rollout(model, policy, sampler, tkv, drawn, chunks, record_noise=True)
    assert noise.shape == (2, 9, C, HH, WW) and renoise.shape == (9, 2, 3, C, HH, WW)
    again = rollout(model, policy, sampler, tkv, RandomNoise(11, noise.shape, sampler), chunks).latents
    np.testing.assert_array_equal(lat, again)  # reproducible run to run
    replayed = rollout(model, policy, sampler, tkv, ReplayNoise(noise, renoise, sampler), chunks).latents
    np.testing.assert_array_equal(lat, replayed)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["window", "pyramid"])
def test_recache_rewrites_the_cache_of_the_frames_made(model, kind):
    """ChunkLoop.recache: the cache re-written from the chunks made so far under the same
    text is the cache the rollout built; under another text the same slots hold new K/V."""
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.sampling.rollout import ChunkLoop

    sampler, chunks = Sampler(), 9
    spec = PoolSpec(CFG.num_layers, CFG.num_heads, CFG.head_dim, (HH // 2, WW // 2), frames_per_chunk=3)
    head_map = np.array([[-1, 1], [2, 1]])  # Wave, Anchor / Veil, Anchor
    policy = make_policy(kind, spec, chunks * 3, 9, 0, head_map)
    text = lambda v: model.text_kv(jnp.full((1, CFG.text_len, CFG.text_dim), v))
    loop = ChunkLoop(model, policy, sampler, text(1.0), RandomNoise(3, (1, chunks * 3, C, HH, WW), sampler))
    latents = np.concatenate([loop.next()[0] for _ in range(chunks)], axis=1)
    built = jax.tree.map(np.asarray, loop.cache)
    loop.recache(latents)
    for got, want in zip(jax.tree.leaves(loop.cache), jax.tree.leaves(built)):
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)
    loop.set_text(text(-1.0))
    loop.recache(latents)
    np.testing.assert_array_equal(np.asarray(loop.cache.slot_time), built.slot_time)
    assert np.abs(np.asarray(loop.cache.v) - built.v).max() > 1e-3


def test_cache_picture_shows_what_the_plan_attends(model):
    """attended_frames: a window of 6 past frames is one 'all heads' row of the last 6
    frames; a pyramid cache has a row per head type, Anchor heads seeing the sinks."""
    from pyramid_jax.cache.picture import attended_frames
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.sampling.rollout import ChunkLoop

    sampler, chunks = Sampler(), 8
    spec = PoolSpec(CFG.num_layers, CFG.num_heads, CFG.head_dim, (HH // 2, WW // 2), frames_per_chunk=3)
    for kind in ("window", "pyramid"):
        policy = make_policy(kind, spec, chunks * 3, 9, 0, np.array([[-1, 1], [2, 1]]))
        loop = ChunkLoop(model, policy, sampler, model.text_kv(jnp.ones((1, CFG.text_len, CFG.text_dim))),
                         RandomNoise(3, (1, chunks * 3, C, HH, WW), sampler))
        for _ in range(chunks - 1):
            loop.next()
        pic = attended_frames(policy, loop.cache, chunks - 1)
        assert pic["frame0"] == 21 and pic["chunk"] == chunks - 1
        rows = {r["type"]: r for r in pic["rows"]}
        if kind == "window":
            assert list(rows) == ["all heads"] and rows["all heads"]["heads"] == 4
            assert rows["all heads"]["full"] == [0.0] * 15 + [1.0] * 6
        else:
            assert set(rows) == {"Wave", "Anchor", "Veil"} and rows["Anchor"]["heads"] == 2
            assert rows["Anchor"]["full"][:3] == [1.0] * 3 and rows["Wave"]["full"][0] == 1.0
            assert sum(rows["Veil"]["pooled"]) > 0 and rows["Veil"]["pooled"][:4] == [0.0] * 4  # block 0 never
