"""Reference ragged attention: gather the planned pages, then plain softmax attention.

This backend is the oracle every other backend is tested against. It is written for
clarity: it materialises the gathered keys of every (query frame, head). `mha` is the
textbook softmax(q k^T / sqrt(d)) v with fp32 logits (checked against
jax.nn.dot_product_attention in the tests), laid out head-major because that runs
~1.7x faster than the token-major layout on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pyramid_jax.models import rope


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


def paged_attention(q, k, v, pool_k, pool_v, slot, time_shift, valid, *, theta=10000.0,
                    page_len=None):
    """Attention of each query frame over its planned cache pages plus the chunk's tokens.

    q: [B, C, T, H, Dh] queries (post-RoPE), C query frames of T tokens.
    k, v: [B, N, H, Dh] the chunk's own keys (post-RoPE) and values; always attended.
    pool_k, pool_v: [B, H, S, T_f, Dh] cached frame slots (keys post-RoPE at their stored time).
    slot, time_shift, valid: [C, H, P] the plan for this layer: which slot each page reads,
        how many frames its RoPE time moves, and whether it is used.
    page_len: optional [H, S] int, number of valid tokens in each slot (default: all T_f).
    Returns [B, C, T, H, Dh].
    """
    b, c, t, h, dh = q.shape
    t_f = pool_k.shape[3]
    p = slot.shape[-1]
    heads = jnp.arange(h)[None, :, None]
    # [B, C, H, P, T_f, Dh]: page p of (frame c, head h) reads pool[:, h, slot[c, h, p]]
    pk = rope.shift_time(pool_k[:, heads, slot], time_shift[None, :, :, :, None], dh, theta)
    pv = pool_v[:, heads, slot]
    own_k = jnp.broadcast_to(k.transpose(0, 2, 1, 3)[:, None], (b, c, h, k.shape[1], dh))
    own_v = jnp.broadcast_to(v.transpose(0, 2, 1, 3)[:, None], (b, c, h, v.shape[1], dh))
    kk = jnp.concatenate([pk.reshape(b, c, h, p * t_f, dh), own_k], axis=3)  # [B, C, H, S_all, Dh]
    vv = jnp.concatenate([pv.reshape(b, c, h, p * t_f, dh), own_v], axis=3)

    page_ok = jnp.broadcast_to(valid[..., None], valid.shape + (t_f,))  # [C, H, P, T_f]
    if page_len is not None:
        page_ok = page_ok & (jnp.arange(t_f) < page_len[heads, slot][..., None])
    mask = jnp.concatenate([page_ok.reshape(c, h, p * t_f), jnp.ones((c, h, k.shape[1]), bool)], -1)

    out = mha(q.transpose(0, 1, 3, 2, 4), kk, vv, mask[None, :, :, None, :])  # [B, C, H, T, Dh]
    return out.transpose(0, 1, 3, 2, 4)
