"""--codecs: VAE decode and umT5 encode at small sizes, and the decoders at the Wan VAE's real sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .common import _median_seconds, _peak_bytes, print_table


def bench_codecs(repeats):
    """VAE decode seconds per chunk (3 latent frames, streaming) at small sizes and umT5 seconds
    per prompt, with random weights, and each stage's peak memory (XLA estimate). The decoders
    at real sizes, beside upstream's: bench_decoders.rows."""
    from pyramid_jax.models.umt5 import modeling as umt5
    from pyramid_jax.models.vae import modeling as vae
    from pyramid_jax.models.umt5.params import random_t5_params
    from pyramid_jax.models.vae.params import random_vae_params

    rows = []
    vae_sizes = {"demo": (dict(base_dim=16, num_res_blocks=1), (16, 16)),
                 "mid": (dict(), (16, 26))}  # mid: the real Wan2.1 VAE architecture at 128x208 px
    for name, (fields, hw) in vae_sizes.items():
        cfg = vae.VAEConfig(**fields)
        # the streaming decoder's own steps, on the weights as it prepares them
        prepare, first_frame, nxt = vae.streaming_steps(cfg)
        p = prepare(jax.tree.map(jnp.asarray, random_vae_params(cfg)))
        state = vae.init_state(p, cfg, 1, hw)
        z1 = jnp.zeros((1, 1, *hw, cfg.z_dim))
        _, state = first_frame(p, z1, state)

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


def run(args, env):
    cd = bench_codecs(args.repeats)
    print("\n## VAE decode and umT5 encode, fp32, batch 1, random weights (peak: XLA memory estimate)")
    print_table(cd, ["stage", "size", "shape", "seconds", "unit", "peak_MiB"])
    import bench_decoders  # tools/bench_decoders.py

    clips = tuple(bench_decoders.CLIPS)[:1 if args.codec_clips == "small" else None]
    dc = bench_decoders.rows(args.repeats, args.upstream or None, clips)
    print("\n## decoders at the Wan VAE's real sizes, fp32, batch 1, random weights: seconds to decode the "
          "clip streaming (a fresh decoder each run)" + (", upstream's classes beside ours" if args.upstream else "")
          + "; GFLOP per latent frame (XLA, bf16) and peak memory of one streaming call at 480x832")
    print_table(dc, ["decoder", "clip", "video_frames", "ours_s", "upstream_s", "vs_upstream",
                     "GFLOP_per_latent_frame_480x832", "peak_MiB_480x832"])
    return cd + dc
