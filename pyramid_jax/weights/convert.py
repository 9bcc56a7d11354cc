"""Checkpoint conversion: upstream / diffusers / transformers Wan DiT, VAE and umT5 weights,
and TAEHV's -> orbax + config, one interface for all (docs/conversion.md).

The program: `pyramid_jax.cli.convert` (tools/convert_checkpoint.py, pyramid-convert).
"""

from __future__ import annotations

import logging

import ml_dtypes
import numpy as np

from pyramid_jax.weights import files
from pyramid_jax.models.umt5 import params as t5_names
from pyramid_jax.models.taehv import params as taehv_names
from pyramid_jax.models.vae import params as vae_names
from pyramid_jax.models.wan import params as wan_names
from pyramid_jax.weights.checkpoint import save_params

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
