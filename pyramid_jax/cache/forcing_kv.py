"""Forcing-KV's head-aware cache (arXiv 2605.09681), as its public code keeps it.

Heads are typed offline (a head file: static or dynamic per head). Every pass of chunk k (noisy
and cache-writing alike) attends the chunk's own frames plus, with W = max(spatial, temporal):
  before grouping (k <= ar_start), and layer 0 always:  the `sink_size` first frames and the
      last W frames after them
  static heads:   the sinks and the last `spatial_context_length` frames
  dynamic heads:  the sinks, the last `temporal_context_length` frames and S: the
      dynamic_context_length * num_frame_patch lowest-scoring of 3 * num_frame_patch token
      bands, re-chosen at every cache-writing pass from grouping on
Keys are stored after RoPE at their own frame and never moved in time.

The bands: the candidates are the 3 frames starting `temporal` frames before the chunk, each
cut into num_frame_patch contiguous raster bands; a band's score is the mean over its tokens of
the cosine similarity between that frame's key and the next frame's at the same token, computed
in layer 1 only, over its dynamic heads' post-RoPE keys concatenated, for sample 0; the
choice (sorted by frame * num_frame_patch + band) serves every dynamic head of every layer and
every sample, as upstream. It is made inside the jitted commit: no host round trip. The band
store is replaced at each pass, not accumulated.

A page holds one band (T / num_frame_patch tokens): a frame fills num_frame_patch pages, a band
one. Each head owns sink_size + W frame slots, and a dynamic head of a layer past 0 the band
slots besides.

Upstream sources: zju-jiyicheng/Forcing-KV, wan/modules/causal_model_forcingkv.py (caches,
dynamic_compression, the head file loader), configs/forcing-kv/ (the values),
configs_head/forcingkv_heads_selfforcing.json (the Self Forcing head file).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pyramid_jax.attention.plan import PagePlan, layer_plan
from pyramid_jax.cache.head_map import DYNAMIC, FORCING_KV_TYPES, check_map
from pyramid_jax.cache.pool import CacheState, PoolSpec, dequantize, empty_state, rope_keys, write_entries


@dataclasses.dataclass(frozen=True)
class ForcingKVParams:
    """Upstream's values (configs/forcing-kv/forcingkv_self_forcing_inference.yaml)."""

    sink_size: int = 1  # frames
    ar_start: int = 1  # heads are grouped after this chunk's cache-writing pass
    spatial_context_length: int = 1  # frames a static head keeps
    temporal_context_length: int = 1  # frames a dynamic head keeps
    dynamic_context_length: int = 1  # frames' worth of bands a dynamic head keeps
    num_frame_patch: int = 6  # bands per frame
    sim_retention_ratio: float = 0.33  # of the 3 * num_frame_patch candidate bands

    @property
    def window(self) -> int:
        return max(self.spatial_context_length, self.temporal_context_length)

    @property
    def num_bands(self) -> int:
        return self.dynamic_context_length * self.num_frame_patch


class ForcingKVState(NamedTuple):
    """What Forcing-KV keeps besides the pages (CacheState.own).

    head_kind: [L, H] int32 STATIC / DYNAMIC (static; an array so it splits with the heads).
    band: [K] int32 the band number (within its frame) each band slot holds, -1 none.
    """

    head_kind: jax.Array
    band: jax.Array

    def logical_axes(self) -> "ForcingKVState":
        return ForcingKVState(head_kind=P(None, "heads"), band=P())


@dataclasses.dataclass(frozen=True)
class ForcingKVPolicy:
    spec: PoolSpec
    head_map: tuple  # [L][H] STATIC / DYNAMIC
    params: ForcingKVParams = ForcingKVParams()

    def __post_init__(self):
        sp, p = self.spec, self.params
        m = check_map(self.head_map, sp.num_layers, sp.num_heads, "cache.head_map", types=FORCING_KV_TYPES)
        object.__setattr__(self, "head_map", tuple(tuple(int(v) for v in row) for row in m))
        t, n = sp.tokens_per_frame, p.num_frame_patch
        if n < 1 or t % n:
            raise ValueError(f"cache.num_frame_patch ({n}) must divide a frame's {t} tokens into equal bands")
        if not 1 <= p.temporal_context_length <= 3 or p.spatial_context_length < 1 or p.sink_size < 0:
            raise ValueError("cache.temporal_context_length must be 1..3, spatial_context_length >= 1, sink_size >= 0")
        candidates = 3 * n
        kept = min(max(int(round(candidates * p.sim_retention_ratio)), 0), candidates)
        if kept != p.num_bands:
            raise ValueError(f"cache.sim_retention_ratio ({p.sim_retention_ratio}) keeps {kept} of {candidates} "
                             f"bands, but dynamic_context_length x num_frame_patch is {p.num_bands}: make them agree")
        if sp.frames_per_chunk != 3:
            raise ValueError("forcing_kv chooses its bands among 3 frames: it needs 3 frames per chunk")

    # ---- static layout -------------------------------------------------------------
    @property
    def types(self) -> np.ndarray:
        return np.asarray(self.head_map, np.int32)

    @property
    def head_types(self) -> np.ndarray:
        return self.types

    @property
    def band_tokens(self) -> int:
        return self.spec.tokens_per_frame // self.params.num_frame_patch

    @property
    def has_bands(self) -> np.ndarray:
        """[L, H] bool: heads that keep bands (dynamic, past layer 0)."""
        m = self.types == DYNAMIC
        m[0] = False
        return m

    @property
    def frame_slots(self) -> int:
        return self.params.sink_size + self.params.window

    @property
    def num_slots(self) -> int:
        return self.frame_slots + (self.params.num_bands if self.has_bands.any() else 0)

    @property
    def pooled_frames(self) -> int:
        return 1

    def init(self, batch: int, dtype, head_groups: int = 1) -> CacheState:
        sp, p = self.spec, self.params
        idx = np.arange(self.num_slots)
        bands = self.has_bands[..., None] & (idx >= self.frame_slots)
        pages = np.where(idx < self.frame_slots, p.num_frame_patch, np.where(bands, 1, 0))
        own = ForcingKVState(jnp.asarray(self.types), jnp.full((p.num_bands,), -1, jnp.int32))
        return empty_state(sp, batch, dtype, pages, self.band_tokens, head_groups=head_groups, own=own)

    def trace_slots(self, state, slot_time, length):
        """(frame, token_start, token_stop, pooled) per slot [L, H, S] (cache.trace): a band
        slot holds tokens [band * T / n, (band + 1) * T / n) of its frame."""
        band = np.asarray(state.own.band)
        start = np.zeros_like(length)
        start[..., self.frame_slots:] = np.maximum(band, 0) * self.band_tokens
        return slot_time, start, start + length, np.zeros_like(length)

    # ---- plan ----------------------------------------------------------------------
    def plan(self, state: CacheState, chunk) -> PagePlan:
        """[L, 1, H, S]: every pass and query frame of a chunk reads the same entries."""
        p = self.params
        frame0 = jnp.asarray(chunk, jnp.int32) * self.spec.frames_per_chunk
        st = state.slot_time
        idx = jnp.arange(st.shape[-1])
        committed = (st >= 0) & (st < frame0)
        is_sink, is_band = idx < p.sink_size, idx >= self.frame_slots
        ring = committed & ~is_sink & ~is_band
        grouped = (jnp.asarray(chunk) > p.ar_start) & (jnp.arange(st.shape[0]) > 0)[:, None, None]
        dynamic = (state.own.head_kind == DYNAMIC)[..., None]
        recent = jnp.where(dynamic, p.temporal_context_length, p.spatial_context_length)
        grouped_valid = (committed & is_sink) | (ring & (st >= frame0 - recent)) | (dynamic & is_band & (st >= 0))
        valid = jnp.where(grouped, grouped_valid, committed & ~is_band)
        return PagePlan(frame0, state.slot_page[:, None], None, valid[:, None])

    # ---- the cache-writing pass and commit -----------------------------------------
    def stage(self, state: CacheState, plan: PagePlan, layer, k_pre, v, chunk, q=None):
        """The cache-writing pass reads what the noisy passes read (the bands are chosen after it)."""
        return state, state.pool(), layer_plan(plan, layer)

    def ring_slot(self, t):
        p = self.params
        return p.sink_size + (t - p.sink_size) % p.window

    def choose_bands(self, state: CacheState, k_roped, frame0) -> jax.Array:
        """The kept bands as candidate numbers (frame offset * num_frame_patch + band), sorted: [K].
        k_roped: the chunk's keys after RoPE, [L, B, H, F, T, Dh]."""
        p, sp = self.params, self.spec
        n, tb = p.num_frame_patch, self.band_tokens
        dyn = np.flatnonzero(self.types[1] == DYNAMIC)  # layer 1's dynamic heads decide
        first = frame0 - p.temporal_context_length

        def key(i):  # frame first + i of layer 1, sample 0: [Hd, T, Dh] float32
            t = first + i
            page = state.slot_page[1, dyn, self.ring_slot(t)][:, None] + jnp.arange(n)  # [Hd, n]
            pool = state.pool()
            old = dequantize(pool.k[0, page], None if pool.k_scale is None else pool.k_scale[0, page])
            old = old.reshape(len(dyn), sp.tokens_per_frame, sp.head_dim)
            new = k_roped[1, 0, dyn, jnp.clip(t - frame0, 0, sp.frames_per_chunk - 1)].astype(jnp.float32)
            return jnp.where(t < frame0, old, new)

        chain = jnp.stack([key(i) for i in range(4)])  # [4, Hd, T, Dh]
        chain = chain.transpose(0, 2, 1, 3).reshape(4, n, tb, -1)  # a token's heads concatenated
        a, b = chain[:3], chain[1:]
        eps = 1e-8
        cos = (a * b).sum(-1) / (jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
                                 * jnp.maximum(jnp.linalg.norm(b, axis=-1), eps))
        scores = cos.mean(-1).reshape(-1)  # [3 n]
        return jnp.sort(jnp.argsort(scores, stable=True)[:p.num_bands])

    def commit(self, state: CacheState, chunk_kv, chunk) -> CacheState:
        """From grouping on, the new bands (before the ring forgets their frame), then the
        chunk's frames into the sinks and the ring. chunk_kv: (k before RoPE, v), each
        [L, B, H, F, T, Dh]."""
        p, sp = self.params, self.spec
        k_pre, v = chunk_kv
        f, n, tb = sp.frames_per_chunk, p.num_frame_patch, self.band_tokens
        frame0 = jnp.asarray(chunk, jnp.int32) * f
        times = frame0 + jnp.arange(f, dtype=jnp.int32)
        k = rope_keys(sp, k_pre, times)
        n_l, n_h = sp.num_layers, sp.num_heads
        if self.has_bands.any():
            chosen = self.choose_bands(state, k, frame0)  # [K]
            t = frame0 - p.temporal_context_length + chosen // n  # each band's frame
            band = chosen % n
            # each band from the pool (a committed frame) or the chunk, every layer and head
            page = state.slot_page[:, :, self.ring_slot(t)] + band  # [L, H, K]
            pool = state.pool()
            read = lambda x, s: dequantize(jnp.moveaxis(x[:, page], 0, 1), None if s is None else
                                           jnp.moveaxis(s[:, page], 0, 1), k.dtype)  # [L, B, H, K, Tp, Dh]
            tok = band[:, None] * tb + jnp.arange(tb)  # [K, Tb]
            fi = jnp.clip(t - frame0, 0, f - 1)
            new = lambda x: x[:, :, :, fi[:, None], tok]  # [L, B, H, K, Tb, Dh]
            old_frame = (t < frame0)[:, None, None]
            band_k = jnp.where(old_frame, read(pool.k, pool.k_scale), new(k))
            band_v = jnp.where(old_frame, read(pool.v, pool.v_scale), new(v.astype(k.dtype)))
            grouped = jnp.asarray(chunk) > p.ar_start
            slots = self.frame_slots + jnp.arange(p.num_bands)
            slots = jnp.where(jnp.asarray(self.has_bands)[..., None] & grouped, slots, self.num_slots)
            state = write_entries(state, band_k, band_v, slots, jnp.broadcast_to(t, (n_l, n_h, p.num_bands)))
            state = state._replace(own=state.own._replace(band=jnp.where(grouped, band, state.own.band)))
        keep = (times < p.sink_size) | (times >= times[-1] + 1 - p.window)
        slots = jnp.where(times < p.sink_size, times, jnp.where(keep, self.ring_slot(times), self.num_slots))
        slots = jnp.broadcast_to(slots, (n_l, n_h, f))
        return write_entries(state, k, v, slots, jnp.broadcast_to(times, slots.shape))
