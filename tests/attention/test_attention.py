"""Reference attention backend: mha equals jax.nn.dot_product_attention; paged attention
equals a per-(query frame, head) loop over explicitly re-rotated keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pyramid_jax.attention import reference as ref
from pyramid_jax import rope


def test_mha_equals_dot_product_attention():
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (2, 7, 3, 16))
    k = jax.random.normal(ks[1], (2, 11, 3, 16))
    v = jax.random.normal(ks[2], (2, 11, 3, 16))
    mask = jax.random.bernoulli(ks[3], 0.7, (2, 3, 7, 11)).at[..., 0].set(True)
    want = jax.nn.dot_product_attention(q, k, v, mask=mask)
    got = ref.chunk_attention(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def _softmax_attend(q, k, v):
    s = q @ k.T / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def test_paged_attention_matches_loop():
    """Entries of up to a frame (6 tokens) read from 4-token pages: an entry runs on into the
    pages after its first one."""
    rng = np.random.default_rng(0)
    b, c, t, h, dh, n_pages, tp, p_ = 2, 3, 6, 2, 32, 10, 4, 5
    q = rng.standard_normal((b, c, t, h, dh)).astype(np.float32)
    k = rng.standard_normal((b, c * t, h, dh)).astype(np.float32)
    v = rng.standard_normal((b, c * t, h, dh)).astype(np.float32)
    pool_k = rng.standard_normal((b, n_pages, tp, dh)).astype(np.float32)
    pool_v = rng.standard_normal((b, n_pages, tp, dh)).astype(np.float32)
    slot = rng.integers(0, n_pages - 1, (c, h, p_)).astype(np.int32)
    shift = rng.integers(-30, 30, (c, h, p_)).astype(np.int32)
    valid = rng.random((c, h, p_)) < 0.6
    valid[0, 0] = False  # a (frame, head) with no valid entry
    page_len = rng.integers(1, t + 1, (n_pages,)).astype(np.int32)
    got = np.asarray(ref.paged_attention(*map(jnp.asarray, (q, k, v, pool_k, pool_v, slot, shift, valid)),
                                         page_len=jnp.asarray(page_len), theta=rope.WAN_THETA))
    flat_k, flat_v = pool_k.reshape(b, -1, dh), pool_v.reshape(b, -1, dh)
    for bi in range(b):
        for ci in range(c):
            for hi in range(h):
                keys, vals = [], []
                for pi in range(p_):
                    if not valid[ci, hi, pi]:
                        continue
                    start = slot[ci, hi, pi] * tp
                    stop = start + page_len[slot[ci, hi, pi]]
                    keys.append(np.asarray(rope.shift_time(jnp.asarray(flat_k[bi, start:stop]),
                                                           jnp.int32(shift[ci, hi, pi]), dh, rope.WAN_THETA)))
                    vals.append(flat_v[bi, start:stop])
                keys.append(k[bi, :, hi])
                vals.append(v[bi, :, hi])
                want = _softmax_attend(q[bi, ci, :, hi], np.concatenate(keys), np.concatenate(vals))
                np.testing.assert_allclose(got[bi, ci, :, hi], want, rtol=1e-4, atol=1e-5)
