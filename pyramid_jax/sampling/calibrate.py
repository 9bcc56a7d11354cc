"""Calibration rollouts that record head profiles for head typing (SPEC section 6).

The rollout keeps every frame (window -1). At the last chunk's clean pass, for each layer and
head, the profile is the mean pre-softmax logit between the tokens of the chunk's last frame
(the query) and the tokens of every history frame (the query's own chunk excluded). Since
mean_ij q_i . k_j = (mean_i q_i) . (mean_j k_j), only token means are needed: profiling costs
one more model pass, not an attention matrix.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.window import WindowPolicy
from pyramid_jax.sampling.rollout import Sampler, clean_t, denoise, make_chunk_step

log = logging.getLogger(__name__)


def chunk_profile(model, policy, sampler: Sampler, text_kv, cache, x0, chunk):
    """Profiles of a chunk's last frame against the cached history.

    x0: [B, F, C, h, w] the chunk's clean latents; cache: the state before it commits.
    Returns [B, L, H, S] logits per pool slot (read with cache.slot_time).
    """
    f = x0.shape[1]
    plan = policy.plan(cache, chunk)
    _, _, q = model(x0, clean_t(sampler, x0), text_kv, cache.pool(), plan, probe_frame=f - 1)
    q_mean = q.astype(jnp.float32).mean(2)  # [L, B, H, Dh]
    k_mean = cache.k.astype(jnp.float32).mean(4)  # [L, B, H, S, Dh]
    logits = jnp.einsum("lbhd,lbhsd->blhs", q_mean, k_mean) / np.sqrt(q.shape[-1])
    return logits


def record_profiles(model, sampler: Sampler, text_kv, noise_source, num_frames: int,
                    grid: tuple[int, int], on_chunk=None) -> np.ndarray:
    """Roll out num_frames latent frames with nothing evicted; return profiles [B, L, H, T]
    with T = num_frames - F history frames (frame order)."""
    cfg = model.cfg
    f = sampler.frames_per_chunk
    if num_frames % f or num_frames < 2 * f:
        raise ValueError(f"calibration needs a multiple of {f} frames and at least two chunks, got {num_frames}")
    spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, grid, f, cfg.rope_theta)
    policy = WindowPolicy(spec, local_attn_size=-1, num_frames=num_frames)
    graphdef, params = nnx.split(model)
    step = make_chunk_step(graphdef, policy, sampler)
    chunks = num_frames // f
    noise0, _ = noise_source.chunk(0)
    cache = policy.init(noise0.shape[0], cfg.jnp_dtype)
    for k in range(chunks - 1):
        noise, renoise = noise_source.chunk(k)
        x0, cache = step(params, cache, text_kv, noise, renoise, jnp.int32(k))
        if on_chunk is not None:
            on_chunk(k, chunks)

    @jax.jit
    def last(params, cache, noise, renoise, chunk):
        m = nnx.merge(graphdef, params)
        plan = policy.plan(cache, chunk)
        x0 = denoise(m, sampler, text_kv, cache.pool(), plan, noise, renoise)
        return chunk_profile(m, policy, sampler, text_kv, cache, x0, chunk)

    noise, renoise = noise_source.chunk(chunks - 1)
    logits = np.asarray(last(params, cache, noise, renoise, jnp.int32(chunks - 1)))
    if on_chunk is not None:
        on_chunk(chunks - 1, chunks)
    history = num_frames - f
    times = np.asarray(cache.slot_time)[0, 0]
    assert (times[:history] == np.arange(history)).all()  # window -1: slot t holds frame t
    return logits[..., :history]
