"""A config's whole chunk step lowered for a TPU or a GPU, from any host (the work of
`python -m pyramid_jax.export`, `pyramid_jax.cli.export`).

The step (`sampling.rollout.chunk_step`: every denoising pass, the cache-writing pass and the
commit) is traced with abstract weights and cache (`nnx.eval_shape`: no checkpoint, no
accelerator, no device memory) and serialized with `jax.export` for that platform; with
`attention.backend=pallas` the attention kernel is the target's (Mosaic on TPU, Triton on
GPU), whatever the host. A config that does not lower (a kernel block that Mosaic refuses, a
shape the cache cannot hold) fails here, on a CPU, before any accelerator time is spent.
The file loads with `jax.export.deserialize` on the target; its inputs are flat: (the
parameter leaves in `nnx.split` order, the cache leaves (CacheState order), text K, text V
[L, B, H, Lt, Dh], noise [B, F, C, h, w], re-noise [steps-1, B, F, C, h, w], the chunk index),
and it returns (x0, *the new cache's leaves).
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
from jax import export
from flax import nnx

from pyramid_jax import attention, pipeline
from pyramid_jax.errors import UserError
from pyramid_jax.models.wan.modeling import WanConfig, abstract_model
from pyramid_jax.sampling.rollout import chunk_step
from pyramid_jax.weights.checkpoint import CheckpointError, read_config

log = logging.getLogger("pyramid_jax")

PLATFORMS = ("tpu", "cuda", "cpu")
# The custom call each platform's Pallas kernel lowers to (on CPU it is interpreted: plain HLO).
KERNEL_CALL = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton", "cpu": None}


def model_config(spec) -> WanConfig:
    """The checkpoint's model shape when it is here, else the config's `model` fields."""
    if spec.model.checkpoint and os.path.isdir(spec.model.checkpoint):
        try:
            return read_config(spec.model.checkpoint)[1].replace(dtype=spec.model.dtype)
        except CheckpointError as e:
            raise UserError(str(e)) from None
    return spec.model.shape


def abstract_inputs(spec, cfg: WanConfig, policy, sampler, batch: int):
    """ShapeDtypeStructs of (cache, text_kv, noise, renoise, chunk) for one chunk step."""
    hw = pipeline.latent_size(spec, cfg)
    f, dt = spec.sampler.frames_per_chunk, cfg.jnp_dtype
    cache = jax.eval_shape(lambda: policy.init(batch, dt))
    kv = jax.ShapeDtypeStruct((cfg.num_layers, batch, cfg.num_heads, cfg.text_len, cfg.head_dim), dt)
    noise = jax.ShapeDtypeStruct((batch, f, cfg.in_channels, *hw), jnp.float32)
    renoise = jax.ShapeDtypeStruct((sampler.num_steps - 1, batch, f, cfg.in_channels, *hw), jnp.float32)
    return cache, (kv, kv), noise, renoise, jax.ShapeDtypeStruct((), jnp.int32)


def export_step(spec, platform: str, batch: int = 1) -> export.Exported:
    """The config's chunk step lowered for `platform` (tpu | cuda)."""
    cfg = model_config(spec)
    graphdef, params = nnx.split(abstract_model(cfg, spec.model.attention))
    sampler = pipeline.make_sampler(spec)
    policy = pipeline.build_policy(spec, cfg, pipeline.latent_size(spec, cfg), spec.inputs.num_frames)
    log.info("model dim %d, %d layers x %d heads, %s; cache %s; latent %dx%d, batch %d; attention %s",
             cfg.dim, cfg.num_layers, cfg.num_heads, cfg.dtype, spec.cache.policy, *pipeline.latent_size(spec, cfg),
             batch,
             spec.model.attention)

    cache, text_kv, noise, renoise, chunk = abstract_inputs(spec, cfg, policy, sampler, batch)
    params_leaves, params_def = jax.tree.flatten(params)
    cache_leaves, cache_def = jax.tree.flatten(cache)

    def step(params_leaves, cache_leaves, text_k, text_v, noise, renoise, chunk):
        """Flat arrays in and out (the file holds no Python types): (x0, *cache leaves)."""
        model = nnx.merge(graphdef, jax.tree.unflatten(params_def, params_leaves))
        x0, new_cache = chunk_step(model, policy, sampler, jax.tree.unflatten(cache_def, cache_leaves),
                                   (text_k, text_v), noise, renoise, chunk)
        return (x0, *jax.tree.leaves(new_cache))

    # Triton calls carry no compatibility guarantee across jaxlib versions: export says so.
    checks = [export.DisabledSafetyCheck.custom_call(KERNEL_CALL["cuda"])] if platform == "cuda" else []
    with attention.lowering_for(platform):
        return export.export(jax.jit(step, donate_argnums=1), platforms=[platform], disabled_checks=checks)(
            params_leaves, cache_leaves, *text_kv, noise, renoise, chunk)
