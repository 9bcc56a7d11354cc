"""Reference ragged attention: gather the planned pages, then jax.nn.dot_product_attention.

This backend is the oracle every other backend is tested against. It is written for
clarity, not speed: it materialises the gathered keys of every (query frame, head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pyramid_jax.models import rope


_NEG = -1e30  # finite, so a fully masked row can never produce NaN


def mha(q, k, v, mask=None):
    """Softmax attention in head-major layout, fp32 logits and normaliser.

    q: [B, H, T, Dh]; k, v: [B, H, S, Dh]; mask: broadcastable to [B, H, T, S] (True = keep).
    Returns [B, H, T, Dh] in q.dtype. (Head-major einsums run ~1.7x faster than
    jax.nn.dot_product_attention's token-major layout on CPU.)
    """
    scale = q.shape[-1] ** -0.5
    s = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        s = jnp.where(mask, s, _NEG)
    m = s.max(-1, keepdims=True)
    p = jnp.exp(s - m)
    den = p.sum(-1, keepdims=True)
    o = jnp.einsum("bhts,bhsd->bhtd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
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
    s, t_f = pool_k.shape[2], pool_k.shape[3]
    p = slot.shape[-1]
    heads = jnp.arange(h)[None, :, None]
    # [B, C, H, P, T_f, Dh]: page p of (frame c, head h) reads pool[:, h, slot[c, h, p]]
    pk = pool_k[:, heads, slot]
    pv = pool_v[:, heads, slot]
    pk = rope.shift_time(pk, time_shift[None, :, :, :, None], dh, theta)
    # -> [B, C, P * T_f, H, Dh]
    pk = jnp.moveaxis(pk, 2, 4).reshape(b, c, p * t_f, h, dh)
    pv = jnp.moveaxis(pv, 2, 4).reshape(b, c, p * t_f, h, dh)
    kk = jnp.concatenate([pk, jnp.broadcast_to(k[:, None], (b, c) + k.shape[1:])], axis=2)
    vv = jnp.concatenate([pv, jnp.broadcast_to(v[:, None], (b, c) + v.shape[1:])], axis=2)

    page_ok = jnp.broadcast_to(valid[..., None], valid.shape + (t_f,))  # [C, H, P, T_f]
    if page_len is not None:
        page_ok = page_ok & (jnp.arange(t_f) < page_len[heads, slot][..., None])
    page_ok = jnp.moveaxis(page_ok, 1, 0).reshape(h, c, p * t_f)  # [H, C, P*T_f]
    mask = jnp.concatenate([page_ok, jnp.ones((h, c, k.shape[1]), bool)], axis=-1)
    mask = jnp.broadcast_to(jnp.moveaxis(mask, 1, 0)[None, :, :, None, :],
                            (b, c, h, t, mask.shape[-1]))

    out = jax.nn.dot_product_attention(
        q.reshape(b * c, t, h, dh),
        kk.reshape(b * c, -1, h, dh),
        vv.reshape(b * c, -1, h, dh),
        mask=mask.reshape(b * c, h, t, -1),
    )
    return out.reshape(b, c, t, h, dh)
