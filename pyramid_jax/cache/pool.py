"""The KV page pool: one fixed-shape pool of pages shared by every layer and head.

A page holds Tp tokens. Each (layer, head) owns a static set of logical slots, and each slot
a static run of pages: a slot for a latent frame fills ceil(T / Tp) pages, a slot for a pooled
block one page, so every head owns exactly the pages its policy needs. Policies decide which
frame goes to which slot (`commit`, `stage`) and which slots each query frame reads (`plan`);
the model only sees `KVPool` and `PagePlan`.

Under a mesh whose `model` axis splits the heads into G groups, each group's pages (and merge
accumulator rows) form one contiguous block of the pool, padded to the largest group, so the
device that holds a group's heads holds their pages. Page numbers are global.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pyramid_jax import rope
from pyramid_jax.attention.plan import KVPool, entry_span


class CacheState(NamedTuple):
    """A policy's cache: the page pool every policy shares, and what the policy keeps besides
    (`own`); every leaf has a static shape.

    k, v: [B, NP, Tp, Dh] pages (keys post-RoPE at the content's stored time).
    page_len: [NP] int32 tokens of the entry starting at each page.
    slot_time: [L, H, S] int32 absolute frame time of each logical slot's content (-1 empty).
    slot_page: [L, H, S] int32 first page of each logical slot (the block size when the head has
        no such slot). Static; an array so it is split with the heads.
    k_scale, v_scale: [B, NP, Tp, 1] float32 per-token scales of 8-bit pages (k = k_page * scale,
        per head since every page is one head's); [B, 0, 1, 1] when the pages are not 8-bit.
    own: the policy's own state, a pytree with a `logical_axes()` method (Pyramid Forcing's
        head types and merge accumulators), or () for a policy that keeps nothing else.
    """

    k: jax.Array
    v: jax.Array
    page_len: jax.Array
    slot_time: jax.Array
    slot_page: jax.Array
    k_scale: jax.Array
    v_scale: jax.Array
    own: Any = ()

    def pool(self) -> KVPool:
        if self.k_scale.shape[1]:
            return KVPool(self.k, self.v, self.page_len, self.k_scale, self.v_scale)
        return KVPool(self.k, self.v, self.page_len)

    def logical_axes(self) -> "CacheState":
        """Each leaf's logical axes (pyramid_jax.sharding): pages are laid out per head group,
        so they split with the heads; the policy's own state says its own."""
        pages, table = P("batch", "pages"), P(None, "heads")
        return CacheState(k=pages, v=pages, page_len=P("pages"), slot_time=table, slot_page=table, k_scale=pages,
                          v_scale=pages, own=self.own.logical_axes() if hasattr(self.own, "logical_axes") else ())

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
    theta: float = rope.WAN_THETA
    kv_dtype: str = ""  # the pages' dtype: "" = the model's; int8 / float8_e4m3fn = 8-bit with scales

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def page_dtype(self, model_dtype):
        return jnp.dtype(self.kv_dtype or model_dtype)


# The largest magnitude each 8-bit page format stores; a token's row of Dh values is scaled so
# its largest |value| lands there.
EIGHT_BIT = {"int8": 127.0, "float8_e4m3fn": 448.0}
KV_DTYPES = ("", "bfloat16", "float32", *EIGHT_BIT)


def quantize(x: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """x [..., Dh] -> (x in `dtype`, per-row float32 scales [..., 1]) for an 8-bit dtype."""
    x = x.astype(jnp.float32)
    top = EIGHT_BIT[jnp.dtype(dtype).name]
    scale = jnp.maximum(jnp.abs(x).max(-1, keepdims=True), 1e-12) / top
    y = x / scale
    if jnp.issubdtype(dtype, jnp.integer):
        y = jnp.round(y)
    return jnp.clip(y, -top, top).astype(dtype), scale


def dequantize(x: jax.Array, scale: jax.Array | None, dtype=jnp.float32) -> jax.Array:
    """Pages (or tokens read from them) back to `dtype`; scale None: not 8-bit."""
    return x.astype(dtype) if scale is None else (x.astype(jnp.float32) * scale).astype(dtype)


def allocate(units: np.ndarray, head_groups: int = 1) -> tuple[np.ndarray, int]:
    """Number the units (pages, accumulator rows) each (layer, head, slot) needs.

    units: [L, H, S] how many consecutive units each slot takes (0: no such slot). Heads are
    split into `head_groups` contiguous groups; each group's units fill one block, blocks are
    padded to the largest. Returns (first unit [L, H, S] int32, the total count where
    units == 0; units per block).
    """
    n_l, n_h, _ = units.shape
    if n_h % head_groups:
        raise ValueError(f"{n_h} heads cannot be split into {head_groups} equal groups")
    hg = n_h // head_groups
    first = np.zeros(units.shape, np.int64)
    sizes = []
    for g in range(head_groups):
        u = units[:, g * hg:(g + 1) * hg].reshape(-1)
        first[:, g * hg:(g + 1) * hg] = (np.cumsum(u) - u).reshape(n_l, hg, -1)
        sizes.append(int(u.sum()))
    block = max(sizes)
    group_start = (np.arange(n_h) // hg * block)[None, :, None]
    return np.where(units > 0, first + group_start, block * head_groups).astype(np.int32), block


def empty_state(spec: PoolSpec, batch: int, dtype, slot_pages: np.ndarray, page_tokens: int,
                head_groups: int = 1, own=()) -> CacheState:
    """An empty cache. slot_pages [L, H, S]: pages each logical slot takes (0 = none); own:
    the policy's own state (see CacheState)."""
    first, block = allocate(np.asarray(slot_pages), head_groups)
    n_pages = block * head_groups
    if n_pages == 0:  # one (never valid) page per group keeps shapes non-empty
        n_pages = head_groups
        first = np.full_like(first, n_pages)
    pages = (batch, n_pages, page_tokens, spec.head_dim)
    store = spec.page_dtype(dtype)
    scales = (batch, n_pages, page_tokens, 1) if store.name in EIGHT_BIT else (batch, 0, 1, 1)
    return CacheState(
        k=jnp.zeros(pages, store), v=jnp.zeros(pages, store),
        page_len=jnp.full((n_pages,), spec.tokens_per_frame, jnp.int32),
        slot_time=jnp.full(first.shape, -1, jnp.int32), slot_page=jnp.asarray(first),
        k_scale=jnp.ones(scales, jnp.float32), v_scale=jnp.ones(scales, jnp.float32), own=own)


def rope_keys(spec: PoolSpec, k: jax.Array, times: jax.Array) -> jax.Array:
    """RoPE pre-RoPE chunk keys at the given absolute frame times.

    k: [..., F, T, Dh]; times: [F] int32 (traced ok) -> same shape.
    """
    gh, gw = spec.grid
    cos, sin = rope.grid_tables(times, jnp.arange(gh), jnp.arange(gw), spec.head_dim, spec.theta)
    f, t = k.shape[-3], k.shape[-2]
    cos, sin = cos.reshape(f, t, -1), sin.reshape(f, t, -1)
    return rope.apply_rope(k, cos, sin)


def write_entries(state: CacheState, k: jax.Array, v: jax.Array, slots: jax.Array, times: jax.Array,
                  layer=None) -> CacheState:
    """Write entries of n tokens into logical slots.

    k, v: [L, B, H, E, n, Dh] (or [B, H, E, n, Dh] with `layer`), keys post-RoPE; slots:
    [L, H, E] (or [H, E]) int32 targets, >= S to skip (targets distinct per head); times: same
    shape as slots, recorded as slot_time. An entry takes ceil(n / Tp) pages from its slot's
    first page. `layer` (may be traced) writes one layer's slots.
    """
    tp = state.k.shape[2]
    n = k.shape[-2]
    span = entry_span(n, tp)
    if layer is None:
        slot_page, vals = state.slot_page, lambda a: jnp.moveaxis(a, 1, 0)
    else:
        slot_page, vals = state.slot_page[layer], lambda a: a
    s = slot_page.shape[-1]
    skip = slots >= s
    first = jnp.take_along_axis(slot_page, jnp.minimum(slots, s - 1), axis=-1)
    first = jnp.where(skip, state.k.shape[1], first)  # past the pool: the write is dropped
    pages = first[..., None] + jnp.arange(span)  # [..., H, E, span]

    def paged(a):  # [..., n, Dh] -> [B, ..., span, Tp, Dh]
        a = jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, span * tp - n), (0, 0)])
        return vals(a.reshape(a.shape[:-2] + (span, tp, a.shape[-1])))

    if state.k_scale.shape[1]:  # 8-bit pages: values and their per-token scales
        (k, k_scale), (v, v_scale) = quantize(paged(k), state.k.dtype), quantize(paged(v), state.v.dtype)
        state = state._replace(k_scale=state.k_scale.at[:, pages].set(k_scale, mode="drop"),
                               v_scale=state.v_scale.at[:, pages].set(v_scale, mode="drop"))
    else:
        k, v = paged(k).astype(state.k.dtype), paged(v).astype(state.v.dtype)
    new_k = state.k.at[:, pages].set(k, mode="drop")
    new_v = state.v.at[:, pages].set(v, mode="drop")
    page_len = state.page_len.at[first].set(n, mode="drop")
    heads = jnp.arange(slots.shape[-2])[:, None]
    if layer is None:
        at = state.slot_time.at[jnp.arange(slots.shape[0])[:, None, None], heads[None], slots]
    else:
        at = state.slot_time.at[layer, heads, slots]
    slot_time = at.set(times, mode="drop")
    return state._replace(k=new_k, v=new_v, page_len=page_len, slot_time=slot_time)


def entry_means(state: CacheState, tokens_per_frame: int) -> jax.Array:
    """Mean key of every logical slot's entry: [B, L, H, S, Dh] float32 (empty slots: 0)."""
    k = dequantize(state.k, state.pool().k_scale)
    span = entry_span(tokens_per_frame, k.shape[2])
    page_sum = k.sum(2)  # [B, NP, Dh]; unwritten token rows are zero
    pages = state.slot_page[..., None] + jnp.arange(span)  # [L, H, S, span]
    total = jnp.take(page_sum, pages, axis=1, mode="clip").sum(-2)
    length = jnp.take(state.page_len, state.slot_page, mode="clip")
    return jnp.where((state.slot_time >= 0)[None, ..., None], total / length[None, ..., None], 0.0)
