"""--policies: keys attended per query frame and cache bytes per policy, from the real plans and state shapes."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .common import REPO, _keys_per_query_frame, _nbytes, print_table, published_type_map, steady_plans

POLICY_SIZES = {  # name -> (layers, heads, head_dim, grid after patching, dtype, head map file)
    "real": (30, 12, 128, (30, 52), "bfloat16", "head_maps/self_forcing.csv"),
    "demo": (6, 4, 32, (16, 16), "float32", "assets/demo/head_map.csv"),
}


def policy_keys(size="real", steady_chunk=40):
    """Keys attended per query frame at steady state (noisy and clean passes) and cache bytes
    per policy, from the real plans and the real state shapes."""
    from pyramid_jax.cache.head_map import load_head_map
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec

    layers, heads, dh, grid, dtype, map_file = POLICY_SIZES[size]
    tpf = grid[0] * grid[1]
    pooled = -(-grid[0] // 2) * -(-grid[1] // 2)
    path = os.path.join(REPO, map_file)
    head_map = (load_head_map(path, layers, heads) if os.path.isfile(path) else published_type_map(layers, heads))
    counts = {name: int((head_map == t).sum()) for name, t in (("anchor", 1), ("wave", -1), ("veil", 2))}
    small = (2, 2)  # 4 tokens, a pooled block 1: 4 pages per frame, as at the real grids
    rows, window_bytes = [], None
    cases = [("window-21", "window", dict(local_attn_size=21, sink_size=0)),
             ("deep_sink (21, 10 pinned)", "deep_sink", dict(local_attn_size=21, sink_size=10)),
             (f"pyramid ({counts['anchor']} A / {counts['wave']} W / {counts['veil']} V)", "pyramid",
              dict(head_map=head_map))]
    if size == "demo":
        cases.insert(1, ("window-12 (demo default)", "window", dict(local_attn_size=12, sink_size=0)))
    for label, name, kw in cases:
        policy, state, plan, clean, staged = steady_plans(name, layers, heads, small, steady_chunk, **kw)
        noisy_keys = _keys_per_query_frame(state, plan.slot, plan.valid, 4, tpf, pooled)  # [L, C, H]
        # (an entry's page keeps its length while staged: a slot holds frames or pooled blocks)
        clean_keys = np.stack([_keys_per_query_frame(staged, lp.slot, lp.valid, 4, tpf, pooled) for lp in clean])
        row = dict(section="policy_keys", size=size, policy=label, dtype=dtype,
                   keys_per_query_frame=float(noisy_keys.mean()), clean_keys_per_query_frame=float(clean_keys.mean()),
                   vs_window21=float(noisy_keys.mean()) / (21 * tpf))
        if name == "pyramid":
            for t, tname in ((1, "anchor"), (-1, "wave"), (2, "veil")):
                row[f"{tname}_keys"] = float(noisy_keys[np.broadcast_to((head_map == t)[:, None, :],
                                                                        noisy_keys.shape)].mean())
        for kv_dtype in (dtype, "int8"):  # the model's pages, and 8-bit pages with their scales
            real = make_policy(name, PoolSpec(layers, heads, dh, grid, 3, kv_dtype=kv_dtype), 240, **kw)
            nbytes = _nbytes(jax.eval_shape(lambda: real.init(1, jnp.dtype(dtype))))
            window_bytes = window_bytes or nbytes  # window-21 in the model's dtype
            rows.append(dict(row, kv_dtype=kv_dtype, slots=real.num_slots, cache_GiB=nbytes / 2**30,
                             bytes_vs_window21=nbytes / window_bytes))
    return rows


def run(args, env):
    rows = []
    for size, title in (("real", "Wan2.1-1.3B 480x832, bf16"), ("demo", "the demo model (64x64 pixels), fp32")):
        pk = policy_keys(size)
        print(f"\n## keys attended per query frame at steady state (chunk 40; noisy passes, and the "
              f"cache-writing pass) and cache bytes, {title}, B=1")
        print_table(pk, ["policy", "kv_dtype", "slots", "keys_per_query_frame", "clean_keys_per_query_frame",
                         "vs_window21", "cache_GiB", "bytes_vs_window21", "anchor_keys", "wave_keys", "veil_keys"])
        rows += pk
    return rows
