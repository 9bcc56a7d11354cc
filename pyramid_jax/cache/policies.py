"""The cache-policy interface, and policies by name (the `cache.policy` config field)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax

from pyramid_jax.attention.plan import KVPool, PagePlan
from pyramid_jax.cache.head_map import load_head_map
from pyramid_jax.cache.pool import CacheState, PoolSpec
from pyramid_jax.cache.pyramid import PyramidPolicy
from pyramid_jax.cache.window import DEEP_SINK_SINKS, DEEP_SINK_WINDOW, DeepSinkPolicy, WindowPolicy

POLICIES = ("window", "deep_sink", "pyramid")


@runtime_checkable
class CachePolicy(Protocol):
    """What a KV-cache policy is to the chunk step. Every method is a pure, jit-safe function
    of the state (a CacheState) and the chunk index (may be traced); a policy is hashable (a
    static argument of the jitted step). Window, deep sink and pyramid implement it.
    """

    spec: PoolSpec

    @property
    def num_slots(self) -> int:
        """Logical slots per (layer, head) (the widest head's)."""

    def init(self, batch: int, dtype, head_groups: int = 1) -> CacheState:
        """An empty cache; head_groups: how many groups the mesh splits the heads into."""

    def plan(self, state: CacheState, chunk) -> PagePlan:
        """What the noisy passes of `chunk` attend, every layer: fields [L, C, H, P]."""

    def stage(self, state: CacheState, plan: PagePlan, layer, k_pre, v, chunk) -> tuple[CacheState, KVPool, PagePlan]:
        """Inside the cache-writing pass, before `layer` attends: put what the policy keeps of
        the layer's chunk keys (k_pre before RoPE, v: [B, H, F, T, Dh]) in, and plan the layer."""

    def commit(self, state: CacheState, chunk_kv, chunk) -> CacheState:
        """After the cache-writing pass: the rest of the chunk ([L, B, H, F, T, Dh] each)."""


def make_policy(name: str, spec: PoolSpec, num_frames: int, local_attn_size: int = -1,
                sink_size: int = 0, head_map: str = ""):
    """A cache policy for a rollout of num_frames latent frames.

    window: Self Forcing (local_attn_size W, sink_size S); deep_sink: Deep Forcing's 21-frame
    window with 10 pinned, time-moved sinks unless set otherwise; pyramid: per-head policies from `head_map` (a
    CSV/JSON path or an [L, H] array).
    """
    if name == "window":
        return WindowPolicy(spec, local_attn_size=local_attn_size, sink_size=sink_size,
                            num_frames=num_frames)
    if name == "deep_sink":
        w = DEEP_SINK_WINDOW if local_attn_size in (-1, None) else local_attn_size
        s = sink_size or DEEP_SINK_SINKS
        return DeepSinkPolicy(spec, local_attn_size=w, sink_size=s, num_frames=num_frames)
    if name == "pyramid":
        if isinstance(head_map, str):
            head_map = load_head_map(head_map, spec.num_layers, spec.num_heads)
        return PyramidPolicy(spec, head_map)
    raise ValueError(f"unknown cache.policy {name!r}; choose one of {', '.join(POLICIES)}")


def advance(policy, state, chunk_kv, chunk):
    """Commit a chunk without a model: stage every layer with the chunk's keys, then commit.

    chunk_kv: (k before RoPE, v), each [L, B, H, F, T, Dh]. For tests and benchmarks that
    drive a policy's stores; a rollout stages inside the model's clean pass instead.
    """
    k, v = chunk_kv
    plan = policy.plan(state, chunk)
    for layer in range(k.shape[0]):
        state, _, _ = policy.stage(state, plan, layer, k[layer], v[layer], chunk)
    return policy.commit(state, chunk_kv, chunk)


def advance_fn(policy):
    """`advance` jitted for one policy: fn(state, chunk_kv, chunk) -> state."""
    return jax.jit(lambda state, kv, chunk: advance(policy, state, kv, chunk))
