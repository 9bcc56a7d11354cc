"""Ragged paged attention backends (`reference`, `pallas`) and the plan structures they
consume (`plan`: PagePlan, KVPool)."""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
from jax.sharding import PartitionSpec as P

from pyramid_jax import sharding
from pyramid_jax.attention import pallas, pallas_triton, reference
from pyramid_jax.attention.plan import (KVPool, PagePlan, entry_lengths, entry_span, in_use_only,  # noqa: F401
                                        layer_plan)


BACKENDS = ("reference", "pallas")


PALLAS_PLATFORMS = ("tpu", "gpu", "cpu")

# The platform the step is lowered for: the host's default backend, unless a lowering for
# another platform (`jax.export` from a CPU host) says otherwise.
_TARGET = contextvars.ContextVar("pyramid_jax_attention_target", default=None)


@contextlib.contextmanager
def lowering_for(platform: str):
    """Inside: the pallas backend picks the kernel of `platform` (tpu | gpu | cuda | rocm | cpu)
    instead of the host's, so a CPU host can trace the TPU or GPU step for `jax.export`."""
    token = _TARGET.set("gpu" if platform in ("cuda", "rocm") else platform)
    try:
        yield
    finally:
        _TARGET.reset(token)


def target_platform() -> str:
    return _TARGET.get() or jax.default_backend()


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
    for tests, not for speed). Under a mesh (`jax.set_mesh`) the kernel runs per device on its
    batch rows, heads and their pages (`shard_map`); everything around it is left to the
    compiler.
    """
    if name == "reference":
        kernel = in_use_only(reference.paged_attention)
    else:
        platform = target_platform()
        check_backend(name, platform)
        if platform == "gpu":
            kernel = pallas_triton.paged_attention
        else:
            kernel = functools.partial(pallas.paged_attention, interpret=platform != "tpu")
    return functools.partial(_on_mesh, kernel)


def _on_mesh(kernel, q, k, v, pool_k, pool_v, slot, time_shift, valid, *, theta, page_len=None, k_scale=None,
             v_scale=None):
    """kernel(...), split over the active mesh's `data` (batch) and `model` (heads; pages
    laid out per head group) axes. The plan's page numbers are global; each device reads its
    own block of the pool."""
    mesh = sharding.active_mesh()
    if mesh is None:
        return kernel(q, k, v, pool_k, pool_v, slot, time_shift, valid, theta=theta, page_len=page_len,
                      k_scale=k_scale, v_scale=v_scale)
    data, model = sharding.DATA, sharding.MODEL

    def local(q, k, v, pool_k, pool_v, slot, time_shift, valid, page_len, k_scale, v_scale):
        first_page = jax.lax.axis_index(model) * pool_k.shape[1]
        return kernel(q, k, v, pool_k, pool_v, slot - first_page, time_shift, valid, theta=theta,
                      page_len=page_len, k_scale=k_scale, v_scale=v_scale)

    heads, plan, pages = P(data, None, None, model), P(None, model), P(data, model)
    scales = P() if k_scale is None else pages
    specs = (heads, P(data, None, model), P(data, None, model), pages, pages, plan,
             P() if time_shift is None else plan, plan,
             P() if page_len is None else P(model), scales, scales)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=heads, check_vma=False)(
        q, k, v, pool_k, pool_v, slot, time_shift, valid, page_len, k_scale, v_scale)


