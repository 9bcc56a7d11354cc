"""--rollout and --long: seconds per chunk and compile counts of the rollout; cache bytes per policy."""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp

from .common import SIZES, _nbytes, print_table, size_list


def _rollout_setup(size, num_frames, window, sink, dtype="float32"):
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec
    from pyramid_jax.models.wan.modeling import WanConfig, init_model

    fields, _, hh, ww, lt = SIZES[size]
    cfg = WanConfig(text_len=lt, dtype=dtype, **fields)
    model = init_model(cfg, seed=0)
    spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, (hh // 2, ww // 2), 3)
    policy = make_policy("window", spec, num_frames, window, sink)
    ctx = jax.random.normal(jax.random.key(1), (1, lt, cfg.text_dim)) * 0.1
    return model, policy, model.text_kv(ctx), (1, num_frames, cfg.in_channels, hh, ww)


def _count_compiles():
    counter = [0]

    def listen(event, *a, **k):
        if event == "/jax/core/compile/backend_compile_duration":
            counter[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    return counter


def bench_rollout(sizes, num_frames, window=21, sink=0):
    """Seconds per chunk (first = compile, then steady-state median) and compile counts."""
    from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout

    rows = []
    for name in sizes:
        model, policy, tkv, shape = _rollout_setup(name, num_frames, window, sink)
        sampler = Sampler()
        times = []
        jax.clear_caches()
        counter = _count_compiles()
        rollout(model, policy, sampler, tkv, RandomNoise(0, shape, sampler), num_frames // 3,
                on_chunk=lambda k, x, sec: times.append(sec))
        jax.monitoring.clear_event_listeners()
        state = jax.eval_shape(lambda: policy.init(1, model.cfg.jnp_dtype))
        rows.append(dict(section="rollout", size=name, frames=num_frames, window=window, sink=sink,
                         first_chunk_s=times[0], chunk_s=statistics.median(times[1:]),
                         latent_frames_per_s=3 / statistics.median(times[1:]),
                         compiles=counter[0], cache_bytes=_nbytes(state)))
    return rows, times


def cache_bytes_real_size():
    """Cache bytes per policy at the 1.3B / 480x832 shape (bf16), from the real state shapes."""
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec
    from pyramid_jax.models.wan.modeling import WanConfig

    cfg = WanConfig()
    spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, (30, 52), 3)
    rows = []
    for label, w, s, frames in [("window-21", 21, 0, 240), ("window-21+sink3", 21, 3, 240),
                                ("unlimited, 60 s", -1, 0, 240)]:
        policy = make_policy("window", spec, frames, w, s)
        state = jax.eval_shape(lambda: policy.init(1, jnp.bfloat16))
        rows.append(dict(section="cache_bytes", policy=label, slots=policy.num_slots,
                         cache_GiB=_nbytes(state) / 2**30))
    return rows


def run(args, env):
    ro, _ = bench_rollout(size_list(args), args.frames)
    print(f"\n## rollout: {args.frames} latent frames, window 21, fp32, batch 1 (DiT only)")
    print_table(ro, ["size", "frames", "window", "first_chunk_s", "chunk_s", "latent_frames_per_s",
                     "compiles", "cache_bytes"])
    cb = cache_bytes_real_size()
    print("\n## cache bytes at Wan2.1-1.3B, 480x832, bf16, batch 1")
    print_table(cb, ["policy", "slots", "cache_GiB"])
    return ro + cb


def run_long(args, env):
    lo, times = bench_rollout(["mid"], 240)
    print("\n## 60 s rollout (240 latent frames, 80 chunks), mid size, window 21")
    print("first 5 chunk times (s):", " ".join(f"{t:.3f}" for t in times[:5]))
    print("last 5 chunk times (s): ", " ".join(f"{t:.3f}" for t in times[-5:]))
    lo[0]["section"] = "long"
    lo[0]["chunk_times_s"] = times
    print_table(lo, ["size", "frames", "chunk_s", "compiles", "cache_bytes"])
    return lo
