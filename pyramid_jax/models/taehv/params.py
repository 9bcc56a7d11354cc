"""TAEHV weights (`taew2_1.pth`, a plain state dict) -> the TAEHV module's params.

The checkpoint's own names are canonical (one layout exists); conv kernels go channel-last.
"""

from __future__ import annotations

import numpy as np

from pyramid_jax.models.taehv.modeling import TAEHVConfig, param_shapes
from pyramid_jax.models.table import ConversionError, check_state_dict

# TGrow layers of the decoder whose stride is the time upscale: (index, channels in)
_TGROWS = ((13, 128), (19, 64))


def to_param(a: np.ndarray) -> np.ndarray:
    """torch Conv2d [out, in, kh, kw] -> [kh, kw, in, out]; biases unchanged."""
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def to_ckpt(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a


def checkpoint_shapes(cfg: TAEHVConfig) -> dict[str, tuple[int, ...]]:
    return {k: tuple(to_ckpt(np.empty(s, np.float32)).shape) for k, s in param_shapes(cfg).items()}


def canonical(sd: dict) -> tuple[dict, str]:
    return sd, "taehv"


def infer_config(sd: dict, dtype: str = "float32") -> TAEHVConfig:
    """Latent channels from the first decoder conv; each time upscale from its TGrow's width
    (the space upscales have no weights: on, as in taew2_1)."""
    if "decoder.1.weight" not in sd or "encoder.0.weight" not in sd:
        raise ConversionError("not a TAEHV checkpoint: it needs encoder.0.weight and decoder.1.weight "
                              "(a plain state dict such as taew2_1.pth)")
    time = tuple(sd.get(f"decoder.{i}.conv.weight", np.empty((2 * c,))).shape[0] == 2 * c for i, c in _TGROWS)
    return TAEHVConfig(latent_channels=int(sd["decoder.1.weight"].shape[1]),
                       image_channels=int(sd["encoder.0.weight"].shape[1]), decoder_time_upscale=time, dtype=dtype)


def params(sd: dict, cfg: TAEHVConfig) -> dict:
    """Check every key and shape (ConversionError names the differences), then lay out."""
    check_state_dict(sd, checkpoint_shapes(cfg))
    return {k: np.ascontiguousarray(to_param(np.asarray(sd[k]))) for k in param_shapes(cfg)}


def random_checkpoint(cfg: TAEHVConfig = TAEHVConfig(), seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in the checkpoint's names and torch layout, from numpy's generator (the
    same numbers on every machine): He-scaled kernels, small biases. Tests and demos before
    trained weights exist."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in sorted(checkpoint_shapes(cfg).items()):
        if k.endswith(".bias"):
            out[k] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def describe(cfg: TAEHVConfig) -> str:
    return f"TAEHV, {cfg.latent_channels} latent channels, time upscale {list(cfg.decoder_time_upscale)}"
