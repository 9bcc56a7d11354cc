"""Meshes and the sharded chunk step.

Mesh axes: `data` splits the batch, `model` splits attention heads and FFN columns.
The whole chunk step (`rollout.chunk_step`) runs inside `jax.shard_map`: the DiT sees its
local heads (q/k/v and FFN-in column-parallel, the attention and FFN output projections
row-parallel with a psum over `model`, the full-width q/k RMSNorm psums its statistic), and
the cache policy plans, stages and commits its local heads' slots and pages: the cache is
laid out in head groups (`policy.init(..., head_groups=mesh model size)`), so each device's
pages form one block of the pool.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pyramid_jax.cache.pool import CacheState
from pyramid_jax.sampling.rollout import Sampler, chunk_step

DATA, MODEL = "data", "model"


class ParallelError(ValueError):
    """A mesh that does not fit the devices, the batch or the model."""


def make_mesh(data: int = 0, model: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over local devices; data=0 takes all devices left by `model`."""
    devices = list(jax.local_devices() if devices is None else devices)
    n = len(devices)
    if model < 1 or n % model:
        raise ParallelError(f"mesh.model={model} does not divide the {n} local devices")
    data = data or n // model
    if data * model > n:
        raise ParallelError(f"mesh {data}x{model} needs {data * model} devices, {n} are available")
    return Mesh(np.array(devices[: data * model]).reshape(data, model), (DATA, MODEL))


def check_fit(mesh: Mesh, batch: int, cfg) -> None:
    d, m = mesh.shape[DATA], mesh.shape[MODEL]
    if batch % d:
        raise ParallelError(f"batch {batch} is not divisible by mesh.data={d}")
    for name, size in (("heads", cfg.num_heads), ("ffn_dim", cfg.ffn_dim)):
        if size % m:
            raise ParallelError(f"{name} {size} is not divisible by mesh.model={m}")


def param_specs(params):
    """PartitionSpecs for the nnx param state: column/row-parallel block weights over `model`."""
    def spec(path, leaf):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if keys and keys[-1] == "value":  # the nnx Variable's payload
            keys = keys[:-1]
        if "blocks" not in keys:
            return P()
        name = "/".join(keys)
        attn = ("self_attn", "cross_attn")
        if any(name.startswith(f"blocks/{a}/{w}/") for a in attn for w in "qkv") or name.startswith("blocks/ffn/fc1/"):
            return P(None, None, MODEL) if keys[-1] == "kernel" else P(None, MODEL)  # column-parallel
        if any(name == f"blocks/{a}/{n}" for a in attn for n in ("norm_q", "norm_k")):
            return P(None, MODEL)
        if name in ("blocks/self_attn/o/kernel", "blocks/cross_attn/o/kernel", "blocks/ffn/fc2/kernel"):
            return P(None, MODEL, None)  # row-parallel; its bias is added once after the psum
        return P()

    return jax.tree_util.tree_map_with_path(spec, params)


def cache_specs() -> CacheState:
    """How each cache leaf is split: pages and accumulator rows by batch and head group, the
    per-(layer, head) tables by head."""
    pages, table = P(DATA, MODEL), P(None, MODEL)
    return CacheState(k=pages, v=pages, page_len=P(MODEL), slot_time=table, slot_page=table,
                      head_kind=table, merge_k=pages, merge_v=pages, merge_row=table)


def shard(tree, specs, mesh):
    return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), tree, specs)


@functools.lru_cache(maxsize=8)
def make_sharded_chunk_step(graphdef, policy, sampler: Sampler, mesh: Mesh, param_spec_tree):
    """jitted step(params, cache, text_kv, noise, renoise, chunk) -> (x0, cache): the whole
    chunk step under shard_map over `mesh`. Same contract as rollout.make_chunk_step.
    param_spec_tree: param_specs(params) wrapped by _freeze (hashable for the cache)."""
    text_spec = (P(None, DATA, MODEL), P(None, DATA, MODEL))
    kv = cache_specs()

    def local_step(params, cache, text_kv, noise, renoise, chunk):
        model = nnx.merge(graphdef, params)
        return chunk_step(model, policy, sampler, cache, text_kv, noise, renoise, chunk, model_axis=MODEL)

    step = jax.shard_map(local_step, mesh=mesh, check_vma=False,
                         in_specs=(param_spec_tree.tree, kv, text_spec, P(DATA), P(None, DATA), P()),
                         out_specs=(P(DATA), kv))
    return jax.jit(step, donate_argnums=(1,))


def sharded_text_kv(model, context, mesh: Mesh):
    """Per-layer text K/V computed under shard_map, split by head and batch."""
    graphdef, params = nnx.split(model)
    specs = param_specs(params)
    fn = jax.shard_map(lambda p, c: nnx.merge(graphdef, p).text_kv(c, MODEL), mesh=mesh,
                       in_specs=(specs, P(DATA)), out_specs=(P(None, DATA, MODEL), P(None, DATA, MODEL)),
                       check_vma=False)
    return jax.jit(fn)(shard(params, specs, mesh), context)


def sharded_rollout(model, policy, sampler: Sampler, context, noise_source, num_chunks: int, mesh: Mesh,
                    on_chunk=None):
    """rollout() with the DiT sharded over mesh. Returns latents [B, F, C, h, w] (numpy)."""
    import time

    import jax.numpy as jnp

    check_fit(mesh, context.shape[0], model.cfg)
    graphdef, params = nnx.split(model)
    specs = param_specs(params)
    params = shard(params, specs, mesh)
    text_kv = sharded_text_kv(model, jnp.asarray(context), mesh)
    step = make_sharded_chunk_step(graphdef, policy, sampler, mesh, _freeze(specs))
    noise0, _ = noise_source.chunk(0)
    cache = policy.init(noise0.shape[0], model.cfg.jnp_dtype, head_groups=mesh.shape[MODEL])
    cache = shard(cache, cache_specs(), mesh)
    outs = []
    for k in range(num_chunks):
        t0 = time.perf_counter()
        noise, renoise = noise_source.chunk(k)
        noise = jax.device_put(noise, NamedSharding(mesh, P(DATA)))
        renoise = jax.device_put(renoise, NamedSharding(mesh, P(None, DATA)))
        x0, cache = step(params, cache, text_kv, noise, renoise, jnp.int32(k))
        outs.append(np.asarray(x0, np.float32))
        if on_chunk is not None:
            on_chunk(k, outs[-1], time.perf_counter() - t0)
    return np.concatenate(outs, axis=1)


def _freeze(specs):
    """A hashable stand-in for the spec tree (lru_cache key); shard_map accepts the tree."""
    return _Hashable(specs)


class _Hashable:
    def __init__(self, tree):
        self.tree = tree
        leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: isinstance(x, P))
        self._key = (treedef, tuple(leaves))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Hashable) and self._key == other._key
