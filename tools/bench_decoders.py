"""Decoder costs for tools/benchmark.py (--codecs, --plan, --end-to-end --decoder).

The two decoders of the DiT's latents: the Wan2.1 VAE ("wan") and TAEHV ("taehv"), at the
Wan2.1 VAE's real sizes with random weights, fp32 on this machine:
- seconds to decode a clip as `generate` does (the streaming decoders), median of repeats,
  and, given a Self Forcing checkout, upstream's own classes on the same clip in the same run
  (wan/modules/vae.py `WanVAE_.decode`; demo_utils/taehv.py `TAEHV.decode_video(parallel=
  False)`, as its demo decodes);
- FLOPs per latent frame (XLA's cost analysis of the jitted decode, bf16) and peak memory
  (XLA's estimate: arguments + outputs + temporaries).
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import _median_seconds  # one warm-up, then the median of repeats

DECODERS = ("wan", "taehv")
# (label, latent grid, latent frames): the check of the issue that found the gap, and one chunk
# of the real size (the first 3 latent frames of a video: 9 video frames)
CLIPS = {"64x64 px, 5 latent frames": ((8, 8), 5), "480x832 px, one chunk": ((60, 104), 3)}


def _weights(kind: str, dtype: str = "float32"):
    from pyramid_jax.models.taehv import modeling as taehv
    from pyramid_jax.models.vae import modeling as vae
    from pyramid_jax.models.taehv import params as taehv_names
    from pyramid_jax.weights.checkpoint import with_weights
    from pyramid_jax.models.vae.params import random_vae_params

    if kind == "wan":
        cfg = vae.VAEConfig(dtype=dtype)
        return with_weights(vae.WanVAEDecoder, cfg, random_vae_params(cfg))
    cfg = taehv.TAEHVConfig(dtype=dtype)
    return with_weights(taehv.TAEHV, cfg, taehv_names.params(taehv_names.random_checkpoint(cfg), cfg))


def streaming(kind: str, model, latent_hw):
    from pyramid_jax.models.taehv import modeling as taehv
    from pyramid_jax.models.vae import modeling as vae

    return (vae.StreamingDecoder if kind == "wan" else taehv.StreamingTAEHV)(model, 1, latent_hw)


def ours_seconds(kind: str, latent_hw, frames: int, repeats: int) -> float:
    """A fresh streaming decoder per run (a video's start), the clip pushed in chunks of 3."""
    model = _weights(kind)
    z = np.random.default_rng(0).standard_normal((1, frames, 16, *latent_hw)).astype(np.float32)

    def run():
        dec = streaming(kind, model, latent_hw)
        for s in range(0, frames, 3):
            out = dec.push_on_device(z[:, s:s + 3])
        out.block_until_ready()

    return _median_seconds(run, repeats)


def upstream_seconds(repo: str, kind: str, latent_hw, frames: int, repeats: int) -> float:
    import torch

    torch.set_grad_enabled(False)
    rel = os.path.join("wan", "modules", "vae.py") if kind == "wan" else os.path.join("demo_utils", "taehv.py")
    spec = importlib.util.spec_from_file_location(f"upstream_{kind}", os.path.join(repo, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((1, frames, 16, *latent_hw)).astype(np.float32))
    if kind == "wan":
        m = mod.WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                        temperal_downsample=[False, True, True], dropout=0.0).eval()
        scale = [torch.zeros(16), torch.ones(16)]
        x = z.permute(0, 2, 1, 3, 4).contiguous()
        return _median_seconds(lambda: m.decode(x, scale), repeats)
    m = mod.TAEHV(checkpoint_path=None).eval()
    return _median_seconds(lambda: m.decode_video(z, parallel=False), repeats)


def _abstract(kind: str, latent_hw, dtype):
    """(jitted decode of one chunk of 3 latent frames after the first, its abstract args)."""
    from pyramid_jax.models.taehv import modeling as taehv
    from pyramid_jax.models.vae import modeling as vae

    if kind == "wan":
        cfg = vae.VAEConfig(dtype=jnp.dtype(dtype).name)
        params = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in vae.param_shapes(cfg).items()}
        state = jax.eval_shape(lambda p: vae.init_state(p, cfg, 1, latent_hw, dtype), params)
        return (lambda p, z, s: vae.decode_frame(p, cfg, z, s, first=False)), params, cfg.z_dim, state
    cfg = taehv.TAEHVConfig(dtype=jnp.dtype(dtype).name)
    params = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in taehv.param_shapes(cfg).items()}
    memory = jax.eval_shape(lambda p: taehv.init_memory(p, cfg, 1, latent_hw, dtype), params)
    return (lambda p, z, m: taehv.decode_chunk(p, cfg, z, m)), params, cfg.latent_channels, memory


def flops_per_latent_frame(kind: str, latent_hw=(60, 104), dtype=jnp.bfloat16) -> float:
    """XLA's FLOP count of decoding one latent frame (4 video frames), bf16. The Wan VAE is
    measured as it streams (one latent frame a call), TAEHV on a chunk of 3 (per frame)."""
    fn, params, ch, state = _abstract(kind, latent_hw, dtype)
    frames = 1 if kind == "wan" else 3
    z = jax.ShapeDtypeStruct((1, frames, *latent_hw, ch), dtype)
    return float(jax.jit(fn).lower(params, z, state).cost_analysis()["flops"]) / frames


def peak_bytes(kind: str, latent_hw, dtype=jnp.float32) -> float:
    """XLA's memory estimate of one streaming call (Wan: a latent frame, TAEHV: a chunk of 3)."""
    fn, params, ch, state = _abstract(kind, latent_hw, dtype)
    z = jax.ShapeDtypeStruct((1, 1 if kind == "wan" else 3, *latent_hw, ch), dtype)
    m = jax.jit(fn).lower(params, z, state).compile().memory_analysis()
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) if m else float("nan")


def rows(repeats: int, upstream: str | None = None, clips=tuple(CLIPS)) -> list[dict]:
    """Per decoder and clip: ours (and upstream's) seconds, the ratio, XLA's FLOPs per latent
    frame and peak memory at 480x832."""
    out = []
    for kind in DECODERS:
        flops = flops_per_latent_frame(kind)
        peak = peak_bytes(kind, (60, 104))
        for label in clips:
            hw, frames = CLIPS[label]
            row = dict(section="decoders", decoder=kind, clip=label, video_frames=1 + 4 * (frames - 1),
                       ours_s=ours_seconds(kind, hw, frames, repeats),
                       GFLOP_per_latent_frame_480x832=flops / 1e9, peak_MiB_480x832=peak / 2**20)
            if upstream:
                row["upstream_s"] = upstream_seconds(upstream, kind, hw, frames, repeats)
                row["vs_upstream"] = row["ours_s"] / row["upstream_s"]
            out.append(row)
            print(f"# {kind} {label}: ours {row['ours_s']:.2f} s"
                  + (f", upstream {row['upstream_s']:.2f} s ({row['vs_upstream']:.2f}x)" if upstream else ""),
                  flush=True)
    return out
