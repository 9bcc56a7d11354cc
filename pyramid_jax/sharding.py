"""Logical axes, how they map onto a device mesh, and the meshes generation runs on.

Arrays name their axes where they are created (parameters through their nnx metadata, the
cache through `CacheState.logical_axes()`); `RULES` maps those names to the mesh axes, `data`
(the batch) and `model` (attention heads, FFN columns and the heads' cache pages). Code runs
on global arrays and the compiler partitions it; only the paged-attention kernel runs under
`shard_map` (attention.paged_attention_fn).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"  # mesh axes

# logical axis -> mesh axis (absent: replicated)
RULES = {
    "batch": DATA,
    "heads": MODEL,  # attention heads (q/k/v columns, o rows, text K/V, plans)
    "mlp": MODEL,  # FFN hidden columns
    "pages": MODEL,  # cache pages and merge rows, laid out per head group
    "vocab": MODEL,  # the text encoder's embedding rows
    "channels": MODEL,  # output channels of the VAE's and TAEHV's convolutions
}


def param_meta(*axes: str | None) -> dict:
    """nnx Variable metadata naming a parameter's axes (no mesh needed to create it)."""
    return dict(out_sharding=tuple(axes), eager_sharding=False)


def mesh_spec(logical: P | tuple) -> P:
    """A logical PartitionSpec (or axis-name tuple) -> the mesh's."""
    return P(*(RULES.get(a) if isinstance(a, str) else None for a in logical))


def named(mesh, logical_tree):
    """NamedShardings on `mesh` for a tree of logical PartitionSpecs (same structure)."""
    is_spec = lambda x: isinstance(x, P)
    return jax.tree.map(lambda s: NamedSharding(mesh, mesh_spec(s)), logical_tree, is_leaf=is_spec)


def fitted_spec(logical, shape: tuple[int, ...], mesh) -> P:
    """mesh_spec(logical) for an array of `shape`, with any dimension its mesh axis does not
    divide left whole (a VAE's 3 output channels on a 2-way `model` axis)."""
    spec = mesh_spec(logical)
    return P(*(a if a is None or shape[i] % mesh.shape[a] == 0 else None for i, a in enumerate(spec)))


def put(tree, mesh, logical_tree):
    """device_put every leaf of `tree` with its declared layout on `mesh` (fitted_spec)."""
    leaves, treedef = jax.tree.flatten(tree)
    specs = jax.tree.leaves(logical_tree, is_leaf=lambda x: isinstance(x, P))
    return treedef.unflatten([jax.device_put(a, NamedSharding(mesh, fitted_spec(s, a.shape, mesh)))
                              for a, s in zip(leaves, specs)])


def active_mesh():
    """The mesh set with `jax.set_mesh` (an AbstractMesh while tracing), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or mesh.size == 1 else mesh


def constrain(tree, logical_tree):
    """Pin `tree` to its declared layout when a mesh is active (else unchanged)."""
    if active_mesh() is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    specs = jax.tree.leaves(logical_tree, is_leaf=lambda x: isinstance(x, P))
    return treedef.unflatten([jax.lax.with_sharding_constraint(a, mesh_spec(s)) for a, s in zip(leaves, specs)])


# ---- meshes: `data` splits the batch, `model` splits attention heads and FFN columns --------
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
    return Mesh(np.array(devices[: data * model]).reshape(data, model), (DATA, MODEL),
                axis_types=(AxisType.Auto, AxisType.Auto))


def batch_mesh(data: int, model: int, batch: int, cfg, devices=None) -> Mesh | None:
    """The mesh a batch of `batch` runs on (None: one device). data=0 takes as many of the
    devices left by `model` as divide the batch; an explicit `data` must divide it."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not data and model >= 1 and len(devices) % model == 0:
        data = math.gcd(batch, len(devices) // model)
    mesh = make_mesh(data, model, devices)
    check_fit(mesh, batch, cfg)
    return None if mesh.size == 1 else mesh


def check_fit(mesh: Mesh, batch: int, cfg) -> None:
    d, m = mesh.shape[DATA], mesh.shape[MODEL]
    if batch % d:
        raise ParallelError(f"batch {batch} is not divisible by mesh.data={d}")
    for name, size in (("heads", cfg.num_heads), ("ffn_dim", cfg.ffn_dim)):
        if size % m:
            raise ParallelError(f"{name} {size} is not divisible by mesh.model={m}")
