"""Classifier-free guidance inside the chunk step: the conditional and unconditional branches
as one batch, each with its own cache written from the guided frames."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.window import WindowPolicy
from pyramid_jax.models.wan.modeling import Committed, WanConfig, init_model
from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout, text_kv_of

CFG = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                text_dim=24, freq_dim=32, text_len=5)
HW = (4, 6)
CHUNKS = 4


@pytest.fixture(scope="module")
def model():
    return init_model(CFG, seed=3)


def _policy():
    spec = PoolSpec(CFG.num_layers, CFG.num_heads, CFG.head_dim, (HW[0] // 2, HW[1] // 2))
    return WindowPolicy(spec, local_attn_size=6, sink_size=1, num_frames=3 * CHUNKS)


def _context(batch, seed=1):
    return np.asarray(jax.random.normal(jax.random.key(seed), (batch, CFG.text_len, CFG.text_dim)))


def _run(model, sampler, context, seeds=0):
    noise = RandomNoise(seeds, (context.shape[0], 3 * CHUNKS, CFG.in_channels, *HW), sampler)
    return rollout(model, _policy(), sampler, text_kv_of(model, context, sampler=sampler), noise, CHUNKS,
                   record_noise=True)


def _plain_guided(model, sampler, context, noise, renoise):
    """Guidance written plainly: two caches of batch B, one per branch; each step combines
    the branches' flows; the clean pass writes the guided x0 into each branch's cache under
    its own text."""
    policy, sched, f, g = _policy(), sampler.schedule, 3, sampler.guidance_scale
    texts = [model.text_kv(jnp.asarray(context)), model.text_kv(jnp.zeros_like(jnp.asarray(context)))]
    states = [policy.init(context.shape[0], jnp.float32) for _ in texts]
    out = []
    for k in range(CHUNKS):
        plans = [policy.plan(s, jnp.int32(k)) for s in states]
        x = jnp.asarray(noise[:, k * f:(k + 1) * f])
        for i, ti in enumerate(sampler.timesteps):
            tt = jnp.full(x.shape[:2], ti)
            cond, uncond = (model(x, tt, tkv, Committed(s.pool(), p)).flow for tkv, s, p in zip(texts, states, plans))
            x0 = sched.flow_to_x0(x, uncond + g * (cond - uncond), tt)
            if i + 1 < sampler.num_steps:
                x = sched.add_noise(x0, jnp.asarray(renoise[k * (sampler.num_steps - 1) + i]),
                                    jnp.full(x.shape[:2], sampler.timesteps[i + 1]))
        states = [policy.commit(s, model(x0, jnp.zeros(x.shape[:2]), tkv, Committed(s.pool(), p)).chunk_kv, jnp.int32(k))
                  for tkv, s, p in zip(texts, states, plans)]
        out.append(np.asarray(x0))
    return np.concatenate(out, 1)


@pytest.mark.slow
def test_guided_rollout_equals_two_branches_written_plainly(model):
    sampler = Sampler(guidance_scale=3.5)
    context = _context(2)
    got = _run(model, sampler, context, seeds=[4, 9])
    want = _plain_guided(model, sampler, context, got.noise, got.renoise)
    assert rel_err(got.latents, want) <= 1e-5


def test_guidance_scale_one_and_zero(model):
    """g = 1 is the conditional model alone; g = 0 the unconditional one (the empty context)."""
    context = _context(1)
    plain = _run(model, Sampler(), context).latents
    uncond = _run(model, Sampler(), np.zeros_like(context)).latents
    assert rel_err(_run(model, Sampler(guidance_scale=0.0), context).latents, uncond) <= 1e-5
    assert rel_err(_run(model, Sampler(guidance_scale=1.0), context).latents, plain) == 0
    # an empty prompt guided is the empty prompt: both branches agree, whatever the scale
    assert rel_err(_run(model, Sampler(guidance_scale=4.0), np.zeros_like(context)).latents, uncond) <= 1e-5
    assert rel_err(plain, uncond) > 1e-3  # the text matters on this model


@pytest.mark.slow
def test_renoise_eta_zero_is_deterministic_and_half_mixes(model):
    """renoise_eta 0 re-noises with the noise the model's x0 implies (DDIM): the fresh draws
    do not matter; eta 0.5 mixes both as eta e + sqrt(1 - eta^2) implied."""
    from pyramid_jax.sampling.rollout import ReplayNoise

    context = _context(1)
    first = _run(model, Sampler(), context, seeds=5)
    replay = lambda sampler, renoise: rollout(model, _policy(), sampler, text_kv_of(model, context), ReplayNoise(
        first.noise, renoise, sampler), CHUNKS).latents
    ddim = Sampler(renoise_eta=0.0)
    a, b = replay(ddim, first.renoise), replay(ddim, np.zeros_like(first.renoise))
    assert rel_err(a, b) == 0
    assert rel_err(replay(Sampler(), first.renoise), first.latents) == 0  # eta 1: upstream's step
    # one chunk written plainly with eta 0.5
    half, sched = Sampler(renoise_eta=0.5), Sampler().schedule
    got = replay(half, first.renoise)[:, :3]
    tkv, policy = model.text_kv(jnp.asarray(context)), _policy()
    state = policy.init(1, jnp.float32)
    plan = policy.plan(state, jnp.int32(0))
    x = jnp.asarray(first.noise[:, :3])
    for i, ti in enumerate(half.timesteps):
        tt = jnp.full(x.shape[:2], ti)
        flow = model(x, tt, tkv, Committed(state.pool(), plan)).flow
        x0 = sched.flow_to_x0(x, flow, tt)
        if i + 1 < half.num_steps:
            e = 0.5 * jnp.asarray(first.renoise[i]) + np.sqrt(0.75) * (x0 + flow)
            x = sched.add_noise(x0, e, jnp.full(x.shape[:2], half.timesteps[i + 1]))
    assert rel_err(got, x0) <= 1e-5
