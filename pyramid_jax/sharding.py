"""Logical axes and how they map onto a device mesh.

Arrays name their axes where they are created (parameters through their nnx metadata, the
cache through `CacheState.logical_axes`); `RULES` maps those names to the mesh axes, `data`
(the batch) and `model` (attention heads, FFN columns and the heads' cache pages). Code runs
on global arrays and the compiler partitions it; only the paged-attention kernel runs under
`shard_map` (attention.paged_attention_fn).
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"  # mesh axes

# logical axis -> mesh axis (absent: replicated)
RULES = {
    "batch": DATA,
    "heads": MODEL,  # attention heads (q/k/v columns, o rows, text K/V, plans)
    "mlp": MODEL,  # FFN hidden columns
    "pages": MODEL,  # cache pages and merge rows, laid out per head group
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


def put(tree, mesh, logical_tree):
    """device_put every leaf of `tree` with its declared layout on `mesh`."""
    leaves, treedef = jax.tree.flatten(tree)
    specs = jax.tree.leaves(logical_tree, is_leaf=lambda x: isinstance(x, P))
    return treedef.unflatten([jax.device_put(a, NamedSharding(mesh, mesh_spec(s))) for a, s in zip(leaves, specs)])


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
