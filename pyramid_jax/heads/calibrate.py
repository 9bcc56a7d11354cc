"""Calibration rollouts that record head profiles for head typing (Pyramid Forcing).

The rollout keeps every frame (window -1). At the last chunk's clean pass, for each layer and
head, the profile is the mean pre-softmax logit between the tokens of the chunk's last frame
(the query) and the tokens of every history frame (the query's own chunk excluded). Since
mean_ij q_i . k_j = (mean_i q_i) . (mean_j k_j), only token means are needed: profiling costs
one more model pass, not an attention matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pyramid_jax.cache.pool import PoolSpec, entry_means
from pyramid_jax.cache.window import WindowPolicy
from pyramid_jax.sampling.rollout import Sampler, chunk_step, rollout

def chunk_profile(probe, cache, tokens_per_frame: int):
    """Profiles of a chunk's last frame against the cached history.

    probe: [L, B, T, H, Dh] queries (after RoPE) of the chunk's last frame from its clean pass;
    cache: the state before the chunk commits. Returns [B, L, H, S] logits per logical slot
    (read with cache.slot_time).
    """
    q_mean = probe.astype(jnp.float32).mean(2)  # [L, B, H, Dh]
    k_mean = entry_means(cache, tokens_per_frame)  # [B, L, H, S, Dh]
    return jnp.einsum("lbhd,blhsd->blhs", q_mean, k_mean) / np.sqrt(probe.shape[-1])


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "sampler"))
def _last_chunk_profile(graphdef, policy, sampler, params, cache, text_kv, noise, renoise, chunk):
    """The last chunk, with the profile of its last frame against the cache before it."""
    model = nnx.merge(graphdef, params)
    f = sampler.frames_per_chunk
    *_, probe = chunk_step(model, policy, sampler, cache, text_kv, noise, renoise, chunk, probe_frame=f - 1)
    return chunk_profile(probe, cache, policy.spec.tokens_per_frame)


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
    chunks = num_frames // f
    progress = None if on_chunk is None else lambda k, *_: on_chunk(k, chunks)
    cache = rollout(model, policy, sampler, text_kv, noise_source, chunks - 1, on_chunk=progress,
                    keep_cache=True).cache
    graphdef, params = nnx.split(model)
    noise, renoise = noise_source.chunk(chunks - 1)
    logits = np.asarray(_last_chunk_profile(graphdef, policy, sampler, params, cache, text_kv, noise, renoise,
                                            jnp.int32(chunks - 1)))
    if on_chunk is not None:
        on_chunk(chunks - 1, chunks)
    history = num_frames - f
    logits = logits[:noise.shape[0]]  # the conditional rows (a guided sampler runs 2B)
    times = np.asarray(cache.slot_time)[0, 0]
    assert (times[:history] == np.arange(history)).all()  # window -1: slot t holds frame t
    return logits[..., :history]
