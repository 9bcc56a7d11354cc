"""--attention: paged attention for one layer at steady state, window-21 vs pyramid plans."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .common import ATTN_SIZES, _keys_per_query_frame, _median_seconds, print_table, proportional_row, steady_plans


def matmul_peak_tflops(dtype, n=8192, repeats=10):
    """Measured dense matmul rate on this device (the ceiling the kernel is compared with)."""
    ka, kb = jax.random.split(jax.random.key(7))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    f = jax.jit(jnp.dot)
    return 2 * n**3 / _median_seconds(lambda: f(a, b).block_until_ready(), repeats) / 1e12


def parse_tilings(text):
    """"64,64,4,3;128,64,8,3" -> [(block_q, block_kv, num_warps, num_stages), ...]"""
    return [tuple(int(x) for x in part.split(",")) for part in text.split(";") if part.strip()]


def bench_attention(size, repeats, dtype, tilings=()):
    """Paged attention for one layer at steady state: window-21 vs pyramid plans.

    The reference backend is timed everywhere; the pallas kernel where it compiles (TPU
    Mosaic; GPU Triton, once per tiling). Interpret mode on CPU is a correctness path and is
    not timed. TFLOP/s count only the valid entries' keys (and the chunk's own).
    """
    from pyramid_jax.attention import pallas as pk
    from pyramid_jax.attention import pallas_triton as pt
    from pyramid_jax import rope
    from pyramid_jax.attention import reference as ref
    from pyramid_jax.attention.plan import layer_plan

    heads, dh, grid = ATTN_SIZES[size]
    tpf = grid[0] * grid[1]
    merged = -(-grid[0] // 2) * -(-grid[1] // 2)
    head_map = proportional_row(heads)
    backend = jax.default_backend()
    rows = []
    for label, name, kw in [("window-21", "window", dict(local_attn_size=21, sink_size=0)),
                            ("pyramid", "pyramid", dict(head_map=head_map))]:
        # plans from a 2x2 grid (4 pages per frame for pyramid, one for the window, as here)
        small, state, plan, _, _ = steady_plans(name, 1, heads, (2, 2), 40, **kw)
        n_pages = state.k.shape[1]
        tp = tpf if name == "window" else merged
        plen = jnp.where(state.page_len < 4, merged, tpf).astype(jnp.int32)  # [NP] at the real size
        key = jax.random.key(0)
        ks = jax.random.split(key, 5)
        dt = jnp.dtype(dtype)
        q = jax.random.normal(ks[0], (1, 3, tpf, heads, dh), dt)
        k = jax.random.normal(ks[1], (1, 3 * tpf, heads, dh), dt)
        v = jax.random.normal(ks[2], (1, 3 * tpf, heads, dh), dt)
        pool_k = jax.random.normal(ks[3], (1, n_pages, tp, dh), dt)
        pool_v = jax.random.normal(ks[4], (1, n_pages, tp, dh), dt)
        lp = layer_plan(plan, 0)
        args = (q, k, v, pool_k, pool_v, lp.slot, lp.time_shift, lp.valid)
        keys = _keys_per_query_frame(state, lp.slot, lp.valid, 4, tpf, merged)  # [C or 1 (shared), H]
        flops = float(4 * tpf * keys.sum() * dh * 3 / keys.shape[0])
        theta = rope.WAN_THETA
        f_ref = jax.jit(lambda *a: ref.paged_attention(*a, page_len=plen, theta=theta))
        want = f_ref(*args)
        t_ref = _median_seconds(lambda: f_ref(*args).block_until_ready(), repeats)
        base = dict(section="attention", size=size, policy=label, dtype=dtype, heads=heads,
                    tokens_per_frame=tpf, keys_per_query_frame=float(keys.mean()),
                    reference_s=t_ref, reference_TFLOPs=flops / t_ref / 1e12)
        if backend == "tpu":
            variants = [("mosaic", lambda *a: pk.paged_attention(*a, page_len=plen, theta=theta, interpret=False))]
        elif backend == "gpu":
            variants = [(f"triton {','.join(map(str, tl or (pt.FP32_TILING if dtype == 'float32' else pt.DEFAULT_TILING)))}",
                         lambda *a, tl=tl: pt.paged_attention(*a, page_len=plen, theta=theta, tiling=tl))
                        for tl in (tilings or [None])]
        else:
            variants = [("", None)]
        for kernel, fn in variants:
            row = dict(base)
            if fn is not None:
                f_pk = jax.jit(fn)
                got = np.asarray(f_pk(*args), np.float32)
                ref32 = np.asarray(want, np.float32)
                t_pk = _median_seconds(lambda: f_pk(*args).block_until_ready(), repeats)
                row.update(kernel=kernel, pallas_s=t_pk, pallas_TFLOPs=flops / t_pk / 1e12, speedup=t_ref / t_pk,
                           rel_err=float(np.linalg.norm(got - ref32) / np.linalg.norm(ref32)),
                           nan=bool(np.isnan(got).any()))
            rows.append(row)
    return rows


def run(args, env):
    rows = []
    at = bench_attention(args.attn_size, args.repeats, args.dtype, parse_tilings(args.tilings))
    print(f"\n## paged attention, one layer, {args.attn_size} size, {args.dtype}, B=1, 3 query frames, "
          "steady state (TFLOP/s count valid pages only)")
    if env["platform"] == "cpu":
        print("(pallas on this platform runs interpreted: a correctness path, not timed)")
    else:
        peak = matmul_peak_tflops(jnp.dtype(args.dtype))
        print(f"measured {args.dtype} matmul peak (8192^3): {peak:.0f} TFLOP/s")
        rows.append(dict(section="matmul_peak", dtype=args.dtype, TFLOPs=peak))
    print_table(at, ["policy", "keys_per_query_frame", "reference_s", "reference_TFLOPs", "kernel",
                     "pallas_s", "pallas_TFLOPs", "speedup", "rel_err", "nan"])
    return rows + at
