"""Checkpoint conversion: upstream / diffusers Wan DiT weights -> orbax + config.

CLI: tools/convert_checkpoint.py (this module's `main`).
"""

from __future__ import annotations

import argparse
import logging
import sys

import ml_dtypes
import numpy as np

from pyramid_jax import logs
from pyramid_jax.weights import files, t5_names, vae_names, wan_names
from pyramid_jax.weights.checkpoint import CheckpointError, save_params
from pyramid_jax.weights.errors import ConversionError

log = logging.getLogger("convert_checkpoint")

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def convert_dit(src: str, dst: str, num_heads: int | None = None, ema: bool = True,
                dtype: str = "float32"):
    """Convert a Wan DiT checkpoint at src to an orbax checkpoint at dst; returns the config."""
    sd = files.read_checkpoint(src, ema=ema, subfolder="transformer")
    layout = "diffusers" if wan_names.is_diffusers_layout(sd) else "upstream"
    if layout == "diffusers":
        sd = wan_names.diffusers_to_upstream(sd)
    cfg = wan_names.infer_config(sd, num_heads=num_heads, dtype=dtype)
    params = wan_names.upstream_to_params(sd, cfg)
    params = _cast(params, DTYPES[dtype])
    log.info("%s layout, dim %d, %d layers, %d heads, ffn %d, %s -> %s",
             layout, cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, dtype, dst)
    save_params(dst, params, cfg, source=f"{layout}:{src}")
    return cfg


def _convert_flat(src, dst, dtype, kind, subfolder, names, describe):
    """VAE / umT5: read, rename upstream keys, infer the config, check, cast, save."""
    sd = files.read_checkpoint(src, subfolder=subfolder)
    upstream = names.is_upstream(sd)
    if upstream:
        sd = names.upstream_rename(sd)
    cfg = names.infer_config(sd, dtype=dtype)
    params = _cast(names.params(sd, cfg), DTYPES[dtype])
    layout = "upstream" if upstream else names.OTHER_LAYOUT
    log.info("%s %s layout, %s, %s -> %s", layout, kind, describe(cfg), dtype, dst)
    save_params(dst, params, cfg, source=f"{layout}:{src}", kind=kind)
    return cfg


def convert_vae(src: str, dst: str, dtype: str = "float32"):
    """Convert a Wan VAE (upstream .pth or diffusers) to an orbax checkpoint (decoder only)."""
    return _convert_flat(src, dst, dtype, "vae", "vae", vae_names,
                         lambda c: f"z {c.z_dim}, base dim {c.base_dim}, mult {list(c.dim_mult)}")


def convert_t5(src: str, dst: str, dtype: str = "float32"):
    """Convert a umT5 encoder (upstream Wan .pth or transformers safetensors) to orbax."""
    return _convert_flat(src, dst, dtype, "t5", "text_encoder", t5_names,
                         lambda c: f"d_model {c.d_model}, {c.num_layers} layers, {c.num_heads} heads, "
                                   f"vocab {c.vocab_size}")


def _cast(tree, dtype):
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    return np.asarray(tree).astype(np.float32).astype(dtype)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Convert a Wan / Self Forcing PyTorch or diffusers checkpoint to pyramid_jax (orbax).")
    p.add_argument("--src", required=True, help=".pt/.pth, .safetensors, or a diffusers folder")
    p.add_argument("--dst", required=True, help="output directory (must not exist)")
    p.add_argument("--kind", default="dit", choices=["dit", "vae", "t5"])
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (inferred for the published 1.3B / 14B widths)")
    p.add_argument("--no-ema", action="store_true", help="use `generator` instead of `generator_ema`")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--verbose", action="store_true", help="after an error line, what the reading library said")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logs.setup()
    try:
        if args.kind == "dit":
            convert_dit(args.src, args.dst, args.num_heads, not args.no_ema, args.dtype)
        elif args.kind == "vae":
            convert_vae(args.src, args.dst, args.dtype)
        else:
            convert_t5(args.src, args.dst, args.dtype)
    except (ConversionError, CheckpointError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        if args.verbose and getattr(e, "detail", ""):
            print(e.detail, file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0
