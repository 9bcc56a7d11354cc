"""Lower a config's whole chunk step for a TPU or a GPU, from any host, and save it.

  python -m pyramid_jax.export --config=CONFIG --platform=tpu|cuda|cpu --out=FILE [--batch 1] [--config.F=V ...]

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

import argparse
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
from jax import export
from flax import nnx

from pyramid_jax import attention, logs, media, pipeline
from pyramid_jax.config import parse_config
from pyramid_jax.errors import UserError, first_line, os_reason
from pyramid_jax.models.wan import WanConfig, abstract_model
from pyramid_jax.sampling.rollout import chunk_step
from pyramid_jax.video import check_writable
from pyramid_jax.weights.checkpoint import CheckpointError, read_config

log = logging.getLogger("pyramid_jax")

PLATFORMS = ("tpu", "cuda", "cpu")
# The custom call each platform's Pallas kernel lowers to (on CPU it is interpreted: plain HLO).
KERNEL_CALL = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton", "cpu": None}


def model_config(c) -> WanConfig:
    """The checkpoint's model shape when it is here, else the config's `model` fields."""
    if c.checkpoint and os.path.isdir(c.checkpoint):
        try:
            return WanConfig.from_dict(dict(read_config(c.checkpoint)[1].to_dict(), dtype=c.dtype))
        except CheckpointError as e:
            raise UserError(str(e)) from None
    return WanConfig.from_dict(dict(c.model.to_dict(), dtype=c.dtype))


def abstract_inputs(c, cfg: WanConfig, policy, sampler, batch: int):
    """ShapeDtypeStructs of (cache, text_kv, noise, renoise, chunk) for one chunk step."""
    hw = pipeline.latent_size(c, cfg)
    f, dt = c.frames_per_chunk, cfg.jnp_dtype
    cache = jax.eval_shape(lambda: policy.init(batch, dt))
    kv = jax.ShapeDtypeStruct((cfg.num_layers, batch, cfg.num_heads, cfg.text_len, cfg.head_dim), dt)
    noise = jax.ShapeDtypeStruct((batch, f, cfg.in_channels, *hw), jnp.float32)
    renoise = jax.ShapeDtypeStruct((sampler.num_steps - 1, batch, f, cfg.in_channels, *hw), jnp.float32)
    return cache, (kv, kv), noise, renoise, jax.ShapeDtypeStruct((), jnp.int32)


def export_step(c, platform: str, batch: int = 1) -> export.Exported:
    """The config's chunk step lowered for `platform` (tpu | cuda)."""
    cfg = model_config(c)
    graphdef, params = nnx.split(abstract_model(cfg, c.attention.backend))
    sampler = pipeline.make_sampler(c)
    policy = pipeline.build_policy(c, cfg, pipeline.latent_size(c, cfg), c.num_frames)
    log.info("model dim %d, %d layers x %d heads, %s; cache %s; latent %dx%d, batch %d; attention %s",
             cfg.dim, cfg.num_layers, cfg.num_heads, cfg.dtype, c.cache.policy, *pipeline.latent_size(c, cfg), batch,
             c.attention.backend)

    cache, text_kv, noise, renoise, chunk = abstract_inputs(c, cfg, policy, sampler, batch)
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


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logs.setup()
    p = argparse.ArgumentParser(prog="pyramid_jax.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--platform", required=True, choices=PLATFORMS)
    p.add_argument("--out", required=True, help="the serialized step (jax.export bytes)")
    p.add_argument("--batch", type=int, default=1)
    args, rest = p.parse_known_args(argv[1:])
    try:
        c = parse_config([argv[0], *rest])
        if args.batch < 1:
            raise UserError(f"--batch must be >= 1, got {args.batch}")
        check_writable(args.out, "--out")
        t0 = time.perf_counter()
        exported = export_step(c, args.platform, args.batch)
        text = exported.mlir_module()
        data = exported.serialize()
    except UserError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a lowering the target refuses: one line, the reason
        print(f"export: error: the step does not lower for {args.platform}: {first_line(e, 300)}", file=sys.stderr)
        return 1
    call = KERNEL_CALL[args.platform]
    kernel = call is not None and call in text
    try:
        media.write_bytes(args.out, bytes(data))
    except OSError as e:
        print(f"export: error: writing {args.out} failed: {os_reason(e)}", file=sys.stderr)
        return 2
    log.info("exported the chunk step for %s in %.1f s: %s (%.1f MB)%s", args.platform, time.perf_counter() - t0,
             args.out, len(data) / 2**20, f"; Pallas kernel ({call}) inside: {'yes' if kernel else 'no'}" if call else "")
    if c.attention.backend == "pallas" and call and not kernel:
        print(f"export: error: attention.backend=pallas but no {call} in the lowered step", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
