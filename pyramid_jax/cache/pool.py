"""The KV slot pool: fixed-shape per-layer, per-head frame slots with metadata.

A slot holds the keys (post-RoPE, at the slot's RoPE time) and values of one latent frame
(or a pooled block, with fewer valid tokens) for one head. Policies decide which frames go
to which slot (`commit`) and which slots each query frame reads (`plan`); the model only
sees `KVPool` and `PagePlan`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pyramid_jax.attention import KVPool
from pyramid_jax.models import rope


class CacheState(NamedTuple):
    """k, v: [L, B, H, S, T_f, Dh]; slot_time: [L, H, S] int32 absolute frame time of the
    content (-1 = empty); page_len: [L, H, S] int32 valid tokens; extra: policy state."""

    k: jax.Array
    v: jax.Array
    slot_time: jax.Array
    page_len: jax.Array
    extra: dict

    def pool(self) -> KVPool:
        return KVPool(self.k, self.v, self.page_len)

    @property
    def nbytes(self) -> int:
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(self))


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """Static shape facts every policy needs."""

    num_layers: int
    num_heads: int
    head_dim: int
    grid: tuple[int, int]  # latent tokens per frame as (h, w) after patching
    frames_per_chunk: int = 3
    theta: float = 10000.0

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]


def empty_state(spec: PoolSpec, batch: int, num_slots: int, dtype, extra=None) -> CacheState:
    shape = (spec.num_layers, batch, spec.num_heads, num_slots, spec.tokens_per_frame, spec.head_dim)
    meta = (spec.num_layers, spec.num_heads, num_slots)
    return CacheState(
        k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
        slot_time=jnp.full(meta, -1, jnp.int32),
        page_len=jnp.full(meta, spec.tokens_per_frame, jnp.int32),
        extra={} if extra is None else extra)


def rope_keys(spec: PoolSpec, k: jax.Array, times: jax.Array) -> jax.Array:
    """RoPE pre-RoPE chunk keys at the given absolute frame times.

    k: [L, B, H, F, T, Dh]; times: [F] int32 (traced ok) -> [L, B, H, F, T, Dh].
    """
    gh, gw = spec.grid
    cos, sin = rope.grid_tables(times, jnp.arange(gh), jnp.arange(gw), spec.head_dim, spec.theta)
    f, t = k.shape[3], k.shape[4]
    cos, sin = cos.reshape(f, t, -1), sin.reshape(f, t, -1)
    return rope.apply_rope(k, cos, sin)


def write_frames(state: CacheState, k: jax.Array, v: jax.Array, slots: jax.Array,
                 times: jax.Array) -> CacheState:
    """Write frame f of the chunk into slot slots[l, h, f] of every (layer, head).

    k, v: [L, B, H, F, T, Dh] (k post-RoPE); slots: [L, H, F] int32, out-of-range = skip
    (targets must be distinct per (l, h)); times: [L, H, F] int32 recorded as slot_time.
    """
    n_l, _, n_h = k.shape[:3]
    li = jnp.arange(n_l)[:, None, None]
    hi = jnp.arange(n_h)[None, :, None]
    # advanced indices (l, h, slot) around a slice -> value layout [L, H, F, B, T, Dh]
    to_idx = lambda a: jnp.moveaxis(a, 1, 3).astype(state.k.dtype)
    new_k = state.k.at[li, :, hi, slots].set(to_idx(k), mode="drop")
    new_v = state.v.at[li, :, hi, slots].set(to_idx(v), mode="drop")
    slot_time = state.slot_time.at[li, hi, slots].set(times, mode="drop")
    page_len = state.page_len.at[li, hi, slots].set(k.shape[4], mode="drop")
    return state._replace(k=new_k, v=new_v, slot_time=slot_time, page_len=page_len)
