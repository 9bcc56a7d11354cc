"""Training the causal DiT: flow matching with block-causal attention and per-chunk noise.

Each chunk of `frames_per_chunk` frames gets its own timestep (diffusion-forcing style), the
attention mask is block-causal, and the target is the flow v = noise - x0 (what the model
predicts at inference). How the noise is drawn is a `Recipe` (static: part of the compiled
step). The text can be fixed features, or token ids read by a umT5 encoder trained with the
DiT (`text_cfg`). Pure functions: `loss_fn` and a jitted `train_step` over (graphdef, params,
optimizer state, EMA).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pyramid_jax.models.umt5 import modeling as umt5
from pyramid_jax.models.wan.modeling import FrameMask, block_causal_mask
from pyramid_jax.sampling.schedule import FlowSchedule


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a training sample is noised.

    timesteps: the noise levels trained (each chunk draws one uniformly); () = every timestep
        of `schedule`. Training at the sampler's own levels spends the steps where sampling
        happens.
    clean_context_prob: with this probability a sample's chunks before a random chunk are
        context (no loss), as at inference, where a chunk is denoised against earlier frames.
    context_t_max: context chunks are noised to a timestep drawn uniformly in [0, this] (0 =
        clean), so the model learns not to trust every detail of its own earlier frames.
    text_drop_prob: the share of samples whose text is dropped (an all-zero context, the
        unconditional branch of classifier-free guidance).
    foreground_weight: extra weight of the pixels a `foreground` mask marks in the first
        chunk (each frame's weights normalised to mean 1): small objects then count in the loss
        as much as the background they sit on where the video is made from the text alone.
        Later chunks stay unweighted: a weighted loss pulls uncertain pixels towards the
        objects' colours, and continued chunk after chunk the objects would grow.
    self_context_prob: with this probability a sample's context chunks are the model's own
        x0 estimate of them from noise level self_context_t (one pass without gradient), not
        the real frames, while the chunks after them keep the real frames as targets: the
        model learns to continue its own slightly wrong frames (colours a little off, shapes a
        little too big) towards the real video, instead of carrying the errors on chunk after
        chunk (a one-pass self-rollout against drift, with no teacher needed).
    self_context_t: the level those estimates start from; the sampler's last level is where
        the frames the cache holds at inference come from.
    switch_prob: with this probability a sample's context chunks (every chunk before a random
        one, at least the first) are the frames of the batch's previous sample (another clip,
        almost always of another caption), and are context whatever clean_context_prob says:
        where the frames it continues and its text disagree, the model learns to follow the
        text, as a prompt switch at inference asks (trained on clips whose caption never
        changes, it keeps the scene it sees). A batch of one has no other sample: nothing is
        switched.
    """

    frames_per_chunk: int = 3
    schedule: FlowSchedule = FlowSchedule()
    timesteps: tuple[float, ...] = ()
    clean_context_prob: float = 0.0
    context_t_max: float = 0.0
    text_drop_prob: float = 0.0
    foreground_weight: float = 0.0
    self_context_prob: float = 0.0
    self_context_t: float = 400.0
    switch_prob: float = 0.0
    remat: bool = True


def sample_timesteps(key, batch: int, num_frames: int, frames_per_chunk: int, schedule: FlowSchedule,
                     levels=()):
    """[B, F] timesteps: one per chunk, repeated over its frames; drawn from `levels` (any
    timesteps) or, when empty, from the schedule's."""
    blocks = -(-num_frames // frames_per_chunk)
    table = jnp.asarray(np.asarray(levels, np.float32) if len(levels) else schedule.timesteps)
    t = table[jax.random.randint(key, (batch, blocks), 0, table.shape[0])]
    return jnp.repeat(t, frames_per_chunk, axis=1)[:, :num_frames]


def loss_fn(model, x0, context, key, recipe: Recipe = Recipe(), foreground=None):
    """Mean squared flow error over the noised chunks. x0: [B, F, C, H, W] clean frames;
    context: [B, Lt, text_dim]; foreground: None or [B, F, 1, H, W] (a pixel of mask m is
    weighted by 1 + recipe.foreground_weight x m in the first chunk: 1 marks a shape, more
    weights it more)."""
    b, f = x0.shape[:2]
    k_t, k_n, k_c, k_k, k_x, k_d = jax.random.split(key, 6)
    r = recipe
    t = sample_timesteps(k_t, b, f, r.frames_per_chunk, r.schedule, r.timesteps)
    chunk = jnp.arange(f) // r.frames_per_chunk
    first = jax.random.randint(k_k, (b, 1), 0, chunk[-1] + 1)
    with_context = jax.random.uniform(k_c, (b, 1)) < r.clean_context_prob
    switching = bool(r.switch_prob) and f > r.frames_per_chunk and b > 1  # needs a later chunk and another sample
    if switching:  # a key folded from `key`: recipes without it draw as before
        switched = jax.random.uniform(jax.random.fold_in(key, 2), (b, 1)) < r.switch_prob
        first = jnp.where(switched, jnp.maximum(first, 1), first)
        with_context = with_context | switched
    context_frame = with_context & (chunk[None] < first)  # [B, F]
    t_context = jax.random.uniform(k_x, (b, 1), maxval=r.context_t_max) if r.context_t_max else 0.0
    t = jnp.where(context_frame, t_context, t)
    if r.text_drop_prob:
        keep = jax.random.uniform(k_d, (b, 1, 1)) >= r.text_drop_prob
        context = jnp.where(keep, context, 0.0)
    noise = jax.random.normal(k_n, x0.shape, jnp.float32)
    text_kv, mask = model.text_kv(context), FrameMask(block_causal_mask(f, r.frames_per_chunk))
    real = x0.astype(jnp.float32)
    if switching:  # another sample's frames as this one's context
        real = jnp.where((switched & context_frame)[:, :, None, None, None], jnp.roll(real, 1, axis=0), real)
    seen = real  # what the noised input is made from
    if r.self_context_prob:  # keys folded from `key`: recipes without it draw what they drew before
        k_p, k_s = jax.random.split(jax.random.fold_in(key, 1))
        t_s = jnp.full((b, f), r.self_context_t, jnp.float32)
        x_s = r.schedule.add_noise(real, jax.random.normal(k_s, x0.shape, jnp.float32), t_s)
        own = r.schedule.flow_to_x0(x_s, model(x_s, t_s, text_kv, mask, remat=r.remat).flow, t_s)
        use = context_frame & (jax.random.uniform(k_p, (b, 1)) < r.self_context_prob)
        seen = jnp.where(use[:, :, None, None, None], jax.lax.stop_gradient(own.astype(jnp.float32)), real)
    x_t = r.schedule.add_noise(seen, noise, t)
    flow = model(x_t, t, text_kv, mask, remat=r.remat).flow
    sq = jnp.square(flow.astype(jnp.float32) - (noise - real))
    if foreground is not None and r.foreground_weight:
        first_chunk = (chunk < 1).astype(jnp.float32)[None, :, None, None, None]
        w = 1.0 + r.foreground_weight * foreground.astype(jnp.float32) * first_chunk
        sq = sq * w / jnp.mean(w, axis=(2, 3, 4), keepdims=True)
    err = jnp.mean(sq, axis=(2, 3, 4))
    weight = (~context_frame).astype(jnp.float32)
    return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_optimizer(lr: float = 3e-4, warmup: int = 100, weight_decay: float = 0.01, clip: float = 1.0,
                   total_steps: int = 0, final_lr_fraction: float = 0.1):
    """AdamW with linear warm-up; with total_steps, then a cosine decay to final_lr_fraction x lr
    at total_steps (a fixed-length run ends on a small step size)."""
    warmup = max(warmup, 1)
    sched = optax.linear_schedule(0.0, lr, warmup)
    if total_steps > warmup:
        sched = optax.join_schedules([sched, optax.cosine_decay_schedule(lr, total_steps - warmup,
                                                                        alpha=final_lr_fraction)], [warmup])
    return optax.chain(optax.clip_by_global_norm(clip), optax.adamw(sched, weight_decay=weight_decay))


def text_context(params, text, text_cfg: umt5.UMT5Config | None):
    """The DiT's context: `text` itself ([B, Lt, text_dim] features), or, with text_cfg, the
    umT5 encoding of text = (ids, mask) [B, Lt] by params["text"]."""
    if text_cfg is None:
        return text
    ids, mask = text
    return umt5.encode_prompts(params["text"], text_cfg, ids, mask)


def dit_params(params, text_cfg):
    return params["dit"] if text_cfg is not None else params


@functools.partial(jax.jit, static_argnames=("graphdef", "optimizer", "recipe", "text_cfg", "ema_decay"),
                   donate_argnames=("params", "opt_state", "ema"))
def train_step(graphdef, optimizer, params, opt_state, x0, text, key, *, recipe: Recipe = Recipe(),
               text_cfg: umt5.UMT5Config | None = None, ema=None, ema_decay: float = 0.999, foreground=None):
    """One optimizer step -> (params, opt_state, loss), or (params, opt_state, loss, ema) when
    an EMA of the params is kept; params, opt_state and ema are updated in place.

    params: the DiT's nnx state, or {"dit": state, "text": umT5 params} to train the text
    encoder too (text_cfg its config; `text` is then (ids, mask), else features).
    foreground: None or [B, F, 1, H, W], the pixels recipe.foreground_weight weights.
    """
    def loss_of(p):
        model = nnx.merge(graphdef, dit_params(p, text_cfg))
        return loss_fn(model, x0, text_context(p, text, text_cfg), key, recipe, foreground)

    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if ema is None:
        return params, opt_state, loss
    ema = jax.tree.map(lambda e, p: e + (1.0 - ema_decay) * (p - e), ema, params)
    return params, opt_state, loss, ema


def to_model_frames(video: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [-1, 1] (pixel-space model frames)."""
    return (np.asarray(video, np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)
