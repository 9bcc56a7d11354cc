"""Calibration rollouts that record head profiles for head typing.

The rollout keeps every frame (window -1). At the last chunk's clean pass, for each layer and
head, Pyramid Forcing's profile is the mean pre-softmax logit between the tokens of the chunk's
last frame (the query) and the tokens of every history frame (the query's own chunk excluded).
Since mean_ij q_i . k_j = (mean_i q_i) . (mean_j k_j), only token means are needed: profiling
costs one more model pass, not an attention matrix. Forcing-KV's profile is the attention mass
(softmax over every key, the chunk's own included) the last frame's queries put on each key
frame, averaged over the queries (`record_masses`).
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


def frame_masses(probe, cache):
    """The attention mass the probed frame's queries put on each cached frame, mean over
    queries: [B, L, H, S] (read with cache.slot_time). probe: [L, B, T, H, Dh] queries after
    RoPE; cache: a state whose pages hold one frame each (window -1), the chunk committed."""
    scale = 1.0 / np.sqrt(probe.shape[-1])

    def layer(q, pages, times):  # q [B, T, H, Dh]; pages, times [H, S]
        k = cache.k[:, pages].astype(jnp.float32)  # [B, H, S, T, Dh]
        if cache.k_scale.shape[1]:
            k = k * cache.k_scale[:, pages]
        logits = jnp.einsum("bthd,bhsud->bhtsu", q.astype(jnp.float32), k) * scale
        logits = jnp.where((times >= 0)[None, :, None, :, None], logits, -jnp.inf)
        w = jax.nn.softmax(logits.reshape(logits.shape[:3] + (-1,)), axis=-1).reshape(logits.shape)
        return w.sum(-1).mean(2)  # [B, H, S]

    return jnp.moveaxis(jax.lax.map(lambda xs: layer(*xs), (probe, cache.slot_page, cache.slot_time)), 0, 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "sampler"))
def _last_chunk_masses(graphdef, policy, sampler, params, cache, text_kv, noise, renoise, chunk):
    """The last chunk, with the attention masses of its last frame over every frame so far."""
    model = nnx.merge(graphdef, params)
    f = sampler.frames_per_chunk
    _, after, probe = chunk_step(model, policy, sampler, cache, text_kv, noise, renoise, chunk, probe_frame=f - 1)
    return frame_masses(probe, after)


def _calibration(model, sampler: Sampler, text_kv, noise_source, num_frames: int, grid, on_chunk, last_chunk):
    """Roll out num_frames latent frames with nothing evicted and measure the last chunk with
    last_chunk(graphdef, policy, sampler, params, cache, text_kv, noise, renoise, chunk).
    Returns (its result for the conditional rows, as numpy; the batch)."""
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
    times = np.asarray(cache.slot_time)[0, 0]
    out = np.asarray(last_chunk(graphdef, policy, sampler, params, cache, text_kv, noise, renoise,
                                jnp.int32(chunks - 1)))
    if on_chunk is not None:
        on_chunk(chunks - 1, chunks)
    assert (times[:num_frames - f] == np.arange(num_frames - f)).all()  # window -1: slot t holds frame t
    return out[:noise.shape[0]], noise.shape[0]  # the conditional rows (a guided sampler runs 2B)


def record_profiles(model, sampler: Sampler, text_kv, noise_source, num_frames: int,
                    grid: tuple[int, int], on_chunk=None) -> np.ndarray:
    """Roll out num_frames latent frames with nothing evicted; return Pyramid Forcing's
    profiles [B, L, H, T] with T = num_frames - F history frames (frame order)."""
    logits, _ = _calibration(model, sampler, text_kv, noise_source, num_frames, grid, on_chunk, _last_chunk_profile)
    return logits[..., :num_frames - sampler.frames_per_chunk]


def record_masses(model, sampler: Sampler, text_kv, noise_source, num_frames: int,
                  grid: tuple[int, int], on_chunk=None) -> np.ndarray:
    """Roll out num_frames latent frames with nothing evicted; return Forcing-KV's profiles
    [B, L, H, num_frames]: the mass the last frame's queries put on every frame (its own
    chunk's included), frame order."""
    masses, _ = _calibration(model, sampler, text_kv, noise_source, num_frames, grid, on_chunk, _last_chunk_masses)
    return masses[..., :num_frames]
