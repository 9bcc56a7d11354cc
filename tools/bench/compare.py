"""--compare: the head-aware cache family at Wan2.1-1.3B 480x832 (30 layers x 12 heads, 1560
tokens a frame), from the policies' own plans and state shapes: KV bytes held and attention
FLOPs per chunk at 5 s, 60 s and 5 min, with bf16 pages and with 8-bit pages. No model runs:
the plans depend only on the slot tables, so each policy is driven on a small grid whose
frames fill as many pages as the real grid's and counted at the real size.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .common import REPO, _nbytes, print_table, published_type_map

LAYERS, HEADS, HEAD_DIM, GRID = 30, 12, 128, (30, 52)
TOKENS = GRID[0] * GRID[1]
SMALL = (2, 6)  # 12 tokens: 6 bands of 2 (Forcing-KV), a pooled 1 x 3 block (Pyramid's Veil): the real entries
LENGTHS = (("5 s", 21), ("60 s", 240), ("5 min", 1200))  # latent frames (16 fps video, 4 frames a latent)
STEPS = 4  # noisy passes per chunk; one cache-writing pass follows


def dummy_groups(layers=LAYERS, heads=HEADS):
    """A Dummy Forcing grouping with upstream's count (half the heads dummy), the rest split
    evenly between first and mid (upstream chooses per video; its memory spans the split)."""
    from pyramid_jax.cache.head_map import FIRST, LAST, MID

    row = np.resize([LAST, FIRST, LAST, MID], heads)
    return np.tile(row, (layers, 1))


def cases():
    """(label, policy name, options) of each policy of the family with upstream's settings."""
    from pyramid_jax.cache.head_map import FORCING_KV_TYPES, load_head_map

    fkv = load_head_map(os.path.join(REPO, "head_maps", "forcing_kv_self_forcing.json"), LAYERS, HEADS,
                        types=FORCING_KV_TYPES)
    return [("window-21", "window", dict(local_attn_size=21, sink_size=0)),
            ("deep_sink (21, 10 pinned)", "deep_sink", dict(local_attn_size=21, sink_size=10)),
            ("pyramid (published map)", "pyramid", dict(head_map=published_type_map(LAYERS, HEADS))),
            ("dummy_forcing (180 last / 90 first / 90 mid)", "dummy_forcing", dict(head_map=dummy_groups())),
            ("forcing_kv (134 static / 226 dynamic)", "forcing_kv", dict(head_map=fkv, sink_size=1))]


def attended_tokens(state, slot, valid):
    """Keys each (query frame, head) attends ([..., C', H]) counted at the real size: the
    cached entries (page lengths scaled from the small grid) plus the chunk's own 3 frames."""
    scale = TOKENS // (SMALL[0] * SMALL[1])
    page_len = np.asarray(state.page_len)
    plen = page_len[np.minimum(np.asarray(slot), len(page_len) - 1)] * scale  # unused entries point past the pool
    return (plen * np.asarray(valid)).sum(-1) + 3 * TOKENS


def chunk_flops(state, plan, clean, staged) -> float:
    """Attention FLOPs of one chunk (4 noisy passes and the cache-writing one): per layer, query
    frame and head, 4 x T queries x keys x head_dim (QK^T and PV)."""
    per_row = lambda toks, rows: float(toks.sum()) * (3 // rows) * 4 * TOKENS * HEAD_DIM
    noisy = per_row(attended_tokens(state, plan.slot, plan.valid), plan.slot.shape[1])
    cleaned = sum(per_row(attended_tokens(staged, lp.slot, lp.valid), lp.slot.shape[0]) for lp in clean)
    return STEPS * noisy + cleaned


def measure(name, kw, stops):
    """Drive one policy on the small grid to each stop chunk; FLOPs per chunk at each."""
    from pyramid_jax.cache.policies import advance_fn, make_policy
    from pyramid_jax.cache.pool import PoolSpec

    policy = make_policy(name, PoolSpec(LAYERS, HEADS, 8, SMALL, 3), max(stops) * 3 + 3, **kw)
    state = policy.init(1, jnp.float32)
    advance = advance_fn(policy)
    plan_fn = jax.jit(policy.plan)
    stage_fn = jax.jit(policy.stage, static_argnums=2)
    kv = jnp.asarray(np.random.default_rng(0).standard_normal((LAYERS, 1, HEADS, 3, SMALL[0] * SMALL[1], 8)),
                     jnp.float32)
    out = {}
    for k in range(max(stops) + 1):
        chunk = jnp.int32(k)
        if k in stops:
            plan = plan_fn(state, chunk)
            staged, clean = state, []
            for layer in range(LAYERS):
                staged, _, lp = stage_fn(staged, plan, layer, kv[layer], kv[layer], chunk)
                clean.append(jax.tree.map(np.asarray, lp))
            out[k] = chunk_flops(state, jax.tree.map(np.asarray, plan), clean, staged)
        state = advance(state, (kv, kv), chunk)
    return out


def held_bytes(name, kw, kv_dtype, frames) -> tuple[int, int]:
    """(steady, peak) bytes of the policy's cache at the real size (B = 1, bf16 model), from its
    state shapes. They differ for Dummy Forcing only: its typing layout holds 1 + R frames a
    head until the typing chunk, its groups' layout after it."""
    from pyramid_jax.cache.dummy import DummyGroupsPolicy
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec

    spec = PoolSpec(LAYERS, HEADS, HEAD_DIM, GRID, 3, kv_dtype=kv_dtype)
    real = make_policy(name, spec, frames, **kw)
    nbytes = lambda p: _nbytes(jax.eval_shape(lambda: p.init(1, jnp.bfloat16)))
    first = nbytes(real)
    if name != "dummy_forcing":
        return first, first
    return nbytes(DummyGroupsPolicy(spec, kw["head_map"], real.params)), first


def global_row(frames, kv_dtype):
    """Nothing evicted, for scale: every frame of every head, and the FLOPs of attending them."""
    per_token = 2 * (2 * HEAD_DIM if kv_dtype == "bfloat16" else HEAD_DIM + 4)  # k and v (8-bit: + fp32 scales)
    cached = frames - 3
    nbytes = LAYERS * HEADS * cached * TOKENS * per_token
    flops = (STEPS + 1) * LAYERS * HEADS * 3 * 4 * TOKENS * HEAD_DIM * (cached + 3) * TOKENS
    return nbytes, flops


def comparison():
    stops = {label: frames // 3 - 1 for label, frames in LENGTHS}
    rows = []
    for label, name, kw in cases():
        flops = measure(name, kw, set(stops.values()))
        for kv_dtype in ("bfloat16", "int8"):
            for length, frames in LENGTHS:
                steady, peak = held_bytes(name, kw, kv_dtype, frames)
                rows.append(dict(policy=label, pages=kv_dtype, length=length, kv_GB=steady / 1e9,
                                 peak_kv_GB=peak / 1e9, attn_TFLOP_per_chunk=flops[stops[length]] / 1e12))
    for kv_dtype in ("bfloat16", "int8"):
        for length, frames in LENGTHS:
            nbytes, flops = global_row(frames, kv_dtype)
            rows.append(dict(policy="global (nothing evicted)", pages=kv_dtype, length=length, kv_GB=nbytes / 1e9,
                             peak_kv_GB=nbytes / 1e9, attn_TFLOP_per_chunk=flops / 1e12))
    return rows


DEMO_POLICIES = (("window-21", ["--config.cache.policy=window", "--config.cache.local_attn_size=21"]),
                 ("deep_sink", ["--config.cache.policy=deep_sink", "--config.cache.local_attn_size=21",
                                "--config.cache.sink_size=10"]),
                 ("pyramid", ["--config.cache.policy=pyramid"]),
                 ("dummy_forcing", ["--config.cache.policy=dummy_forcing", "--config.cache.head_map="]),
                 ("forcing_kv", ["--config.cache.policy=forcing_kv", "--config.cache.sink_size=1",
                                 "--config.cache.head_map=assets/demo/forcing_kv_heads.json"]))


def demo_ms_per_chunk(repeats: int, chunks: int = 30):
    """ms per chunk (DiT only, steady state: the median of chunks after the first) of the demo
    model at 60 s-like positions, per policy and page dtype, on this machine."""
    import time

    from pyramid_jax import pipeline
    from pyramid_jax.config import parse_spec
    from pyramid_jax.sampling.rollout import ChunkLoop, RandomNoise, text_kv_of

    rows = []
    for label, flags in DEMO_POLICIES:
        for kv_dtype in ("bfloat16", "int8"):
            spec = parse_spec(["bench", f"--config={REPO}/configs/demo.py", *flags,
                               f"--config.cache.kv_dtype={kv_dtype}", f"--config.num_frames={3 * chunks}"])
            models = pipeline.load_models(spec, text=False, decoder=False)
            cfg = models.dit.cfg
            hw = pipeline.latent_size(spec, cfg)
            policy = pipeline.build_policy(spec, cfg, hw, 3 * chunks)
            ctx = np.zeros((1, cfg.text_len, cfg.text_dim), np.float32)
            loop = ChunkLoop(models.dit, policy, models.sampler, text_kv_of(models.dit, ctx, sampler=models.sampler),
                             RandomNoise(0, (1, 3 * chunks, cfg.in_channels, *hw), models.sampler))
            times = []
            for _ in range(chunks):
                t0 = time.perf_counter()
                jax.block_until_ready(loop.next_on_device()[0])
                times.append(time.perf_counter() - t0)
            rows.append(dict(section="compare_demo", policy=label, pages=kv_dtype, chunks=chunks,
                             ms_per_chunk=1e3 * float(np.median(times[1:])), first_chunk_s=times[0]))
    return rows


def run(args, env):
    rows = [dict(section="compare", **r) for r in comparison()]
    print("\n## the head-aware family at Wan2.1-1.3B 480x832, B = 1: KV held and attention per chunk (5 passes), "
          "at the last chunk of each length")
    print_table(rows, ["policy", "pages", "length", "kv_GB", "peak_kv_GB", "attn_TFLOP_per_chunk"])
    demo = demo_ms_per_chunk(args.repeats)
    print(f"\n## the demo model (64x64 pixels, fp32), ms per chunk on {env['device']} ({env['cpu_count']} CPUs)")
    print_table(demo, ["policy", "pages", "chunks", "ms_per_chunk", "first_chunk_s"])
    return rows + demo
