"""Run on 8 fake CPU devices (XLA_FLAGS set by the caller): sharded rollouts vs one device,
and whether the compiled sharded step ever moves the page pool between devices.

Prints one JSON line {case: rel_err, case/pool_collectives: count}. Used by
tests/test_sharding.py in a subprocess.
"""

import dataclasses
import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from pyramid_jax import sharding

from pyramid_jax.cache.head_map import ANCHOR, DYNAMIC, STATIC, VEIL, WAVE
from pyramid_jax.cache.policies import make_policy
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.models.wan.modeling import WanConfig, init_model
from pyramid_jax.sharding import make_mesh
from pyramid_jax.sampling.rollout import RandomNoise, Sampler, on_mesh, rollout, step, text_kv_of


def pool_collectives(model, policy, sampler, ctx, noise, mesh):
    """Collectives of the compiled sharded step whose operand is the page pool (or a copy of
    it): the compiler partitions the step well only if there are none."""
    graphdef, params = nnx.split(model)
    b = ctx.shape[0]
    with on_mesh(mesh):
        params = sharding.put(params, mesh, nnx.get_partition_spec(params))
        cache = policy.init(b, jnp.float32, head_groups=mesh.shape["model"])
        cache = sharding.put(cache, mesh, cache.logical_axes())
        n, r = sharding.put(noise.chunk(0), mesh, (P("batch"), P(None, "batch")))
        hlo = step.lower(graphdef, policy, sampler, params, cache, text_kv_of(model, ctx, mesh), n, r,
                         jnp.int32(1)).compile().as_text()
    pages = ",".join(map(str, cache.k.shape[1:]))  # the pool's [NP, Tp, Dh], whole
    return sum(1 for line in hlo.splitlines()
               if re.search(r"\b(all-gather|all-to-all|all-reduce|collective-permute)\b", line) and f"{pages}]" in line)


def main(backends, meshes):
    assert jax.device_count() == 8, jax.devices()
    cfg = WanConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, in_channels=4, out_channels=4,
                    text_dim=24, freq_dim=32, text_len=5)
    b, chunks = 8, 3
    spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, (2, 3), 3)
    head_map = np.array([[WAVE, ANCHOR, VEIL, WAVE], [VEIL, ANCHOR, WAVE, ANCHOR]])
    fkv_map = np.array([[STATIC, DYNAMIC, DYNAMIC, STATIC], [DYNAMIC, STATIC, DYNAMIC, DYNAMIC]])
    sampler = Sampler()
    ctx = np.asarray(jax.random.normal(jax.random.key(0), (b, 5, 24)))
    out = {}
    for backend in backends:
        model = init_model(cfg, seed=2, attention_backend=backend)
        for pname, kw, pages in (("window", dict(local_attn_size=6, sink_size=1), spec),
                                 ("pyramid", dict(head_map=head_map), spec),
                                 ("pyramid-int8", dict(head_map=head_map), dataclasses.replace(spec, kv_dtype="int8")),
                                 ("dummy_forcing", dict(num_dummy=4), spec),
                                 ("forcing_kv", dict(head_map=fkv_map, sink_size=1, num_frame_patch=3), spec)):
            n = chunks + 1 if pname == "forcing_kv" else chunks  # its bands are attended from chunk 3
            policy = make_policy(pname.split("-")[0], pages, n * 3, **kw)
            noise = RandomNoise(3, (b, n * 3, 4, 4, 6), sampler)
            single = rollout(model, policy, sampler, model.text_kv(ctx), noise, n).latents
            for d, m in meshes:
                mesh = make_mesh(d, m)
                lat = rollout(model, policy, sampler, text_kv_of(model, ctx, mesh), noise, n, mesh=mesh).latents
                err = float(np.linalg.norm(lat - single) / np.linalg.norm(single))
                out[f"{backend}/{pname}/mesh{d}x{m}"] = err
                out[f"{backend}/{pname}/mesh{d}x{m}/pool_collectives"] = pool_collectives(model, policy, sampler, ctx,
                                                                                         noise, mesh)
    print(json.dumps(out))


if __name__ == "__main__":
    backends = sys.argv[1].split(",")
    meshes = [tuple(int(x) for x in m.split("x")) for m in sys.argv[2].split(",")]
    main(backends, meshes)
