"""A module whose parameters are a flat dict by their canonical checkpoint names (the VAE,
TAEHV and the text encoder, whose math is pure functions over such a dict), each parameter
carrying its logical axes (pyramid_jax.sharding) so the module can be placed on a mesh."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
from flax import nnx

from pyramid_jax.sharding import param_meta


class NamedWeights(nnx.Module):
    """cfg: the model's config (with a `dtype`); shapes: {canonical name: shape}; axes(name,
    shape): that parameter's logical axes (None: replicated). Parameters start at zero: they
    come from a checkpoint or a random init."""

    def __init__(self, cfg, shapes: dict[str, tuple[int, ...]], axes: Callable | None = None):
        self.cfg = cfg
        dt = jnp.dtype(cfg.dtype)
        axes = axes or (lambda name, shape: (None,) * len(shape))
        self.weights = nnx.Dict({k: nnx.Param(jnp.zeros(s, dt), **param_meta(*axes(k, s))) for k, s in shapes.items()})

    def params(self) -> dict:
        """{canonical name: array}."""
        return {k: v[...] for k, v in self.weights.items()}


def channel_axes(name: str, shape: tuple[int, ...]) -> tuple:
    """Convolution stacks in channel-last layout (the Wan VAE, TAEHV): every weight's output
    channels, and the per-channel biases and norm scales, are `channels` (split over the mesh's
    `model` axis); the rest replicated."""
    return (None,) * (len(shape) - 1) + ("channels",)
