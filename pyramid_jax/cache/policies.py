"""Policy construction by name (the `cache.policy` config field)."""

from __future__ import annotations

from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.window import WindowPolicy

POLICIES = ("window",)


def make_policy(name: str, spec: PoolSpec, num_frames: int, local_attn_size: int = -1,
                sink_size: int = 0, head_map=None):
    """A cache policy for a rollout of num_frames latent frames."""
    if name == "window":
        return WindowPolicy(spec, local_attn_size=local_attn_size, sink_size=sink_size,
                            num_frames=num_frames)
    raise ValueError(f"unknown cache.policy {name!r}; choose one of {', '.join(POLICIES)}")
