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
    slot: [L, C, H, P] int32, first pool page of each attended entry.
    time_shift: [L, C, H, P] int32, frames the entry's RoPE time is moved by.
    valid: [L, C, H, P] bool, whether the entry is attended.
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
