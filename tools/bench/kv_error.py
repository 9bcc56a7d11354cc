"""--kv-error: the error of bf16 / 8-bit cache pages, in one attention call and in the demo model's video."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .common import ATTN_SIZES, REPO, print_table


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
    from pyramid_jax.config import parse_spec

    frames = int(round(seconds * 10 / 3)) * 3  # the demo: 10 fps, a pixel frame per latent frame
    base = ["x", f"--config={os.path.join(REPO, 'configs', 'demo.py')}", f"--config.num_frames={frames}",
            f"--config.cache.policy={policy}"]
    videos = {}
    for name in ("", *dtypes):
        c = parse_spec(base + [f"--config.cache.kv_dtype={name}"])
        models = pipeline.load_models(c, decoder=False)
        lat = pipeline.generate(c, models, pipeline.generation_inputs(c, models)).latents
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


def run(args, env):
    ka = kv_error_attention()
    print("\n## cache pages in bf16 / 8 bits vs fp32 pages: one attention call at the 1.3B shapes")
    print_table(ka, ["case", "kv_dtype", "rel_err"])
    kr = kv_error_rollout(args.kv_seconds)
    print(f"\n## the demo model's video with bf16 / 8-bit pages vs fp32 and bf16 pages ({args.kv_seconds:g} s, "
          "pyramid)")
    print_table(kr, ["case", "kv_dtype", "against", "mean_abs_px", "psnr_dB", "last_second_mean_abs_px",
                     "last_second_psnr_dB"])
    return ka + kr
