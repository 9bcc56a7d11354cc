"""Ragged paged attention as one Pallas kernel (TPU Mosaic; interpreted on CPU for tests).

Grid (B, H, C, q blocks, pages + 1). For each batch row, head and query frame the kernel
walks only the valid pages of that (frame, head)'s entries (page numbers, lengths and count
arrive by scalar prefetch, so each page is DMA'd straight from the pool), then the chunk's
own K/V, with an online softmax in fp32. A page's RoPE time shift s is applied to the frame part of q instead of the
keys: q . R(s) k = (R(-s) q) . k, as q * cos + (q @ swap) * sin with per-page tables.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pyramid_jax.attention.plan import entry_lengths, entry_span, per_frame
from pyramid_jax import rope

_NEG = -1e30


def _round_up(x, m):
    return (x + m - 1) // m * m


def _swap_matrix(dh: int) -> np.ndarray:
    """[Dh, Dh] with (x @ P)[2i] = -x[2i+1], (x @ P)[2i+1] = x[2i] (interleaved pairs)."""
    m = np.zeros((dh, dh), np.float32)
    i = np.arange(0, dh, 2)
    m[i + 1, i] = -1.0
    m[i, i + 1] = 1.0
    return m


def _unshift_tables(shift, dh, theta):
    """cos, sin [..., Dh] rotating the frame part of q by -shift (identity elsewhere)."""
    d_t, _, _ = rope.axis_dims(dh)
    ang = rope.angles(-shift.astype(jnp.float32), rope.axis_frequencies(d_t, theta))  # [..., d_t/2]
    ang = jnp.repeat(ang, 2, axis=-1)
    pad = [(0, 0)] * (ang.ndim - 1) + [(0, dh - d_t)]
    return jnp.pad(jnp.cos(ang), pad, constant_values=1.0), jnp.pad(jnp.sin(ang), pad)


def _kernel(slots_ref, count_ref, len_ref,  # scalar prefetch
            q_ref, pk_ref, pv_ref, *refs,  # inputs [ks_ref, vs_ref] ok_ref, ov_ref, cos_ref, sin_ref, swap_ref
            num_pages, n_own, block_kv, scale, scaled):
    ks_ref, vs_ref = refs[:2] if scaled else (None, None)
    (ok_ref, ov_ref, cos_ref, sin_ref, swap_ref,  # inputs
     o_ref,  # output
     m_sc, l_sc, acc_sc) = refs[2:] if scaled else refs  # scratch
    hi, ci, j = pl.program_id(1), pl.program_id(2), pl.program_id(4)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, _NEG, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    def attend(q, k_ref, v_ref, length, limit, ks_ref=None, vs_ref=None):
        """Online-softmax update over k_ref/v_ref rows [0, limit) (static), valid below length;
        8-bit rows are dequantized on load by their scales ks_ref/vs_ref [rows, 1]."""
        load = lambda ref, sc, rows: ref[rows, :] if sc is None else (
            ref[rows, :].astype(jnp.float32) * sc[rows, :]).astype(q_ref.dtype)
        for start in range(0, limit, block_kv):
            size = min(block_kv, limit - start)
            k = load(k_ref, ks_ref, pl.ds(start, size))
            v = load(v_ref, vs_ref, pl.ds(start, size))
            s = jax.lax.dot_general(q.astype(k.dtype), k, (((1,), (1,)), ((), ())),
                                    preferred_element_type=jnp.float32) * scale
            ok = (start + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)) < length
            s = jnp.where(ok, s, _NEG)
            m_prev = m_sc[...]
            m_new = jnp.maximum(m_prev, s.max(-1, keepdims=True))
            p = jnp.where(ok, jnp.exp(s - m_new), 0.0)
            alpha = jnp.exp(m_prev - m_new)
            l_sc[...] = alpha * l_sc[...] + p.sum(-1, keepdims=True)
            acc_sc[...] = alpha * acc_sc[...] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
            m_sc[...] = m_new

    q = q_ref[...].astype(jnp.float32)

    if num_pages:
        @pl.when(j < count_ref[ci, hi])
        def _page():
            qr = q * cos_ref[0] + jnp.dot(q, swap_ref[...], preferred_element_type=jnp.float32) * sin_ref[0]
            attend(qr, pk_ref, pv_ref, len_ref[ci, hi, j], pk_ref.shape[0], ks_ref, vs_ref)

    @pl.when(j == num_pages)
    def _own_and_finish():
        attend(q, ok_ref, ov_ref, n_own, ok_ref.shape[0])
        o_ref[...] = (acc_sc[...] / l_sc[...]).astype(o_ref.dtype)


class Prepared(NamedTuple):
    """Kernel operands shared by the TPU and Triton kernels (heads-major, q padded to blocks).

    q: [B, H, C, Tq, Dh]; k, v: [B, H, Np, Dh]; slots: [C, H, P'] first pool page of each
    piece, valid pieces first; count: [C, H] valid pieces; length: [C, H, P'] tokens of each
    piece; cos, sin: [C, H, P', 1, Dh] q's per-piece unshift.
    """

    q: jax.Array
    k: jax.Array
    v: jax.Array
    slots: jax.Array
    count: jax.Array
    length: jax.Array
    cos: jax.Array
    sin: jax.Array
    block_q: int


def prepare(q, k, v, pool_k, slot, time_shift, valid, *, theta, page_len, block_q, kv_multiple,
            split_pages):
    """Reorder the plan (valid pieces first) and lay q/k/v out heads-major for a kernel.

    A piece is a planned entry (split_pages=False: the kernel walks its tokens from its first
    page on) or one page of an entry (split_pages=True: one kernel step per page of Tp tokens).
    q is padded to a multiple of block_q tokens, k/v to a multiple of kv_multiple.
    """
    c, h = slot.shape[:2]
    t, dh = q.shape[2], q.shape[-1]
    tp = pool_k.shape[2]
    n = k.shape[1]
    bq = block_q
    t_pad = _round_up(t, bq)
    n_pad = _round_up(n, kv_multiple)

    length = entry_lengths(page_len, slot, t)
    if split_pages:  # entry -> its pages: page i holds tokens [i * Tp, (i + 1) * Tp) of it
        span = entry_span(t, tp)
        i = jnp.arange(span)
        piece_len = jnp.clip(length[..., None] - i * tp, 0, tp)
        n_entries = slot.shape[-1]
        pieces = lambda a: jnp.broadcast_to(a, (c, h, n_entries, span)).reshape(c, h, -1)
        slot, time_shift = pieces(slot[..., None] + i), pieces(time_shift[..., None])
        valid, length = pieces(valid[..., None] & (piece_len > 0)), pieces(piece_len)
    # Valid pieces first, in any order: softmax is a sum over pieces.
    order = jnp.argsort(~valid, axis=-1, stable=True)
    take = lambda a: jnp.take_along_axis(a, order, -1).astype(jnp.int32)
    slots_c, shift_c, len_c = take(slot), take(time_shift), take(length)
    count = valid.sum(-1).astype(jnp.int32)
    if slot.shape[-1] == 0:  # keep shapes non-empty; count is 0 so nothing is read
        slots_c = shift_c = len_c = jnp.zeros((c, h, 1), jnp.int32)
    # Steps past the count repeat the last valid page: no out-of-range DMA, and an unchanged
    # block index lets the pipeline skip the copy.
    last_valid = jnp.take_along_axis(slots_c, jnp.maximum(count - 1, 0)[..., None], -1)
    pos = jnp.arange(slots_c.shape[-1])
    slots_c = jnp.clip(jnp.where(pos < count[..., None], slots_c, last_valid), 0, pool_k.shape[1] - 1)
    cos, sin = _unshift_tables(shift_c, dh, theta)  # [C, H, P', Dh]

    qh = jnp.pad(q.transpose(0, 3, 1, 2, 4), [(0, 0)] * 3 + [(0, t_pad - t), (0, 0)])
    kh = jnp.pad(k.transpose(0, 2, 1, 3), [(0, 0)] * 2 + [(0, n_pad - n), (0, 0)])
    vh = jnp.pad(v.transpose(0, 2, 1, 3), [(0, 0)] * 2 + [(0, n_pad - n), (0, 0)])
    return Prepared(qh, kh, vh, slots_c, count, len_c, cos[:, :, :, None], sin[:, :, :, None], bq)


def paged_attention(q, k, v, pool_k, pool_v, slot, time_shift, valid, *, theta,
                    page_len=None, k_scale=None, v_scale=None, interpret=True, block_q=256, block_kv=512):
    """Same contract as `reference.paged_attention`.

    q: [B, C, T, H, Dh]; k, v: [B, N, H, Dh]; pool_k/v: [B, NP, Tp, Dh];
    slot/time_shift/valid: [C, H, P], or [1, H, P] shared by every frame (time_shift may be None);
    page_len: [NP] or None; k_scale/v_scale: [B, NP, Tp, 1]
    scales of 8-bit pages or None. Returns [B, C, T, H, Dh].
    interpret: True (CPU), a pltpu.InterpretParams (TPU semantics on CPU) or False (Mosaic).
    Grid (B, H, C, q blocks, pages + 1): one step per valid page of the (frame, head)'s entries,
    DMA'd straight from the pool by its scalar-prefetched page number.
    """
    b, c, t, h, dh = q.shape
    slot, time_shift, valid = per_frame(slot, time_shift, valid, c)  # the kernel walks frames
    tp = pool_k.shape[2]
    n = k.shape[1]
    prep = prepare(q, k, v, pool_k, slot, time_shift, valid, theta=theta, page_len=page_len,
                   block_q=min(block_q, _round_up(t, 8)), kv_multiple=8, split_pages=True)
    qh, kh, vh, slots_c, count, lens, cos, sin, bq = prep
    n_pad, t_pad = kh.shape[2], qh.shape[3]
    pages = slots_c.shape[-1]
    p = pages if slot.shape[-1] else 0
    last = pages - 1

    scaled = k_scale is not None
    page_map = lambda bi, hi, ci, qi, j, sl, cnt, ln: (bi, sl[ci, hi, jnp.minimum(j, last)], 0, 0)
    table_map = lambda bi, hi, ci, qi, j, sl, cnt, ln: (ci, hi, jnp.minimum(j, last), 0, 0)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(b, h, c, t_pad // bq, p + 1),
        in_specs=[
            pl.BlockSpec((None, None, None, bq, dh), lambda bi, hi, ci, qi, j, *_: (bi, hi, ci, qi, 0)),
            pl.BlockSpec((None, None, tp, dh), page_map),
            pl.BlockSpec((None, None, tp, dh), page_map),
            *([pl.BlockSpec((None, None, tp, 1), page_map)] * (2 if scaled else 0)),
            pl.BlockSpec((None, None, n_pad, dh), lambda bi, hi, ci, qi, j, *_: (bi, hi, 0, 0)),
            pl.BlockSpec((None, None, n_pad, dh), lambda bi, hi, ci, qi, j, *_: (bi, hi, 0, 0)),
            pl.BlockSpec((None, None, None, 1, dh), table_map),
            pl.BlockSpec((None, None, None, 1, dh), table_map),
            pl.BlockSpec((dh, dh), lambda *_: (0, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, None, bq, dh), lambda bi, hi, ci, qi, j, *_: (bi, hi, ci, qi, 0)),
        scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                        pltpu.VMEM((bq, dh), jnp.float32)],
    )
    kernel = functools.partial(_kernel, num_pages=p, n_own=n, block_kv=block_kv, scale=1.0 / math.sqrt(dh),
                               scaled=scaled)
    out = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(qh.shape, q.dtype),
        interpret=interpret,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "parallel", "arbitrary")),
    )(slots_c, count, lens, qh, pool_k, pool_v, *((k_scale, v_scale) if scaled else ()), kh, vh, cos, sin,
      jnp.asarray(_swap_matrix(dh)))
    return out[:, :, :, :t].transpose(0, 2, 3, 1, 4)
