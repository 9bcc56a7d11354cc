"""Training the causal DiT: flow matching with block-causal attention and per-chunk noise.

Each chunk of `frames_per_chunk` frames gets its own timestep (diffusion-forcing style), the
attention mask is block-causal, and the target is the flow v = noise - x0 (what the model
predicts at inference). Pure functions: `loss_fn` and a jitted `train_step` over
(graphdef, params, optimizer state).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pyramid_jax.models.wan import block_causal_mask
from pyramid_jax.sampling.schedule import FlowSchedule


def sample_timesteps(key, batch: int, num_frames: int, frames_per_chunk: int, schedule: FlowSchedule):
    """[B, F] timesteps: one schedule timestep per chunk, repeated over its frames."""
    blocks = -(-num_frames // frames_per_chunk)
    idx = jax.random.randint(key, (batch, blocks), 0, schedule.num_train_timesteps)
    t = jnp.asarray(schedule.timesteps)[idx]
    return jnp.repeat(t, frames_per_chunk, axis=1)[:, :num_frames]


def loss_fn(model, x0, context, key, frames_per_chunk: int = 3, schedule: FlowSchedule = FlowSchedule(),
            clean_context_prob: float = 0.0):
    """Mean squared flow error. x0: [B, F, C, H, W] clean frames; context: [B, Lt, text_dim].

    With probability clean_context_prob a sample's chunks before a random chunk are left clean
    (t = 0, no loss): the condition the model meets at inference, where it denoises against a
    cache of clean frames.
    """
    b, f = x0.shape[:2]
    k_t, k_n, k_c, k_k = jax.random.split(key, 4)
    t = sample_timesteps(k_t, b, f, frames_per_chunk, schedule)
    chunk = jnp.arange(f) // frames_per_chunk
    first = jax.random.randint(k_k, (b, 1), 0, chunk[-1] + 1)
    clean = (jax.random.uniform(k_c, (b, 1)) < clean_context_prob) & (chunk[None] < first)  # [B, F]
    t = jnp.where(clean, 0.0, t)
    noise = jax.random.normal(k_n, x0.shape, jnp.float32)
    x_t = schedule.add_noise(x0.astype(jnp.float32), noise, t)
    flow, _ = model(x_t, t, model.text_kv(context), frame_mask=block_causal_mask(f, frames_per_chunk), remat=True)
    err = jnp.mean(jnp.square(flow.astype(jnp.float32) - (noise - x0.astype(jnp.float32))), axis=(2, 3, 4))
    weight = (~clean).astype(jnp.float32)
    return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_optimizer(lr: float = 3e-4, warmup: int = 100, weight_decay: float = 0.01, clip: float = 1.0):
    sched = optax.linear_schedule(0.0, lr, max(warmup, 1))
    return optax.chain(optax.clip_by_global_norm(clip), optax.adamw(sched, weight_decay=weight_decay))


@functools.partial(jax.jit, static_argnames=("graphdef", "optimizer", "frames_per_chunk", "clean_context_prob"),
                   donate_argnames=("params", "opt_state"))
def train_step(graphdef, optimizer, params, opt_state, x0, context, key, *, frames_per_chunk: int = 3,
               clean_context_prob: float = 0.0):
    """One optimizer step on the block-causal loss -> (params, opt_state, loss); params and
    opt_state are updated in place."""
    def loss_of(p):
        return loss_fn(nnx.merge(graphdef, p), x0, context, key, frames_per_chunk,
                       clean_context_prob=clean_context_prob)

    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def to_model_frames(video: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [-1, 1] (pixel-space model frames)."""
    return (np.asarray(video, np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)
