"""--step: the whole chunk step (DiT only), window-21 vs pyramid, per attention backend."""

from __future__ import annotations

import statistics

import jax
import numpy as np

from .common import SIZES, print_table, proportional_row, published_type_map


def bench_step(size, dtype, chunks=8, backends=("reference",)):
    """The whole chunk step (4 denoising passes + the clean pass, DiT only), window-21 vs
    pyramid, per attention backend, random weights. size: "mid" or "real" (Wan2.1-1.3B at 480x832)."""
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec
    from pyramid_jax.models.wan.modeling import WanConfig, init_model
    from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout

    if size == "real":
        cfg, (hh, ww), lt = WanConfig(dtype=dtype), (60, 104), 512
    else:
        fields, _, hh, ww, lt = SIZES["mid"]
        cfg = WanConfig(text_len=lt, dtype=dtype, **fields)
    grid = (hh // 2, ww // 2)
    spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, grid, 3)
    head_map = (published_type_map() if (cfg.num_layers, cfg.num_heads) == (30, 12)
                else np.repeat(proportional_row(cfg.num_heads), cfg.num_layers, axis=0))
    ctx = jax.random.normal(jax.random.key(1), (1, lt, cfg.text_dim)) * 0.1
    sampler = Sampler()
    rows = []
    for backend in backends:
        model = init_model(cfg, seed=0, attention_backend=backend)
        tkv = jax.jit(lambda m, c: m.text_kv(c))(model, ctx)
        window_s = None
        for label, name, kw in [("window-21", "window", dict(local_attn_size=21, sink_size=0)),
                                ("pyramid", "pyramid", dict(head_map=head_map))]:
            policy = make_policy(name, spec, 3 * chunks, **kw)
            times = []
            rollout(model, policy, sampler, tkv, RandomNoise(0, (1, 3 * chunks, cfg.in_channels, hh, ww), sampler),
                    chunks, on_chunk=lambda k, x, sec: times.append(sec))
            chunk_s = statistics.median(times[1:])
            window_s = window_s or chunk_s
            rows.append(dict(section="step", size=size, backend=backend, policy=label, dtype=dtype,
                             chunk_s=chunk_s, first_chunk_s=times[0], video_frames_per_s=12 / chunk_s,
                             speedup_vs_window=window_s / chunk_s))
        del model, tkv
    return rows


def run(args, env):
    st = bench_step(args.step_size, args.dtype, backends=args.backends.split(","))
    print(f"\n## chunk step (4 denoising passes + clean pass, DiT only), {args.step_size} size, "
          f"{args.dtype}, B=1, random weights")
    print_table(st, ["backend", "policy", "chunk_s", "first_chunk_s", "video_frames_per_s", "speedup_vs_window"])
    return st
