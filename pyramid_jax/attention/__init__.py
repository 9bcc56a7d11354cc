"""Ragged paged attention backends and the plan structures they consume.

The cache is one pool of pages of Tp tokens. A cached *entry* (a latent frame, or a pooled
block of a frame) starts at a page and holds `page_len[page]` tokens; a frame longer than Tp
fills ceil(T / Tp) consecutive pages. A plan lists, per (query frame, head), the entries it
attends by their first page.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pyramid_jax import sharding


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
    """

    k: jax.Array
    v: jax.Array
    page_len: jax.Array | None = None


def entry_span(tokens_per_frame: int, page_tokens: int) -> int:
    """Pages one frame fills."""
    return -(-tokens_per_frame // page_tokens)


BACKENDS = ("reference", "pallas")


PALLAS_PLATFORMS = ("tpu", "gpu", "cpu")


def check_backend(name: str, platform: str | None = None) -> str:
    """Validate attention.backend (and, given a platform, that it runs there)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention.backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "pallas" and platform is not None and platform not in PALLAS_PLATFORMS:
        raise ValueError(f"attention.backend=pallas has no lowering for platform {platform!r} (it runs on "
                         f"{', '.join(PALLAS_PLATFORMS)}); use attention.backend=reference")
    return name


def paged_attention_fn(name: str):
    """The paged attention function of a backend (same contract as reference.paged_attention).

    pallas runs as Mosaic on TPU, through Triton on GPU and interpreted on CPU (the TPU kernel:
    for tests, not for speed). Under a mesh (`jax.set_mesh`) the kernel runs per device on its
    batch rows, heads and their pages (`shard_map`); everything around it is left to the
    compiler.
    """
    from pyramid_jax.attention import reference

    if name == "reference":
        kernel = reference.paged_attention
    else:
        platform = jax.default_backend()
        check_backend(name, platform)
        if platform == "gpu":
            from pyramid_jax.attention import pallas_triton

            kernel = pallas_triton.paged_attention
        else:
            from pyramid_jax.attention import pallas

            kernel = functools.partial(pallas.paged_attention, interpret=platform != "tpu")
    return functools.partial(_on_mesh, kernel)


def _on_mesh(kernel, q, k, v, pool_k, pool_v, slot, time_shift, valid, *, theta, page_len=None):
    """kernel(...), split over the active mesh's `data` (batch) and `model` (heads; pages
    laid out per head group) axes. The plan's page numbers are global; each device reads its
    own block of the pool."""
    mesh = sharding.active_mesh()
    if mesh is None:
        return kernel(q, k, v, pool_k, pool_v, slot, time_shift, valid, theta=theta, page_len=page_len)
    from jax.sharding import PartitionSpec as P

    data, model = sharding.DATA, sharding.MODEL

    def local(q, k, v, pool_k, pool_v, slot, time_shift, valid, page_len):
        first_page = jax.lax.axis_index(model) * pool_k.shape[1]
        return kernel(q, k, v, pool_k, pool_v, slot - first_page, time_shift, valid, theta=theta,
                      page_len=page_len)

    heads, plan = P(data, None, None, model), P(None, model)
    specs = (heads, P(data, None, model), P(data, None, model), P(data, model), P(data, model), plan, plan, plan,
             P() if page_len is None else P(model))
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=heads, check_vma=False)(
        q, k, v, pool_k, pool_v, slot, time_shift, valid, page_len)


def entry_lengths(page_len, slot, tokens_per_frame: int):
    """Tokens of each planned entry: page_len[slot], or a whole frame when page_len is None."""
    if page_len is None:
        return jnp.full(slot.shape, tokens_per_frame, jnp.int32)
    return jnp.take(page_len.astype(jnp.int32), slot, mode="clip")
