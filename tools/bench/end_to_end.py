"""--end-to-end: DiT rollout + streaming decode per policy: video frames/s, first-chunk latency, peak memory."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from .common import REPO, print_table, proportional_row, published_type_map


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
    from pyramid_jax.models.taehv import modeling as taehv
    from pyramid_jax.models.vae import modeling as vae
    from pyramid_jax.models.wan.modeling import WanConfig, init_model
    from pyramid_jax.sampling.rollout import ChunkLoop, RandomNoise, Sampler
    from pyramid_jax.models.taehv import params as taehv_names
    from pyramid_jax.weights.checkpoint import with_weights
    from pyramid_jax.models.vae.params import random_vae_params

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
    fkv_map = np.where(head_map == 1, 6, 7)  # Anchor heads static, the others dynamic (a stand-in at other sizes)
    if (cfg.num_layers, cfg.num_heads) == (30, 12):
        from pyramid_jax.cache.head_map import FORCING_KV_TYPES, load_head_map

        fkv_map = load_head_map(os.path.join(REPO, "head_maps", "forcing_kv_self_forcing.json"), 30, 12,
                                types=FORCING_KV_TYPES)
    bands = 6 if (hw[0] // 2 * hw[1] // 2) % 6 == 0 else 4  # bands must divide a frame's tokens
    runs = [(label, name, kw, kv) for kv in kv_dtypes
            for label, name, kw in [("window-21", "window", dict(local_attn_size=21, sink_size=0)),
                                    ("deep_sink", "deep_sink", dict(local_attn_size=21, sink_size=10)),
                                    ("pyramid", "pyramid", dict(head_map=head_map)),
                                    ("dummy_forcing", "dummy_forcing",
                                     dict(num_dummy=cfg.num_layers * cfg.num_heads // 2)),
                                    ("forcing_kv", "forcing_kv", dict(head_map=fkv_map, sink_size=1,
                                                                      num_frame_patch=bands))]
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


def run(args, env):
    ee = bench_end_to_end(args.e2e_size, args.e2e_seconds, args.dtype if args.e2e_size == "tiny" else "bfloat16",
                          tuple(args.e2e_kv_dtypes.split(",")), args.decoder)
    print(f"\n## end to end (DiT + streaming {args.decoder} decode, no text encoder), {args.e2e_size}, "
          f"{args.e2e_seconds:g} s, random weights")
    print_table(ee, ["policy", "decoder", "kv_dtype", "backend", "chunks", "video_frames", "video_fps", "latency_s", "peak_GiB", "device"])
    return ee
