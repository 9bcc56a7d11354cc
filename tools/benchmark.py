"""pyramid_jax benchmarks: print a table per section and write all rows as JSON.

  python tools/benchmark.py --forward            # CausalWan (jit) vs diffusers, fp32 CPU
  python tools/benchmark.py --forward --sizes tiny --repeats 3 --json out.json

Timings are medians over --repeats runs after one warm-up (compile) run, on whatever
machine runs this; the JSON records the platform, device and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# name -> (WanConfig fields, latent frames, latent H, latent W, text length)
SIZES = {
    "tiny": (dict(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                  text_dim=48, freq_dim=32), 3, 6, 10, 16),
    "demo": (dict(dim=128, ffn_dim=256, num_heads=4, num_layers=2, in_channels=16, out_channels=16,
                  text_dim=64, freq_dim=64), 3, 16, 16, 32),  # configs/tiny_random.py
    "mid": (dict(dim=768, ffn_dim=3072, num_heads=6, num_layers=8, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256), 3, 16, 26, 512),
}


def _median_seconds(fn, repeats):
    fn()  # warm-up: compile / allocate
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_forward(sizes, repeats):
    """Forward time of CausalWan (jitted, text K/V cached and not) vs diffusers, fp32."""
    import torch
    from diffusers import WanTransformer3DModel
    from flax import nnx

    from pyramid_jax.models.wan import WanConfig
    from pyramid_jax.weights import wan_names
    from pyramid_jax.weights.checkpoint import model_from_params

    rows = []
    for name in sizes:
        fields, nf, hh, ww, lt = SIZES[name]
        torch.manual_seed(0)
        ref = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=fields["num_heads"],
            attention_head_dim=fields["dim"] // fields["num_heads"], in_channels=fields["in_channels"],
            out_channels=fields["out_channels"], text_dim=fields["text_dim"], freq_dim=fields["freq_dim"],
            ffn_dim=fields["ffn_dim"], num_layers=fields["num_layers"]).eval()
        sd = wan_names.diffusers_to_upstream({k: v.numpy() for k, v in ref.state_dict().items()})
        cfg = WanConfig(text_len=lt, **fields)
        model = model_from_params(cfg, wan_names.params(sd, cfg))

        x = torch.randn(1, fields["in_channels"], nf, hh, ww)
        ctx = torch.randn(1, lt, fields["text_dim"])
        t = torch.tensor([937.5])

        def run_ref():
            with torch.no_grad():
                ref(x, t, ctx, return_dict=False)

        graphdef, state = nnx.split(model)

        @jax.jit
        def step(state, x, t, tkv):
            return nnx.merge(graphdef, state)(x, t, tkv)[0]

        @jax.jit
        def step_with_text(state, x, t, ctx):
            m = nnx.merge(graphdef, state)
            return m(x, t, m.text_kv(ctx))[0]

        xj = jnp.asarray(x.numpy().transpose(0, 2, 1, 3, 4))
        cj = jnp.asarray(ctx.numpy())
        tj = jnp.asarray(t.numpy())
        tkv = jax.jit(lambda s, c: nnx.merge(graphdef, s).text_kv(c))(state, cj)
        ours = _median_seconds(lambda: step(state, xj, tj, tkv).block_until_ready(), repeats)
        ours_text = _median_seconds(lambda: step_with_text(state, xj, tj, cj).block_until_ready(), repeats)
        theirs = _median_seconds(run_ref, repeats)
        rows.append(dict(section="forward", size=name, dim=cfg.dim, layers=cfg.num_layers,
                         heads=cfg.num_heads, frames=nf, latent=f"{hh}x{ww}", text_len=lt,
                         diffusers_s=theirs, ours_s=ours, ours_with_text_s=ours_text,
                         ratio=ours / theirs, ratio_with_text=ours_text / theirs))
    return rows


def _rollout_setup(size, num_frames, window, sink, dtype="float32"):
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec
    from pyramid_jax.models.wan import WanConfig, init_model

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


def _nbytes(tree):
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def cache_bytes_real_size():
    """Cache bytes per policy at the 1.3B / 480x832 shape (bf16), from the real state shapes."""
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec
    from pyramid_jax.models.wan import WanConfig

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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


ATTN_SIZES = {  # name -> (heads, head_dim, latent grid after patching)
    "mid": (6, 128, (16, 26)),
    "real": (12, 128, (30, 52)),
}


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


def bench_step(size, dtype, chunks=8, backends=("reference",)):
    """The whole chunk step (4 denoising passes + the clean pass, DiT only), window-21 vs
    pyramid, per attention backend, random weights. size: "mid" or "real" (Wan2.1-1.3B at 480x832)."""
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec
    from pyramid_jax.models.wan import WanConfig, init_model
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


def bench_devices_child(n_devices, chunks=4):
    """(Run with XLA_FLAGS giving n fake devices.) Video frames/s of the sharded batch path
    for the demo model, batch = n_devices, mesh (n, 1)."""
    from pyramid_jax import pipeline, video
    from pyramid_jax.config import parse_config
    from pyramid_jax.models.wan import WanConfig, init_model
    from pyramid_jax.parallel import make_mesh
    from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout, text_kv_of

    c = parse_config(["benchmark", "--config=" + os.path.join(os.path.dirname(__file__), "..",
                                                                      "configs", "demo.py")])
    cfg = WanConfig.from_dict(c.model.to_dict())
    model = init_model(cfg)  # random weights: speed does not depend on them
    lh, lw = pipeline.latent_size(c, cfg)
    frames = c.frames_per_chunk * chunks
    policy = pipeline.build_policy(c, cfg, (lh, lw), frames)
    sampler = Sampler()
    ctx = np.zeros((n_devices, cfg.text_len, cfg.text_dim), np.float32)
    mesh = make_mesh(n_devices, 1)
    times = []
    noise = RandomNoise(0, (n_devices, frames, cfg.in_channels, lh, lw), sampler)
    rollout(model, policy, sampler, text_kv_of(model, ctx, mesh), noise, chunks, mesh=mesh,
            on_chunk=lambda k, x, sec: times.append(sec))
    chunk_s = statistics.median(times[1:])
    video_frames = c.frames_per_chunk * video.strides(c)[0]  # per chunk in steady state
    return dict(section="devices", devices=n_devices, batch=n_devices, chunk_s=chunk_s,
                video_frames_per_s=n_devices * video_frames / chunk_s)


def bench_devices(counts):
    import subprocess

    rows = []
    for n in counts:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        r = subprocess.run([sys.executable, __file__, "--devices-child", str(n)], env=env,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return rows


def _peak_bytes(fn, *args):
    """XLA's memory estimate of a jitted call: arguments + outputs + temporaries."""
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    if m is None:
        return float("nan")
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def kv_error_attention(dtypes=("bfloat16", "int8", "float8_e4m3fn"), entries=8, seed=0):
    """One attention call at the 1.3B shapes (12 heads x 128, 1560 tokens per frame, a chunk of 3
    query frames, `entries` cached frames per head): the output with pages stored in each dtype
    against fp32 pages (relative L2 error). Keys and values are random normal."""
    from pyramid_jax.attention import reference
    from pyramid_jax.cache.pool import EIGHT_BIT, quantize

    heads, dh, (gh, gw) = ATTN_SIZES["real"]
    t, c = gh * gw, 3
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.standard_normal((1, c, t, heads, dh)), jnp.float32)
    k, v = (jnp.asarray(r.standard_normal((1, c * t, heads, dh)), jnp.float32) for _ in range(2))
    pool_k, pool_v = (jnp.asarray(r.standard_normal((1, heads * entries, t, dh)), jnp.float32) for _ in range(2))
    slot = jnp.broadcast_to(jnp.arange(heads)[:, None] * entries + jnp.arange(entries), (c, heads, entries))
    zeros, valid = jnp.zeros(slot.shape, jnp.int32), jnp.ones(slot.shape, bool)
    attend = jax.jit(lambda pk, pv, ks, vs: reference.paged_attention(q, k, v, pk, pv, slot, zeros, valid,
                                                                      theta=10000.0, k_scale=ks, v_scale=vs))
    want = attend(pool_k, pool_v, None, None)
    rows = []
    for name in dtypes:
        if name in EIGHT_BIT:
            (pk, ks), (pv, vs) = quantize(pool_k, jnp.dtype(name)), quantize(pool_v, jnp.dtype(name))
        else:
            pk, pv, ks, vs = pool_k.astype(name), pool_v.astype(name), None, None
        got = attend(pk, pv, ks, vs)
        rows.append(dict(section="kv_error", case="attention, 1.3B shapes", kv_dtype=name,
                         rel_err=float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))))
    return rows


def kv_error_rollout(seconds, dtypes=("bfloat16", "int8", "float8_e4m3fn"), policy="pyramid"):
    """The demo model's video with bf16 / 8-bit pages against its own (fp32) pages, and the
    8-bit ones against bf16 pages, after `seconds`: mean |pixel difference| (0-255) and PSNR
    over the whole video, and of the last second."""
    from pyramid_jax import pipeline, video
    from pyramid_jax.config import parse_config

    frames = int(round(seconds * 10 / 3)) * 3  # the demo: 10 fps, a pixel frame per latent frame
    base = ["x", f"--config={os.path.join(REPO, 'configs', 'demo.py')}", f"--config.num_frames={frames}",
            f"--config.cache.policy={policy}"]
    videos = {}
    for name in ("", *dtypes):
        c = parse_config(base + [f"--config.cache.kv_dtype={name}"])
        models = pipeline.load(c, decoder=False)
        lat = pipeline.generate(c, models, pipeline.inputs(c, models)).latents
        videos[name] = video.PixelFrames().push(lat)[0].astype(np.float32)
    psnr = lambda d: float(10 * np.log10(255.0**2 / max(float((d**2).mean()), 1e-12)))
    pairs = [(name, "") for name in dtypes] + [
        (name, "bfloat16") for name in dtypes if "bfloat16" in dtypes and name != "bfloat16"]
    rows = []
    for name, against in pairs:
        diff = np.abs(videos[name] - videos[against])
        rows.append(dict(section="kv_error", case=f"demo rollout {seconds:g} s, {policy}", kv_dtype=name,
                         against=against or "float32", mean_abs_px=float(diff.mean()), psnr_dB=psnr(diff),
                         last_second_mean_abs_px=float(diff[-10:].mean()), last_second_psnr_dB=psnr(diff[-10:])))
    return rows


def bench_end_to_end(size="real", seconds=60.0, dtype="bfloat16", kv_dtypes=("",), decoder="wan"):
    """Text-to-pixels minus the text encoder: the DiT rollout and the streaming decode (decoder:
    the Wan VAE or TAEHV),
    random weights, per policy (window-21, deep_sink, pyramid). x0 stays on the device: the
    decode of chunk k is queued behind its step, and chunk k's frames come to the host only after
    chunk k+1 is queued, so the host never stalls the device. video_fps: frames after the first
    chunk per second; latency_s: until the first chunk's frames are on the host (incl. compile);
    peak_GiB: the device's peak memory (None where the platform does not report it).
    size: "real" (Wan2.1-1.3B, 480x832) or "tiny" (a CPU smoke run). kv_dtypes: the page dtypes
    to run ("" = the model's); 8-bit pages only with pyramid, the policy they are meant for."""
    import bench_decoders
    from pyramid_jax.attention import target_platform
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec
    from pyramid_jax.models import taehv, vae
    from pyramid_jax.models.wan import WanConfig, init_model
    from pyramid_jax.sampling.rollout import ChunkLoop, RandomNoise, Sampler
    from pyramid_jax.weights import taehv_names
    from pyramid_jax.weights.checkpoint import with_weights
    from pyramid_jax.weights.vae_names import random_vae_params

    if size == "real":
        cfg, hw, vcfg = WanConfig(dtype=dtype), (60, 104), vae.VAEConfig(dtype=dtype)
    else:
        cfg = WanConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=2, text_len=32, text_dim=64, freq_dim=64,
                        dtype=dtype)
        hw, vcfg = (16, 16), vae.VAEConfig(base_dim=16, num_res_blocks=1, dtype=dtype)
    chunks = max(2, round(seconds * 16 / vae.TIME_STRIDE / 3))  # 60 s: 240 latent frames
    backend = "pallas" if target_platform() in ("gpu", "tpu") else "reference"
    model = init_model(cfg, seed=0, attention_backend=backend)
    if decoder == "taehv":
        tcfg = taehv.TAEHVConfig(dtype=dtype)
        decoder_weights = with_weights(taehv.TAEHV, tcfg, taehv_names.params(taehv_names.random_checkpoint(tcfg), tcfg))
    else:
        decoder_weights = with_weights(vae.WanVAEDecoder, vcfg, random_vae_params(vcfg))
    head_map = (published_type_map() if (cfg.num_layers, cfg.num_heads) == (30, 12)
                else np.repeat(proportional_row(cfg.num_heads), cfg.num_layers, axis=0))
    tkv = jax.jit(lambda m, c: m.text_kv(c))(model, jax.random.normal(jax.random.key(1), (1, cfg.text_len,
                                                                                          cfg.text_dim)) * 0.1)
    sampler, device, rows = Sampler(), jax.devices()[0], []
    runs = [(label, name, kw, kv) for kv in kv_dtypes
            for label, name, kw in [("window-21", "window", dict(local_attn_size=21, sink_size=0)),
                                    ("deep_sink", "deep_sink", dict(local_attn_size=21, sink_size=10)),
                                    ("pyramid", "pyramid", dict(head_map=head_map))]
            if kv in ("", dtype) or name == "pyramid"]
    for label, name, kw, kv_dtype in runs:
        spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, (hw[0] // 2, hw[1] // 2), 3, kv_dtype=kv_dtype)
        policy = make_policy(name, spec, 3 * chunks, **kw)
        loop = ChunkLoop(model, policy, sampler, tkv, RandomNoise(0, (1, 3 * chunks, cfg.in_channels, *hw), sampler))
        stream = bench_decoders.streaming(decoder, decoder_weights, hw)
        t0 = time.perf_counter()
        first = np.asarray(stream.push_on_device(loop.next_on_device()[0])).shape[1]
        latency, t1, pending, after = time.perf_counter() - t0, time.perf_counter(), None, 0
        for _ in range(1, chunks):
            queued = stream.push_on_device(loop.next_on_device()[0])
            if pending is not None:  # the previous chunk's frames, while this one runs
                after += np.asarray(pending).shape[1]
            pending = queued
        after += np.asarray(pending).shape[1]
        elapsed = time.perf_counter() - t1
        stats = device.memory_stats() or {}
        rows.append(dict(section="end_to_end", size=size, policy=label, decoder=decoder, dtype=dtype,
                         kv_dtype=kv_dtype or dtype, backend=backend,
                         chunks=chunks, video_frames=first + after, video_fps=after / elapsed,
                         latency_s=latency, peak_GiB=stats.get("peak_bytes_in_use", 0) / 2**30 or None,
                         device=getattr(device, "device_kind", device.platform)))
        del loop, stream
    return rows


# Chips for --plan: (peak dense bf16 FLOP/s, HBM bytes, HBM bytes/s), published figures.
CHIPS = {"TPU v5e": (197e12, 16 * 2**30, 819e9), "TPU v6e": (918e12, 32 * 2**30, 1640e9),
         "H100 SXM": (989e12, 80 * 2**30, 3350e9)}
# The measured H100 whole step (DiT only, pallas, pyramid: docs/benchmarks.md / bench_results/
# h100_step_real_bf16_pallas.json): the efficiency --plan assumes on every chip.
H100_PYRAMID_STEP_S = 0.479


def step_flops(cfg, keys_per_query_frame: float, tokens_per_frame: int, frames: int = 3, passes: int = 5):
    """FLOPs of one chunk step of the DiT: `passes` model passes (denoising + cache-writing) over
    frames * tokens_per_frame tokens, each attending keys_per_query_frame keys (the chunk's own
    included) and the text. Linear layers: q, k, v, o, cross q and o, the FFN."""
    n, d = frames * tokens_per_frame, cfg.dim
    linear = 2 * n * (6 * d * d + 2 * d * cfg.ffn_dim)
    attention = 4 * n * keys_per_query_frame * d + 4 * n * cfg.text_len * d
    return passes * cfg.num_layers * (linear + attention)


def tpu_plan(decoders=("wan", "taehv")):
    """Per chip, decoder, policy and kv_dtype at Wan2.1-1.3B 480x832: memory (weights, cache,
    decoder, the rest), whether it fits, videos per chip, and the expected video frames/s end to
    end (DiT + decode) if the chip reaches the fraction of its peak the measured H100 step
    reaches."""
    import bench_decoders
    from pyramid_jax.models.wan import WanConfig

    cfg, tpf = WanConfig(), 30 * 52
    weights = 1_418_996_800 * 2  # parameters of the 1.3B DiT (nnx.eval_shape), bf16
    act, text_kv = 2**30, 30 * 512 * 1536 * 2 * 2
    # decoder weights + streaming working set: the Wan VAE's from the memory plan in docs/accelerators.md (about
    # 2 GiB of activations); TAEHV's weights (9.8 M decoder parameters, bf16) and the Wan figure
    # scaled by the ratio of XLA's estimates of one streaming call each (TAEHV: a chunk; Wan: a
    # latent frame), so both come from one measure
    wan_act = 2 * 2**30
    ratio = bench_decoders.peak_bytes("taehv", (60, 104), jnp.bfloat16) / bench_decoders.peak_bytes(
        "wan", (60, 104), jnp.bfloat16)
    decoder_mem = {"wan": 0.14 * 2**30 + wan_act, "taehv": 9_844_611 * 2 + wan_act * ratio}
    policy_rows = {(r["policy"].split(" ")[0], r["kv_dtype"]): r for r in policy_keys("real")}
    efficiency = step_flops(cfg, policy_rows[("pyramid", "bfloat16")]["keys_per_query_frame"], tpf) / (
        H100_PYRAMID_STEP_S * CHIPS["H100 SXM"][0])
    rows = []
    for decoder in decoders:
        vae_chunk = 3 * bench_decoders.flops_per_latent_frame(decoder)
        for chip, (peak, hbm, bw) in CHIPS.items():
            for (policy, kv), pr in policy_rows.items():
                cache = pr["cache_GiB"] * 2**30
                dit = step_flops(cfg, pr["keys_per_query_frame"], tpf)
                # compute time at the H100's efficiency, or the HBM floor (weights + cache read per pass)
                seconds = max((dit + vae_chunk) / (peak * efficiency), 5 * (weights + cache) / bw)
                fixed = weights + decoder_mem[decoder]
                per_video = cache + text_kv + act
                rows.append(dict(section="tpu_plan", chip=chip, decoder=decoder, policy=policy, kv_dtype=kv,
                                 memory_GiB=(fixed + per_video) / 2**30, fits=fixed + per_video <= hbm,
                                 videos_per_chip=int(max(0, (hbm - fixed) // per_video)),
                                 dit_TFLOP_per_chunk=dit / 1e12, vae_TFLOP_per_chunk=vae_chunk / 1e12,
                                 video_fps=12 / seconds, assumed_efficiency=efficiency))
    return rows


def bench_codecs(repeats):
    """VAE decode seconds per chunk (3 latent frames, streaming) at small sizes and umT5 seconds
    per prompt, with random weights, and each stage's peak memory (XLA estimate). The decoders
    at real sizes, beside upstream's: bench_decoders.rows."""
    from pyramid_jax.models import umt5, vae
    from pyramid_jax.weights.t5_names import random_t5_params
    from pyramid_jax.weights.vae_names import random_vae_params

    rows = []
    vae_sizes = {"demo": (dict(base_dim=16, num_res_blocks=1), (16, 16)),
                 "mid": (dict(), (16, 26))}  # mid: the real Wan2.1 VAE architecture at 128x208 px
    for name, (fields, hw) in vae_sizes.items():
        cfg = vae.VAEConfig(**fields)
        p = jax.tree.map(jnp.asarray, random_vae_params(cfg))
        state = vae.init_state(p, cfg, 1, hw)
        z1 = jnp.zeros((1, 1, *hw, cfg.z_dim))
        nxt = jax.jit(lambda p, z, s: vae.decode_frame(p, cfg, z, s, first=False))
        first, state = jax.jit(lambda p, z, s: vae.decode_frame(p, cfg, z, s, first=True))(p, z1, state)

        def chunk():
            s = state
            for _ in range(3):
                out, s = nxt(p, z1, s)
            out.block_until_ready()

        sec = _median_seconds(chunk, repeats)
        rows.append(dict(section="codecs", stage="VAE decode", size=name, shape=f"latent {hw[0]}x{hw[1]}",
                         seconds=sec, unit="s per chunk (12 video frames)",
                         peak_MiB=_peak_bytes(lambda p, z, s: vae.decode_frame(p, cfg, z, s, first=False),
                                              p, z1, state) / 2**20))
    t5_sizes = {"demo": umt5.UMT5Config(vocab_size=1000, d_model=64, d_kv=16, num_heads=4, d_ff=96, num_layers=2),
                "mid": umt5.UMT5Config(vocab_size=32000, d_model=1024, d_kv=64, num_heads=16, d_ff=2816,
                                       num_layers=8)}
    for name, cfg in t5_sizes.items():
        p = jax.tree.map(jnp.asarray, random_t5_params(cfg))
        ids = jnp.ones((1, 512), jnp.int32)
        mask = jnp.ones((1, 512), jnp.int32)
        enc = jax.jit(lambda p, i, m: umt5.encode_prompts(p, cfg, i, m))
        sec = _median_seconds(lambda: enc(p, ids, mask).block_until_ready(), repeats)
        rows.append(dict(section="codecs", stage="umT5 encode", size=name,
                         shape=f"d_model {cfg.d_model}, {cfg.num_layers} layers, 512 tokens", seconds=sec,
                         unit="s per prompt",
                         peak_MiB=_peak_bytes(lambda p, i, m: umt5.encode_prompts(p, cfg, i, m), p, ids, mask) / 2**20))
    return rows


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forward", action="store_true", help="CausalWan forward vs diffusers (fp32)")
    p.add_argument("--rollout", action="store_true",
                   help="seconds per chunk and compile counts (window 21), cache bytes per policy")
    p.add_argument("--long", action="store_true",
                   help="a 60 s (240 latent frames) rollout of the mid size: per-chunk times stay flat")
    p.add_argument("--policies", action="store_true",
                   help="keys attended per query frame and cache bytes per policy at 1.3B / 480x832 and the demo size")
    p.add_argument("--attention", action="store_true",
                   help="paged attention, window-21 vs pyramid plans (reference; pallas on TPU)")
    p.add_argument("--attn-size", default="mid", choices=sorted(ATTN_SIZES))
    p.add_argument("--tilings", default="",
                   help="GPU kernel tilings to time, 'block_q,block_kv,warps,stages;...' (default: the kernel's)")
    p.add_argument("--backends", default="reference",
                   help="attention backends for --step, comma list of reference,pallas")
    p.add_argument("--step", action="store_true",
                   help="whole chunk step (DiT only), window-21 vs pyramid, video frames/s")
    p.add_argument("--step-size", default="mid", choices=["mid", "real"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--devices", action="store_true",
                   help="batch-path throughput on 1, 2, 4, 8 fake CPU devices (demo config)")
    p.add_argument("--devices-child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--codecs", action="store_true",
                   help="VAE decode s/chunk and umT5 s/prompt (demo and mid sizes) with peak memory; the Wan VAE "
                        "and TAEHV decoders at 64x64 and 480x832 (with --upstream: upstream's beside them), "
                        "their FLOPs per latent frame and peak memory")
    p.add_argument("--codec-clips", default="all", choices=["all", "small"],
                   help="--codecs decoders: all clips, or only the 64x64 one (the 480x832 chunk takes minutes)")
    p.add_argument("--end-to-end", action="store_true",
                   help="DiT + streaming VAE decode per policy: video frames/s, first-chunk latency, peak memory")
    p.add_argument("--e2e-size", default="real", choices=["real", "tiny"])
    p.add_argument("--e2e-seconds", type=float, default=60.0)
    p.add_argument("--decoder", default="wan", choices=["wan", "taehv"], help="the decoder for --end-to-end")
    p.add_argument("--e2e-kv-dtypes", default="",
                   help="comma list of cache page dtypes for --end-to-end ('' = the model's; int8 and "
                        "float8_e4m3fn run with pyramid only)")
    p.add_argument("--plan", action="store_true",
                   help="TPU v5e / v6e / H100 plan at 1.3B 480x832: memory per policy and kv_dtype, expected FPS")
    p.add_argument("--kv-error", action="store_true",
                   help="8-bit cache pages: attention error at 1.3B shapes, and the demo video after --kv-seconds")
    p.add_argument("--kv-seconds", type=float, default=60.0)
    p.add_argument("--side-by-side", action="store_true",
                   help="this CPU: our whole process (load + compile + 8 chunks, mid size) vs upstream's")
    p.add_argument("--upstream", default="", help="a Self Forcing checkout, for --side-by-side and --codecs")
    p.add_argument("--side-runs", type=int, default=3, help="runs per side for --side-by-side (medians)")
    p.add_argument("--frames", type=int, default=21, help="latent frames for --rollout")
    p.add_argument("--sizes", default="tiny,demo,mid", help="comma list of: " + ",".join(SIZES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="bench_results/benchmark.json", help="where to write the rows")
    args = p.parse_args(argv)
    if args.devices_child:
        print(json.dumps(bench_devices_child(args.devices_child)))
        return 0
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    if not (args.forward or args.rollout or args.long or args.policies or args.attention or args.step
            or args.devices or args.codecs or args.kv_error or args.plan or args.end_to_end or args.side_by_side):
        p.error("choose at least one section (--forward, --rollout, --long, --policies, --attention, --step, "
                "--devices, --codecs, --kv-error, --plan, --end-to-end, --side-by-side)")
    if args.upstream and not os.path.isfile(os.path.join(args.upstream, "wan", "modules", "causal_model.py")):
        p.error(f"--upstream {args.upstream}: not a Self Forcing checkout (no wan/modules/causal_model.py)")

    env = environment()
    print(f"# {env['platform']} ({env['device']}), {env['cpu_count']} CPUs, jax {env['jax']}")
    rows = []
    if args.forward:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        fw = bench_forward(sizes, args.repeats)
        print("\n## forward: CausalWan (jit) vs diffusers WanTransformer3DModel, fp32, batch 1")
        print_table(fw, ["size", "dim", "layers", "frames", "latent", "text_len", "diffusers_s",
                         "ours_s", "ratio", "ours_with_text_s", "ratio_with_text"])
        rows += fw
    if args.rollout:
        ro, _ = bench_rollout(sizes, args.frames)
        print(f"\n## rollout: {args.frames} latent frames, window 21, fp32, batch 1 (DiT only)")
        print_table(ro, ["size", "frames", "window", "first_chunk_s", "chunk_s", "latent_frames_per_s",
                         "compiles", "cache_bytes"])
        cb = cache_bytes_real_size()
        print("\n## cache bytes at Wan2.1-1.3B, 480x832, bf16, batch 1")
        print_table(cb, ["policy", "slots", "cache_GiB"])
        rows += ro + cb
    if args.attention:
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
        rows += at
    if args.step:
        st = bench_step(args.step_size, args.dtype, backends=args.backends.split(","))
        print(f"\n## chunk step (4 denoising passes + clean pass, DiT only), {args.step_size} size, "
              f"{args.dtype}, B=1, random weights")
        print_table(st, ["backend", "policy", "chunk_s", "first_chunk_s", "video_frames_per_s", "speedup_vs_window"])
        rows += st
    if args.devices:
        dv = bench_devices([1, 2, 4, 8])
        print("\n## batch path, demo config, batch = devices, mesh (n, 1), video frames/s")
        print(f"(fake CPU devices from --xla_force_host_platform_device_count share this machine's "
              f"{os.cpu_count()} cores: this shows the sharded path works and its overhead, not scaling)")
        print_table(dv, ["devices", "batch", "chunk_s", "video_frames_per_s"])
        rows += dv
    if args.codecs:
        cd = bench_codecs(args.repeats)
        print("\n## VAE decode and umT5 encode, fp32, batch 1, random weights (peak: XLA memory estimate)")
        print_table(cd, ["stage", "size", "shape", "seconds", "unit", "peak_MiB"])
        rows += cd
        import bench_decoders

        clips = tuple(bench_decoders.CLIPS)[:1 if args.codec_clips == "small" else None]
        dc = bench_decoders.rows(args.repeats, args.upstream or None, clips)
        print("\n## decoders at the Wan VAE's real sizes, fp32, batch 1, random weights: seconds to decode the "
              "clip streaming (a fresh decoder each run)" + (", upstream's classes beside ours" if args.upstream else "")
              + "; GFLOP per latent frame (XLA, bf16) and peak memory of one streaming call at 480x832")
        print_table(dc, ["decoder", "clip", "video_frames", "ours_s", "upstream_s", "vs_upstream",
                         "GFLOP_per_latent_frame_480x832", "peak_MiB_480x832"])
        rows += dc
    if args.end_to_end:
        ee = bench_end_to_end(args.e2e_size, args.e2e_seconds, args.dtype if args.e2e_size == "tiny" else "bfloat16",
                              tuple(args.e2e_kv_dtypes.split(",")), args.decoder)
        print(f"\n## end to end (DiT + streaming {args.decoder} decode, no text encoder), {args.e2e_size}, "
              f"{args.e2e_seconds:g} s, random weights")
        print_table(ee, ["policy", "decoder", "kv_dtype", "backend", "chunks", "video_frames", "video_fps", "latency_s", "peak_GiB", "device"])
        rows += ee
    if args.plan:
        pl = tpu_plan()
        print(f"\n## plan: Wan2.1-1.3B 480x832 bf16, one video per chip unless said; expected frames/s assume "
              f"{pl[0]['assumed_efficiency']:.0%} of peak (the measured H100 step)")
        print_table(pl, ["chip", "decoder", "policy", "kv_dtype", "memory_GiB", "fits", "videos_per_chip", "dit_TFLOP_per_chunk",
                         "vae_TFLOP_per_chunk", "video_fps"])
        rows += pl
    if args.kv_error:
        ka = kv_error_attention()
        print("\n## cache pages in bf16 / 8 bits vs fp32 pages: one attention call at the 1.3B shapes")
        print_table(ka, ["case", "kv_dtype", "rel_err"])
        kr = kv_error_rollout(args.kv_seconds)
        print(f"\n## the demo model's video with bf16 / 8-bit pages vs fp32 and bf16 pages ({args.kv_seconds:g} s, "
              "pyramid)")
        print_table(kr, ["case", "kv_dtype", "against", "mean_abs_px", "psnr_dB", "last_second_mean_abs_px",
                         "last_second_psnr_dB"])
        rows += ka + kr
    if args.policies:
        for size, title in (("real", "Wan2.1-1.3B 480x832, bf16"), ("demo", "the demo model (64x64 pixels), fp32")):
            pk = policy_keys(size)
            print(f"\n## keys attended per query frame at steady state (chunk 40; noisy passes, and the "
                  f"cache-writing pass) and cache bytes, {title}, B=1")
            print_table(pk, ["policy", "kv_dtype", "slots", "keys_per_query_frame", "clean_keys_per_query_frame",
                             "vs_window21", "cache_GiB", "bytes_vs_window21", "anchor_keys", "wave_keys", "veil_keys"])
            rows += pk
    if args.long:
        lo, times = bench_rollout(["mid"], 240)
        print("\n## 60 s rollout (240 latent frames, 80 chunks), mid size, window 21")
        print("first 5 chunk times (s):", " ".join(f"{t:.3f}" for t in times[:5]))
        print("last 5 chunk times (s): ", " ".join(f"{t:.3f}" for t in times[-5:]))
        lo[0]["section"] = "long"
        lo[0]["chunk_times_s"] = times
        print_table(lo, ["size", "frames", "chunk_s", "compiles", "cache_bytes"])
        rows += lo
    if args.side_by_side:
        import side_by_side

        sb = side_by_side.run(args.upstream or None, args.side_runs)
        print("\n## side by side, whole process (import + load + compile + 8 chunks): mid size (dim 768, 6 heads, "
              "8 layers, 16x26 latents), 24 frames, window 21, fp32, random weights")
        print_table(sb, ["side", "runs", "total_s", "total_s_range", "import_s", "load_s", "first_chunk_s",
                         "steady_chunk_s", "chunks_s", "vs_upstream"])
        rows += sb
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"environment": env, "rows": rows}, fh, indent=2)
    os.replace(tmp, args.json)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
