"""--plan: memory per policy and kv_dtype, videos per chip and expected frames/s on TPU v5e / v6e and H100."""

from __future__ import annotations

import jax.numpy as jnp

from .common import print_table
from .policies import policy_keys

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
    from pyramid_jax.models.wan.modeling import WanConfig

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


def run(args, env):
    pl = tpu_plan()
    print(f"\n## plan: Wan2.1-1.3B 480x832 bf16, one video per chip unless said; expected frames/s assume "
          f"{pl[0]['assumed_efficiency']:.0%} of peak (the measured H100 step)")
    print_table(pl, ["chip", "decoder", "policy", "kv_dtype", "memory_GiB", "fits", "videos_per_chip", "dit_TFLOP_per_chunk",
                     "vae_TFLOP_per_chunk", "video_fps"])
    return pl
