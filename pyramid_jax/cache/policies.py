"""The cache-policy interface, and policies by name (the `cache.policy` config field)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, runtime_checkable

import jax
import numpy as np

from pyramid_jax.attention.plan import KVPool, PagePlan
from pyramid_jax.cache.dummy import DummyForcingPolicy, DummyParams
from pyramid_jax.cache.forcing_kv import ForcingKVParams, ForcingKVPolicy
from pyramid_jax.cache.head_map import DUMMY_TYPES, FORCING_KV_TYPES, load_head_map
from pyramid_jax.cache.pool import CacheState, PoolSpec
from pyramid_jax.cache.pyramid import PyramidPolicy
from pyramid_jax.cache.window import DEEP_SINK_SINKS, DEEP_SINK_WINDOW, WINDOW, DeepSinkPolicy, WindowPolicy


@runtime_checkable
class CachePolicy(Protocol):
    """What a KV-cache policy is to the chunk step. Every method is a pure, jit-safe function
    of the state (a CacheState) and the chunk index (may be traced); a policy is hashable (a
    static argument of the jitted step). Window, deep sink, pyramid, dummy_forcing and
    forcing_kv implement it. Optionally (not declared: isinstance checks the members above) a
    policy whose layout changes once, on the host, between chunks has `relayout_at` (the chunk
    after which) and `relayout(state, head_groups) -> (policy, state)`: Dummy Forcing after its
    typing chunk; `sampling.rollout.ChunkLoop` calls it.
    """

    spec: PoolSpec

    @property
    def num_slots(self) -> int:
        """Logical slots per (layer, head) (the widest head's)."""

    @property
    def pooled_frames(self) -> int:
        """Frames a pooled entry stands for (1: no entry is pooled); what the studio draws."""

    @property
    def head_types(self) -> np.ndarray:
        """[L, H] int32 each head's type (cache.head_map; 0 for every head of a uniform policy)."""

    def init(self, batch: int, dtype, head_groups: int = 1) -> CacheState:
        """An empty cache; head_groups: how many groups the mesh splits the heads into."""

    def plan(self, state: CacheState, chunk) -> PagePlan:
        """What the noisy passes of `chunk` attend, every layer: fields [L, C, H, P]."""

    def stage(self, state: CacheState, plan: PagePlan, layer, k_pre, v, chunk,
              q=None) -> tuple[CacheState, KVPool, PagePlan]:
        """Inside the cache-writing pass, before `layer` attends: put what the policy keeps of
        the layer's chunk keys (k_pre before RoPE, v: [B, H, F, T, Dh]) in, and plan the layer.
        q: the layer's queries after RoPE [B, N, H, Dh] (online typing), or None."""

    def commit(self, state: CacheState, chunk_kv, chunk) -> CacheState:
        """After the cache-writing pass: the rest of the chunk ([L, B, H, F, T, Dh] each)."""


@dataclasses.dataclass(frozen=True)
class PolicyKind:
    """A policy the config can name (`cache.policy`): its defaults for the config's cache
    fields and how it is built from them."""

    build: Callable  # (spec, num_frames, local_attn_size, sink_size, head_map, options) -> CachePolicy
    local_attn_size: int  # the window a run of this policy gets unless it sets one
    sink_size: int
    head_map: bool = False  # needs cache.head_map


def _window(spec, num_frames, local_attn_size, sink_size, head_map, options):
    return WindowPolicy(spec, local_attn_size=local_attn_size, sink_size=sink_size, num_frames=num_frames)


def _deep_sink(spec, num_frames, local_attn_size, sink_size, head_map, options):
    w = DEEP_SINK_WINDOW if local_attn_size in (-1, None) else local_attn_size
    return DeepSinkPolicy(spec, local_attn_size=w, sink_size=sink_size or DEEP_SINK_SINKS, num_frames=num_frames)


def _pyramid(spec, num_frames, local_attn_size, sink_size, head_map, options):
    if isinstance(head_map, str):
        head_map = load_head_map(head_map, spec.num_layers, spec.num_heads)
    return PyramidPolicy(spec, head_map)  # its windows are its own (PyramidParams)


def _params(cls, options):
    """The policy's parameters that `options` (cache config fields) set."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in names})


def _dummy_forcing(spec, num_frames, local_attn_size, sink_size, head_map, options):
    if isinstance(head_map, str):  # "" = type the heads online
        head_map = load_head_map(head_map, spec.num_layers, spec.num_heads, types=DUMMY_TYPES) if head_map else None
    rows = options.get("rows")
    return DummyForcingPolicy(spec, _params(DummyParams, options), seed=int(options.get("seed", 0)),
                              rows=None if rows is None else tuple(map(tuple, rows)), head_map=head_map)


def _forcing_kv(spec, num_frames, local_attn_size, sink_size, head_map, options):
    if isinstance(head_map, str):
        if not head_map:
            raise ValueError("cache.policy=forcing_kv needs cache.head_map: a Forcing-KV head file (JSON) or a "
                             "static / dynamic head map")
        head_map = load_head_map(head_map, spec.num_layers, spec.num_heads, types=FORCING_KV_TYPES)
    return ForcingKVPolicy(spec, head_map, _params(ForcingKVParams, dict(options, sink_size=sink_size)))


# Every policy, by its config name, with its defaults: the one place they are spelled.
REGISTRY = {
    "window": PolicyKind(_window, WINDOW, 0),  # Self Forcing
    "deep_sink": PolicyKind(_deep_sink, DEEP_SINK_WINDOW, DEEP_SINK_SINKS),  # Deep Forcing
    "pyramid": PolicyKind(_pyramid, -1, 0, head_map=True),  # Pyramid Forcing
    "dummy_forcing": PolicyKind(_dummy_forcing, -1, 0),  # Dummy Forcing: heads typed online
    "forcing_kv": PolicyKind(_forcing_kv, -1, ForcingKVParams.sink_size, head_map=True),  # Forcing-KV
}
POLICIES = tuple(REGISTRY)


def make_policy(name: str, spec: PoolSpec, num_frames: int, local_attn_size: int = -1,
                sink_size: int = 0, head_map: str = "", **options):
    """A cache policy for a rollout of num_frames latent frames.

    window: Self Forcing (local_attn_size W, sink_size S); deep_sink: Deep Forcing's 21-frame
    window with 10 pinned, time-moved sinks unless set otherwise; pyramid: per-head policies
    from `head_map` (a CSV/JSON path or an [L, H] array); dummy_forcing: groups typed online
    (or `head_map`'s first / mid / last); forcing_kv: static / dynamic heads from `head_map`
    (its published JSON head file, or a map). options: the policies' own cache fields
    (num_dummy, ar_start, local_context_length, num_frame_patch, sim_retention_ratio,
    spatial_ / temporal_ / dynamic_context_length), seed and rows (dummy_forcing's typing draws).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown cache.policy {name!r}; choose one of {', '.join(POLICIES)}")
    return REGISTRY[name].build(spec, num_frames, local_attn_size, sink_size, head_map, options)


def advance(policy, state, chunk_kv, chunk):
    """Commit a chunk without a model: stage every layer with the chunk's keys, then commit.

    chunk_kv: (k before RoPE, v), each [L, B, H, F, T, Dh]. For tests and benchmarks that
    drive a policy's stores; a rollout stages inside the model's clean pass instead.
    """
    k, v = chunk_kv
    plan = policy.plan(state, chunk)
    for layer in range(k.shape[0]):
        state, _, _ = policy.stage(state, plan, layer, k[layer], v[layer], chunk)  # no queries: no typing
    return policy.commit(state, chunk_kv, chunk)


def advance_fn(policy):
    """`advance` jitted for one policy: fn(state, chunk_kv, chunk) -> state."""
    return jax.jit(lambda state, kv, chunk: advance(policy, state, kv, chunk))
