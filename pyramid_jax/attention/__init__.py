"""Ragged paged attention backends and the plan structures they consume."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class PagePlan(NamedTuple):
    """Which cached pages each (layer, query frame, head) attends, for one chunk.

    frame0: [] int32, absolute latent-frame index of the chunk's first frame (RoPE time).
    slot: [L, C, H, P] int32, pool slot each page reads.
    time_shift: [L, C, H, P] int32, frames the page's RoPE time is moved by.
    valid: [L, C, H, P] bool, whether the page is attended.
    """

    frame0: jax.Array
    slot: jax.Array
    time_shift: jax.Array
    valid: jax.Array

    @staticmethod
    def empty(num_layers: int, num_frames: int, num_heads: int, frame0=0) -> "PagePlan":
        """A plan with no pages: the chunk attends only to itself."""
        z = jnp.zeros((num_layers, num_frames, num_heads, 0), jnp.int32)
        return PagePlan(jnp.asarray(frame0, jnp.int32), z, z, z.astype(bool))


class KVPool(NamedTuple):
    """The cached keys/values the model reads (the cache package owns the rest).

    k, v: [L, B, H, S, T_f, Dh], keys post-RoPE at their stored time.
    page_len: [L, H, S] int32 valid tokens per slot, or None when every slot is full.
    """

    k: jax.Array
    v: jax.Array
    page_len: jax.Array | None = None


BACKENDS = ("reference", "pallas")


PALLAS_PLATFORMS = ("tpu", "gpu", "cpu")


def check_backend(name: str, platform: str | None = None) -> str:
    """Validate attention.backend (and, given a platform, that it runs there)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention.backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "pallas" and platform is not None and platform not in PALLAS_PLATFORMS:
        raise ValueError(f"attention.backend=pallas has no lowering for platform {platform!r} (it runs on "
                         f"{', '.join(PALLAS_PLATFORMS)}); use attention.backend=reference")
    return name


def paged_attention_fn(name: str):
    """The paged attention function of a backend (same contract as reference.paged_attention).

    pallas runs as Mosaic on TPU, through Triton on GPU and interpreted on CPU (the TPU kernel:
    for tests, not for speed).
    """
    from pyramid_jax.attention import reference

    if name == "reference":
        return reference.paged_attention
    platform = jax.default_backend()
    check_backend(name, platform)
    if platform == "gpu":
        from pyramid_jax.attention import pallas_triton

        return pallas_triton.paged_attention
    from pyramid_jax.attention import pallas

    return functools.partial(pallas.paged_attention, interpret=platform != "tpu")
