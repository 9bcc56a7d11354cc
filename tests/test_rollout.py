"""Rollout: cached chunks equal a full masked forward; one compile for any length; replay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import rel_err
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.window import WindowPolicy, full_sequence_mask
from pyramid_jax.models.wan import WanConfig, init_model
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
    full, _ = model(x, t, tkv, frame_mask=full_sequence_mask(policy, n))

    graphdef, params = nnx.split(model)

    @jax.jit
    def chunk_call(params, state, xc, tc, k):
        m = nnx.merge(graphdef, params)
        flow, kv = m(xc, tc, tkv, state.pool(), policy.plan(state, k))
        return flow, policy.commit(state, kv, k)

    state = policy.init(1, jnp.float32)
    outs = []
    for k in range(chunks):
        flow, state = chunk_call(params, state, x[:, k * f:(k + 1) * f], t[:, k * f:(k + 1) * f], jnp.int32(k))
        outs.append(flow)
    assert rel_err(jnp.concatenate(outs, 1), full) <= 1e-5


def _reference_rollout(model, policy, sampler, tkv, noise, renoise, chunks):
    """The upstream loop written plainly: per chunk, steps with re-noise, then the clean pass."""
    sched, f = sampler.schedule, sampler.frames_per_chunk
    state = policy.init(noise.shape[0], jnp.float32)
    out = []
    for k in range(chunks):
        plan = policy.plan(state, jnp.int32(k))
        x = jnp.asarray(noise[:, k * f:(k + 1) * f])
        for i, ti in enumerate(sampler.timesteps):
            tt = jnp.full(x.shape[:2], ti)
            flow, _ = model(x, tt, tkv, state.pool(), plan)
            x0 = sched.flow_to_x0(x, flow, tt)
            if i + 1 < sampler.num_steps:
                x = sched.add_noise(x0, jnp.asarray(renoise[k * (sampler.num_steps - 1) + i]),
                                    jnp.full(x.shape[:2], sampler.timesteps[i + 1]))
        _, kv = model(x0, jnp.zeros(x.shape[:2]), tkv, state.pool(), plan)
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
