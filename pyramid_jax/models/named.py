"""A module whose parameters are a flat dict by their canonical checkpoint names (the VAE and
the text encoder, whose math is pure functions over such a dict)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class NamedWeights(nnx.Module):
    """cfg: the model's config (with a `dtype`); shapes: {canonical name: shape}. Parameters
    start at zero: they come from a checkpoint or a random init."""

    def __init__(self, cfg, shapes: dict[str, tuple[int, ...]]):
        self.cfg = cfg
        dt = jnp.dtype(cfg.dtype)
        self.weights = nnx.Dict({k: nnx.Param(jnp.zeros(s, dt)) for k, s in shapes.items()})

    def params(self) -> dict:
        """{canonical name: array}."""
        return {k: v[...] for k, v in self.weights.items()}
