"""Reference ragged attention: gather the planned pages, then plain softmax attention.

This backend is the oracle every other backend is tested against. It is written for
clarity: it materialises the gathered keys of every (query frame, head), each entry read as
the whole frame's worth of pages from its first page and masked to its length. `mha` is the
textbook softmax(q k^T / sqrt(d)) v with fp32 logits (checked against
jax.nn.dot_product_attention in the tests), laid out head-major because that runs
~1.7x faster than the token-major layout on CPU.
"""

from __future__ import annotations

import jax.numpy as jnp

from pyramid_jax.attention.plan import entry_lengths, entry_span
from pyramid_jax import rope


_NEG = -1e30  # finite, so a fully masked row can never produce NaN


def mha(q, k, v, mask=None):
    """Softmax attention in head-major layout, fp32 logits and normaliser.

    q: [..., T, Dh]; k, v: [..., S, Dh] (leading dims e.g. [B, H]); mask: broadcastable to
    [..., T, S] (True = keep). Returns [..., T, Dh] in q.dtype.
    """
    scale = q.shape[-1] ** -0.5
    s = jnp.einsum("...td,...sd->...ts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        s = jnp.where(mask, s, _NEG)
    m = s.max(-1, keepdims=True)
    p = jnp.exp(s - m)
    den = p.sum(-1, keepdims=True)
    o = jnp.einsum("...ts,...sd->...td", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (o / den).astype(q.dtype)


def chunk_attention(q, k, v, mask=None):
    """Bidirectional attention over the chunk's own tokens (optionally masked).

    q, k, v: [B, N, H, Dh] -> [B, N, H, Dh].
    """
    t = lambda a: a.transpose(0, 2, 1, 3)
    return t(mha(t(q), t(k), t(v), mask))


def entry_tokens(pool, slot, span: int):
    """Tokens of planned entries, each read as `span` pages from its first page.

    pool: [B, NP, Tp, Dh]; slot: [...] int32 first pages -> [B, ..., span * Tp, Dh]. Reads past
    the pool's end are clamped (callers mask them by the entry's length).
    """
    b, n_pages, tp, dh = pool.shape
    flat = pool.reshape(b, n_pages * tp, dh)
    idx = slot[..., None] * tp + jnp.arange(span * tp)
    return jnp.take(flat, idx, axis=1, mode="clip")


def paged_attention(q, k, v, pool_k, pool_v, slot, time_shift, valid, *, theta,
                    page_len=None, k_scale=None, v_scale=None):
    """Attention of each query frame over its planned cache entries plus the chunk's tokens.

    q: [B, C, T, H, Dh] queries (post-RoPE), C query frames of T tokens.
    k, v: [B, N, H, Dh] the chunk's own keys (post-RoPE) and values; always attended.
    pool_k, pool_v: [B, NP, Tp, Dh] cache pages (keys post-RoPE at their stored time).
    slot, time_shift, valid: [C, H, P] the plan for this layer: the first page of each entry,
        how many frames its RoPE time moves, and whether it is used; or [1, H, P], one plan
        that every query frame shares (read once for all of them). time_shift None: no entry
        moves.
    page_len: optional [NP] int, tokens of the entry starting at each page (default: a frame, T).
    k_scale, v_scale: optional [B, NP, Tp, 1] per-token scales of 8-bit pages (dequantized on load).
    Returns [B, C, T, H, Dh].
    """
    b, c_all, t, h, dh = q.shape
    c, p = slot.shape[0], slot.shape[-1]
    q = q.reshape(b, c, c_all // c * t, h, dh)  # the query frames of each plan row together
    span = entry_span(t, pool_k.shape[2])
    n_e = span * pool_k.shape[2]  # tokens read per entry
    # [B, C, H, P, n_e, Dh]: entry p of (plan row c, head h) starts at page slot[c, h, p]
    load = lambda pool, scale: entry_tokens(pool, slot, span) if scale is None else (
        entry_tokens(pool, slot, span).astype(jnp.float32) * entry_tokens(scale, slot, span)).astype(q.dtype)
    pk = load(pool_k, k_scale)
    if time_shift is not None:
        pk = rope.shift_time(pk, time_shift[None, :, :, :, None], dh, theta)
    pv = load(pool_v, v_scale)
    own_k = jnp.broadcast_to(k.transpose(0, 2, 1, 3)[:, None], (b, c, h, k.shape[1], dh))
    own_v = jnp.broadcast_to(v.transpose(0, 2, 1, 3)[:, None], (b, c, h, v.shape[1], dh))
    kk = jnp.concatenate([pk.reshape(b, c, h, p * n_e, dh), own_k], axis=3)  # [B, C, H, S_all, Dh]
    vv = jnp.concatenate([pv.reshape(b, c, h, p * n_e, dh), own_v], axis=3)

    length = entry_lengths(page_len, slot, t)  # [C, H, P]
    page_ok = valid[..., None] & (jnp.arange(n_e) < length[..., None])  # [C, H, P, n_e]
    mask = jnp.concatenate([page_ok.reshape(c, h, p * n_e), jnp.ones((c, h, k.shape[1]), bool)], -1)

    out = mha(q.transpose(0, 1, 3, 2, 4), kk, vv, mask[None, :, :, None, :])  # [B, C, H, T, Dh]
    return out.transpose(0, 1, 3, 2, 4).reshape(b, c_all, t, h, dh)
