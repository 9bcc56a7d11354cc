"""The plan structures attention consumes: which cache entries each (query frame, head)
attends (PagePlan) and the cached keys/values (KVPool).

The cache is one pool of pages of Tp tokens. A cached *entry* (a latent frame, or a pooled
block of a frame) starts at a page and holds `page_len[page]` tokens; a frame longer than Tp
fills ceil(T / Tp) consecutive pages. A plan lists, per (query frame, head), the entries it
attends by their first page.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PagePlan(NamedTuple):
    """Which cached entries each (layer, query frame, head) attends, for one chunk.

    frame0: [] int32, absolute latent-frame index of the chunk's first frame (RoPE time).
    slot: [L, C, H, P] int32, first pool page of each attended entry, per query frame; or
        [L, 1, H, P]: one row every query frame of the chunk shares (backends may then read
        the entries once for all of them).
    time_shift: like slot, int32 frames the entry's RoPE time is moved by; or None: no entry
        moves.
    valid: like slot, bool, whether the entry is attended.
    own_shift: [L, H, F] int32 or None: frames each of the chunk's own keys is moved by per
        head (Pyramid Forcing attends sink frames at a shared time, the chunk's own included);
        None means the chunk's keys stay at their own times.
    One layer's plan (`layer_plan`) has the same fields without the leading L.
    """

    frame0: jax.Array
    slot: jax.Array
    time_shift: jax.Array
    valid: jax.Array
    own_shift: jax.Array | None = None


def layer_plan(plan: PagePlan, layer) -> PagePlan:
    """The plan of one layer (layer may be traced)."""
    pick = lambda a: None if a is None else a[layer]
    return PagePlan(plan.frame0, pick(plan.slot), pick(plan.time_shift), pick(plan.valid), pick(plan.own_shift))


def per_frame(slot, time_shift, valid, frames: int):
    """One layer's plan as one row per query frame ([C, H, P] each, time shifts as zeros),
    for backends that walk the plan frame by frame."""
    shape = (frames,) + slot.shape[1:]
    shift = jnp.zeros(shape, jnp.int32) if time_shift is None else jnp.broadcast_to(time_shift, shape)
    return jnp.broadcast_to(slot, shape), shift, jnp.broadcast_to(valid, shape)


class KVPool(NamedTuple):
    """The cached keys/values the model reads (the cache package owns the rest).

    k, v: [B, NP, Tp, Dh] pages of Tp tokens, keys post-RoPE at their stored time.
    page_len: [NP] int32, tokens of the entry that starts at each page (it continues into the
        following pages when longer than Tp), or None when every entry is one frame of T tokens.
    k_scale, v_scale: [B, NP, Tp, 1] float32 per-token scales of 8-bit pages (k = k * k_scale),
        or None when the pages hold the values themselves.
    """

    k: jax.Array
    v: jax.Array
    page_len: jax.Array | None = None
    k_scale: jax.Array | None = None
    v_scale: jax.Array | None = None


def entry_span(tokens_per_frame: int, page_tokens: int) -> int:
    """Pages one frame fills."""
    return -(-tokens_per_frame // page_tokens)


def entry_lengths(page_len, slot, tokens_per_frame: int):
    """Tokens of each planned entry: page_len[slot], or a whole frame when page_len is None."""
    if page_len is None:
        return jnp.full(slot.shape, tokens_per_frame, jnp.int32)
    return jnp.take(page_len.astype(jnp.int32), slot, mode="clip")


def in_use_only(kernel, buckets: int = 4):
    """`kernel` (the paged-attention contract) over only the plan entries in use.

    A plan has room for every entry a (query frame, head) may attend, but early in a video
    most are empty. The entries in use move to the front of each row (softmax does not care
    about order) and the plan is cut to the smallest of buckets + 1 static sizes (0, P/buckets,
    ..., P) that holds the longest row, picked at run time: a few variants compiled once, and
    the work grows with the video instead of starting at the full window. For backends that
    read every planned entry (the reference); the kernels skip unused pages by themselves.
    """
    def run(q, k, v, pool_k, pool_v, slot, time_shift, valid, **kw):
        p = slot.shape[-1]
        if p == 0:
            return kernel(q, k, v, pool_k, pool_v, slot, time_shift, valid, **kw)
        order = jnp.argsort(~valid, axis=-1, stable=True)
        first = lambda a: None if a is None else jnp.take_along_axis(a, order, axis=-1)
        slot, time_shift, valid = first(slot), first(time_shift), first(valid)
        sizes = sorted({-(-p * i // buckets) for i in range(buckets + 1)})
        cut = lambda n: lambda: kernel(q, k, v, pool_k, pool_v, slot[..., :n],
                                       None if time_shift is None else time_shift[..., :n], valid[..., :n], **kw)
        used = valid.sum(-1).max()
        return jax.lax.switch(jnp.searchsorted(jnp.asarray(sizes), used), [cut(n) for n in sizes])

    return run
