"""Ragged paged attention as one Pallas kernel lowered through Triton (GPU; interpreted on CPU).

Grid (B, H, C, q blocks). Triton has no scalar prefetch, so each program reads its
(frame, head)'s entry count, first pages and lengths from the plan arrays itself and loops
over only the valid entries (a dynamic-trip `fori_loop`), and within an entry over the key
blocks that hold its tokens, read from the pool seen as one token array (an entry's pages
are consecutive); out-of-range rows are masked loads. The RoPE time shift goes on q as in the
TPU kernel (`pallas.py`): q_page = q * cos + (q @ swap) * sin, with q @ swap computed once.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pyramid_jax.attention.pallas import _NEG, _swap_matrix, prepare
from pyramid_jax.attention.plan import per_frame

# (block_q, block_kv, num_warps, num_stages), measured on an H100 (docs/benchmarks.md);
# fp32 tiles are halved to stay inside shared memory.
DEFAULT_TILING = (128, 128, 8, 3)
FP32_TILING = (64, 64, 4, 2)
_LOG2E = 1.4426950408889634


def _kernel(q_ref, pk_ref, pv_ref, *refs, n_own, page_tokens, block_kv, scale, precision, scaled):
    ks_ref, vs_ref = refs[:2] if scaled else (None, None)
    ok_ref, ov_ref, slots_ref, count_ref, len_ref, cos_ref, sin_ref, swap_ref, o_ref = refs[2:] if scaled else refs
    bi, hi, ci = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    dtype = q_ref.dtype  # what the dot products take (8-bit pages are dequantized to it)
    q = q_ref[...].astype(jnp.float32) * (scale * _LOG2E)  # [bq, Dh]; softmax in base 2
    dh = q.shape[-1]
    q_swap = jnp.dot(q, swap_ref[...], precision=jax.lax.Precision.HIGHEST)
    kv_rows = jax.lax.broadcasted_iota(jnp.int32, (block_kv, dh), 0)
    scale_rows = jax.lax.broadcasted_iota(jnp.int32, (block_kv, 1), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (q.shape[0], block_kv), 1)

    def update(carry, qc, k_ref, v_ref, lead, base, start, length, ks_ref=None, vs_ref=None):
        """Online-softmax step over rows base + [start, start + block_kv) of k_ref/v_ref[*lead],
        valid while start + row < length; 8-bit rows times their scales ks_ref/vs_ref. (One
        indexer per load: the Triton lowering takes no nested views.)"""
        m, l, acc = carry
        row_ok = (start + kv_rows) < length
        rows = (*lead, pl.ds(base + start, block_kv), slice(None))

        def load(ref, sc):
            x = plgpu.load(ref.at[rows], mask=row_ok, other=0)
            if sc is None:
                return x
            s = plgpu.load(sc.at[rows], mask=(start + scale_rows) < length, other=0.0)
            return (x.astype(jnp.float32) * s).astype(dtype)

        k, v = load(k_ref, ks_ref), load(v_ref, vs_ref)
        s = jax.lax.dot_general(qc, k, (((1,), (1,)), ((), ())), precision=precision,
                                preferred_element_type=jnp.float32)
        s = jnp.where((start + cols) < length, s, _NEG)
        # Every visited block holds a valid key, so m_new is finite and masked p underflow to 0.
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp2(s - m_new[:, None])
        alpha = jnp.exp2(m - m_new)
        acc = alpha[:, None] * acc + jnp.dot(p.astype(v.dtype), v, precision=precision,
                                             preferred_element_type=jnp.float32)
        return m_new, alpha * l + p.sum(-1), acc

    def entry(j, carry):
        base = slots_ref[ci, hi, j] * page_tokens
        length = len_ref[ci, hi, j]
        qc = (q * cos_ref[ci, hi, j, :][None, :] + q_swap * sin_ref[ci, hi, j, :][None, :]).astype(
            dtype if scaled else pk_ref.dtype)
        body = lambda i, c: update(c, qc, pk_ref, pv_ref, (bi,), base, i * block_kv, length, ks_ref, vs_ref)
        return jax.lax.fori_loop(0, pl.cdiv(length, block_kv), body, carry)

    carry = (jnp.full((q.shape[0],), _NEG, jnp.float32), jnp.zeros((q.shape[0],), jnp.float32),
             jnp.zeros(q.shape, jnp.float32))
    carry = jax.lax.fori_loop(0, count_ref[ci, hi], entry, carry)
    qc = q.astype(ok_ref.dtype)
    own = lambda i, c: update(c, qc, ok_ref, ov_ref, (bi, hi), 0, i * block_kv, n_own)
    _, l, acc = jax.lax.fori_loop(0, pl.cdiv(n_own, block_kv), own, carry)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)


def paged_attention(q, k, v, pool_k, pool_v, slot, time_shift, valid, *, theta,
                    page_len=None, k_scale=None, v_scale=None, interpret=False, tiling=None):
    """Same contract as `reference.paged_attention`.

    q: [B, C, T, H, Dh]; k, v: [B, N, H, Dh]; pool_k/v: [B, NP, Tp, Dh];
    slot/time_shift/valid: [C, H, P], or [1, H, P] shared by every frame (time_shift may be None);
    page_len: [NP] or None; k_scale/v_scale: [B, NP, Tp, 1]
    scales of 8-bit pages or None. Returns [B, C, T, H, Dh].
    tiling: (block_q, block_kv, num_warps, num_stages); blocks are powers of two (Triton).
    """
    if tiling is None:
        tiling = FP32_TILING if jnp.dtype(q.dtype).itemsize > 2 else DEFAULT_TILING
    block_q, block_kv, num_warps, num_stages = tiling
    b, c, t, h, dh = q.shape
    slot, time_shift, valid = per_frame(slot, time_shift, valid, c)  # the kernel walks frames
    n = k.shape[1]
    prep = prepare(q, k, v, pool_k, slot, time_shift, valid, theta=theta, page_len=page_len,
                   block_q=max(16, min(block_q, pl.next_power_of_2(t))), kv_multiple=1, split_pages=False)
    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    scaled = k_scale is not None
    kernel = functools.partial(_kernel, n_own=n, page_tokens=pool_k.shape[2], block_kv=block_kv,
                               scale=1.0 / math.sqrt(dh), precision=precision, scaled=scaled)
    flat = lambda a: a.reshape(a.shape[0], -1, a.shape[-1])  # free: an entry's pages are consecutive tokens
    q_spec = pl.BlockSpec((None, None, None, prep.block_q, dh), lambda bi, hi, ci, qi: (bi, hi, ci, qi, 0))
    out = pl.pallas_call(
        kernel,
        grid=(b, h, c, prep.q.shape[3] // prep.block_q),
        in_specs=[q_spec] + [pl.no_block_spec] * (12 if scaled else 10),
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(prep.q.shape, q.dtype),
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
    )(prep.q, flat(pool_k), flat(pool_v), *((flat(k_scale), flat(v_scale)) if scaled else ()), prep.k, prep.v,
      prep.slots, prep.count, prep.length,
      prep.cos[:, :, :, 0], prep.sin[:, :, :, 0], jnp.asarray(_swap_matrix(dh)))
    return out[:, :, :, :t].transpose(0, 2, 3, 1, 4)
