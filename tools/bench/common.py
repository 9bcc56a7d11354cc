"""What several sections share: sizes, the timer, byte counts, head maps, steady-state plans, tables."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/bench/ -> the repo

# name -> (WanConfig fields, latent frames, latent H, latent W, text length)
SIZES = {
    "tiny": (dict(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                  text_dim=48, freq_dim=32), 3, 6, 10, 16),
    "demo": (dict(dim=128, ffn_dim=256, num_heads=4, num_layers=2, in_channels=16, out_channels=16,
                  text_dim=64, freq_dim=64), 3, 16, 16, 32),  # configs/tiny_random.py
    "mid": (dict(dim=768, ffn_dim=3072, num_heads=6, num_layers=8, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256), 3, 16, 26, 512),
}

ATTN_SIZES = {  # name -> (heads, head_dim, latent grid after patching)
    "mid": (6, 128, (16, 26)),
    "real": (12, 128, (30, 52)),
}


def size_list(args):
    """The names given to --sizes."""
    return [s for s in args.sizes.split(",") if s]


def _median_seconds(fn, repeats):
    fn()  # warm-up: compile / allocate
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _nbytes(tree):
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _peak_bytes(fn, *args):
    """XLA's memory estimate of a jitted call: arguments + outputs + temporaries."""
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    if m is None:
        return float("nan")
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def published_type_map(layers=30, heads=12, counts=((1, 172), (-1, 156), (2, 32))):
    """The published Pyramid Forcing map of Self Forcing (head_maps/self_forcing.csv) at its
    own shape; otherwise a map with its proportions (172 Anchor, 156 Wave, 32 Veil)."""
    from pyramid_jax.cache.head_map import load_head_map

    path = os.path.join(REPO, "head_maps", "self_forcing.csv")
    if (layers, heads) == (30, 12) and os.path.isfile(path):
        return load_head_map(path, layers, heads)
    types = np.concatenate([np.full(n, t) for t, n in counts])
    return np.random.default_rng(0).permutation(np.resize(types, layers * heads)).reshape(layers, heads)


def proportional_row(heads, counts=((1, 172), (-1, 156), (2, 32))):
    """[1, heads] head map with the published proportions (at least one head of each type)."""
    total = sum(n for _, n in counts)
    want = [max(1, round(heads * n / total)) for _, n in counts]
    want[0] += heads - sum(want)
    return np.concatenate([np.full(w, t) for (t, _), w in zip(counts, want)])[None]


def steady_plans(policy_name, layers, heads, grid, steady_chunk, **kw):
    """A policy run to chunk `steady_chunk` with zero keys on a small grid: (policy, state,
    noisy plan, the clean pass's layer plans, staged state). Plans depend only on slot
    metadata, so a small grid with the real grid's pages per frame gives the real plans."""
    from pyramid_jax.cache.policies import advance_fn, make_policy
    from pyramid_jax.cache.pool import PoolSpec

    policy = make_policy(policy_name, PoolSpec(layers, heads, 8, grid, 3), 240, **kw)
    state = policy.init(1, jnp.float32)
    advance = advance_fn(policy)
    kv = jnp.zeros((layers, 1, heads, 3, grid[0] * grid[1], 8))
    for k in range(steady_chunk):
        state = advance(state, (kv, kv), jnp.int32(k))
    chunk = jnp.int32(steady_chunk)
    plan = policy.plan(state, chunk)
    staged, clean = state, []
    for layer in range(layers):
        staged, _, lp = policy.stage(staged, plan, layer, kv[layer], kv[layer], chunk)
        clean.append(lp)
    return policy, state, plan, clean, staged


def _keys_per_query_frame(state, slot, valid, small_tokens, real_tokens, real_pooled):
    """Tokens each (query frame, head) attends ([..., C, H]), entries counted at the real size
    (a frame entry: real_tokens; a pooled block: real_pooled), the chunk's own 3 frames included."""
    plen = np.asarray(state.page_len)[np.asarray(slot)]
    tokens = np.where(plen < small_tokens, real_pooled, real_tokens) * np.asarray(valid)
    return tokens.sum(-1) + 3 * real_tokens


def print_table(rows, cols):
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def _fmt(v):
    if isinstance(v, list):
        return "-".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return "" if v is None else str(v)


def environment():
    import flax

    dev = jax.devices()[0]
    return dict(platform=dev.platform, device=getattr(dev, "device_kind", str(dev)),
                device_count=jax.device_count(), cpu_count=os.cpu_count(),
                machine=platform.machine(), python=platform.python_version(),
                jax=jax.__version__, flax=flax.__version__)
