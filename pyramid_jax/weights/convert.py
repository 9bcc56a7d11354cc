"""Checkpoint conversion: upstream / diffusers / transformers Wan DiT, VAE and umT5 weights,
and TAEHV's -> orbax + config, one interface for all (docs/conversion.md).

CLI: tools/convert_checkpoint.py (this module's `main`).
"""

from __future__ import annotations

import argparse
import logging
import sys

import ml_dtypes
import numpy as np

from pyramid_jax import logs
from pyramid_jax.weights import files, t5_names, taehv_names, vae_names, wan_names
from pyramid_jax.weights.checkpoint import CheckpointError, save_params
from pyramid_jax.weights.errors import ConversionError

log = logging.getLogger("convert_checkpoint")

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


# kind -> (name module, subfolder of a diffusers pipeline folder). Each name module offers
# canonical(sd), infer_config(sd, dtype, ...), params(sd, cfg) and describe(cfg).
FORMATS = {"dit": (wan_names, "transformer"), "vae": (vae_names, "vae"), "t5": (t5_names, "text_encoder"),
           "taehv": (taehv_names, None)}


def convert(kind: str, src: str, dst: str, dtype: str = "float32", num_heads: int | None = None,
            ema: bool = True):
    """Convert the DiT, VAE, umT5 or TAEHV checkpoint at src (upstream .pt/.pth, safetensors, or a
    diffusers / transformers folder) to an orbax checkpoint at dst; returns its config.
    num_heads and ema concern the DiT (heads are not visible in its weights; Self Forcing
    files hold `generator_ema` and `generator`)."""
    names, subfolder = FORMATS[kind]
    sd, layout = names.canonical(files.read_checkpoint(src, ema=ema, subfolder=subfolder))
    cfg = names.infer_config(sd, dtype=dtype, **({"num_heads": num_heads} if kind == "dit" else {}))
    params = _cast(names.params(sd, cfg), DTYPES[dtype])
    log.info("%s layout (%s), %s, %s -> %s", layout, kind, names.describe(cfg), dtype, dst)
    save_params(dst, params, cfg, source=f"{layout}:{src}", kind=kind)
    return cfg


def _cast(tree, dtype):
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    return np.asarray(tree).astype(np.float32).astype(dtype)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Convert a Wan / Self Forcing PyTorch or diffusers checkpoint to pyramid_jax (orbax).")
    p.add_argument("--src", required=True, help=".pt/.pth, .safetensors, or a diffusers folder")
    p.add_argument("--dst", required=True, help="output directory (must not exist)")
    p.add_argument("--kind", default="dit", choices=list(FORMATS))
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
        convert(args.kind, args.src, args.dst, args.dtype, args.num_heads, not args.no_ema)
    except (ConversionError, CheckpointError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        if args.verbose and getattr(e, "detail", ""):
            print(e.detail, file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0
