"""Pyramid Forcing's head-aware cache, as its reference implementation keeps it.

Every head is typed by the head map and attends, per query frame t_q:
  sinks   the first `sink` frames (Wave 1, Anchor and Veil 3), at RoPE time sync_t
  recent  the last `recent` frames up to the chunk's end (the chunk's own included), sinks
          excluded, at their own times
  middle  Wave    cyclic: the last `bucket` frames of the phase t_q mod `period`, at sync_t
          Anchor  stride: the last `stride_cap` frames with t mod `stride` == 0, at sync_t
          Veil    merge:  the last `merge_cap` completed blocks [4k, 4k+3], pooled over the
                  block's frames and 2x2 spatial patches (pre-RoPE keys, fp32), at time 4k+1
                  and the patch corner; block 0 is never attended
with sync_t = max(0, t_q - clamp(t_q, lo, hi)). A middle frame that is also a sink is not
attended as a middle frame; one that is also recent is attended twice (upstream plans do
not de-duplicate against the recent frames).

Noisy and cache-writing passes differ, as upstream's do: the noisy passes read the middle
stores as committed after the previous chunk; the cache-writing (clean) pass first puts the
chunk's own frames into the middle stores (evicting the oldest), layer by layer, and reads
those (`stage`). Sinks and the recent ring take the chunk after that pass (`commit`). In
chunk 0 the chunk's own sink frames are attended at sync_t too (`PagePlan.own_shift`).

One deliberate difference: upstream's merge store, once full, finalizes every new block into
its last slot while shifting the slots' metadata, so its older entries end up reading the
newest block's data (its tests fix the same fault in the stride store). Here the last
`merge_cap` blocks stay distinct.

Upstream sources: IF-LAB-PKU/Pyramid-Forcing, headkv/csrc/mega_plan.cc (plans, sink time),
headkv/_mega_cache.py (update before attend, per-query-frame plans, noisy vs clean),
headkv/csrc/anchor_store_update.cu and headkv/_mega_state_ref.py (store updates),
configs/pyramid-forcing.yaml (the values below).

Slot layout per head: [sinks | recent ring (recent - F frames) | middle]; Wave's middle holds
the last period * bucket frames, which contain exactly the last `bucket` of every phase.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pyramid_jax.attention.plan import PagePlan, entry_span
from pyramid_jax.cache.head_map import ANCHOR, VEIL, WAVE, check_map
from pyramid_jax.cache.pool import CacheState, PoolSpec, allocate, empty_state, rope_keys, write_entries
from pyramid_jax import rope


@dataclasses.dataclass(frozen=True)
class PyramidParams:
    """Reference values (upstream configs/pyramid-forcing.yaml)."""

    period: int = 6
    bucket: int = 4
    stride: int = 6
    stride_cap: int = 4
    merge_block: int = 4
    merge_patch: int = 2
    merge_cap: int = 4
    sink_wave: int = 1
    sink_anchor: int = 3
    sink_veil: int = 3
    recent: int = 4
    clamp_lo: int = 18
    clamp_hi: int = 21


class PyramidState(NamedTuple):
    """What the pyramid cache keeps besides the page pool (CacheState.own).

    head_kind: [L, H] int32 each head's type (static; an array so it splits with the heads).
    merge_k, merge_v: [B, NA, Tq, Dh] float32 running sums of the blocks being pooled (Veil
        heads; each head group's rows one contiguous block, as the pages are).
    merge_row: [L, H] int32 accumulator row of each head (NA for heads that do not merge).
    """

    head_kind: jax.Array
    merge_k: jax.Array
    merge_v: jax.Array
    merge_row: jax.Array

    def logical_axes(self) -> "PyramidState":
        rows, table = P("batch", "pages"), P(None, "heads")
        return PyramidState(head_kind=table, merge_k=rows, merge_v=rows, merge_row=table)


@dataclasses.dataclass(frozen=True)
class PyramidPolicy:
    spec: PoolSpec
    head_map: tuple  # [L][H] head types (an array or nested lists in; kept as tuples: hashable)
    params: PyramidParams = PyramidParams()

    def __post_init__(self):
        sp, p = self.spec, self.params
        f = sp.frames_per_chunk
        m = check_map(self.head_map, sp.num_layers, sp.num_heads, "cache.head_map")
        object.__setattr__(self, "head_map", tuple(tuple(int(v) for v in row) for row in m))
        if p.recent < f:
            raise ValueError(f"recent ({p.recent}) must cover the chunk ({f} frames)")
        if p.stride_cap * p.stride < f or p.merge_cap < 1 or p.bucket < 1:
            raise ValueError("the stride store must hold a chunk's stride frames; merge_cap and bucket >= 1")
        # own sink frames are moved by one shift per chunk: every query frame's sync_t must agree
        last = -(-max(p.sink_wave, p.sink_anchor, p.sink_veil) // f) * f
        if len({int(self.sync_time(t)) for t in range(last)}) > 1:
            raise ValueError(f"clamp_hi ({p.clamp_hi}) must be >= {last - 1}: the chunks that hold sink "
                             "frames need one sync time")

    # ---- static layout -------------------------------------------------------------
    @property
    def types(self) -> np.ndarray:
        """The head map as an [L, H] int32 array."""
        return np.asarray(self.head_map, np.int32)

    @property
    def recent_slots(self) -> int:
        """Committed frames the recent ring keeps (the chunk's own are attended directly)."""
        return self.params.recent - self.spec.frames_per_chunk

    @property
    def pooled_grid(self) -> tuple[int, int]:
        gh, gw = self.spec.grid
        m = self.params.merge_patch
        return math.ceil(gh / m), math.ceil(gw / m)

    @property
    def pooled_tokens(self) -> int:
        ph, pw = self.pooled_grid
        return ph * pw

    @property
    def page_tokens(self) -> int:
        """A pooled block per page when there are Veil heads, else a frame per page."""
        return self.pooled_tokens if (self.types == VEIL).any() else self.spec.tokens_per_frame

    def by_type(self, kind, wave, anchor, veil):
        """Per-head value by type; kind: numpy or traced head types."""
        where = np.where if isinstance(kind, np.ndarray) else jnp.where
        return where(kind == WAVE, wave, where(kind == ANCHOR, anchor, veil))

    def _counts(self, kind):
        """(sinks, middle slots, middle entries attended per query frame) per head."""
        p = self.params
        return (self.by_type(kind, p.sink_wave, p.sink_anchor, p.sink_veil),
                self.by_type(kind, p.period * p.bucket, p.stride_cap, p.merge_cap),
                self.by_type(kind, p.bucket, p.stride_cap, p.merge_cap))

    @property
    def num_slots(self) -> int:
        n_sink, n_mid, _ = self._counts(self.types)
        return int((n_sink + self.recent_slots + n_mid).max())

    @property
    def pooled_frames(self) -> int:
        """Frames a pooled (Veil) entry stands for: a merge block."""
        return self.params.merge_block

    @property
    def max_pages(self) -> int:
        """Most entries any (query frame, head) attends: sinks + recent + middle."""
        n_sink, _, mid = self._counts(self.types)
        return int((n_sink + self.recent_slots + mid).max())

    def init(self, batch: int, dtype, head_groups: int = 1) -> CacheState:
        """An empty cache: each head owns exactly its type's pages (see cache.pool)."""
        sp = self.spec
        span = entry_span(sp.tokens_per_frame, self.page_tokens)
        n_sink, n_mid, _ = self._counts(self.types)
        used = (n_sink + self.recent_slots + n_mid)[..., None]
        idx = np.arange(self.num_slots)
        veil = (self.types == VEIL)[..., None]
        pooled = veil & (idx >= (n_sink + self.recent_slots)[..., None])
        pages = np.where(idx < used, np.where(pooled, 1, span), 0)
        rows, block = allocate((self.types == VEIL)[..., None].astype(np.int64), head_groups)
        acc = (batch, block * head_groups, self.pooled_tokens, sp.head_dim)
        own = PyramidState(jnp.asarray(self.types), jnp.zeros(acc, jnp.float32), jnp.zeros(acc, jnp.float32),
                           jnp.asarray(rows[..., 0]))  # two buffers: the step donates the cache
        return empty_state(sp, batch, dtype, pages, self.page_tokens, head_groups=head_groups, own=own)

    @property
    def head_types(self) -> np.ndarray:
        """[L, H] each head's type (the head map)."""
        return self.types

    def trace_slots(self, state, slot_time, length):
        """(frame, token_start, token_stop, pooled) per slot [L, H, S] (cache.trace): a merged
        block's slot holds its pooled tokens, stored at the block's time, first frame 4k."""
        pooled = (length < self.spec.tokens_per_frame).astype(np.int64)
        frame = np.where(pooled == 1, slot_time - (self.params.merge_block - 1) // 2, slot_time)
        return frame, np.zeros_like(length), length, pooled

    # ---- plan ----------------------------------------------------------------------
    def sync_time(self, t_q):
        """The RoPE time sinks and middle frames are attended at."""
        p = self.params
        return jnp.maximum(0, t_q - jnp.clip(t_q, p.clamp_lo, p.clamp_hi))

    def plan(self, state: CacheState, chunk: jax.Array) -> PagePlan:
        """What the noisy passes of `chunk` attend, every layer: [L, C, H, P]."""
        frame0 = jnp.asarray(chunk, jnp.int32) * self.spec.frames_per_chunk
        return self._plan(state.slot_time, state.slot_page, state.own.head_kind, frame0)

    def _plan(self, slot_time, slot_page, kind, frame0) -> PagePlan:
        """slot_time, slot_page: [..., H, S]; kind: [..., H] -> plan fields [..., C, H, P]."""
        p, f = self.params, self.spec.frames_per_chunk
        t_q = frame0 + jnp.arange(f, dtype=jnp.int32)  # [C]
        n_sink, n_mid, _ = (a[..., None] for a in self._counts(kind))
        off_mid = n_sink + self.recent_slots
        idx = jnp.arange(slot_time.shape[-1])
        is_sink, is_mid = idx < n_sink, (idx >= off_mid) & (idx < off_mid + n_mid)
        is_recent = (idx >= n_sink) & (idx < off_mid)

        st = slot_time
        committed = (st >= 0) & (st < frame0)
        sink_ok = is_sink & committed
        recent_ok = is_recent & committed & (st >= frame0 + f - p.recent)
        frame_mid = is_mid & (st >= n_sink)  # a sink frame is not a middle frame too
        block_mid = is_mid & (st - (p.merge_block - 1) // 2 > 0)  # merged block 0 never

        # Per query frame (a C axis before H): the Wave middle depends on the phase of t_q.
        per_q = lambda a: a[..., None, :, :]
        typ = per_q(kind[..., None])
        phase_ok = per_q(st % p.period) == (t_q % p.period)[:, None, None]
        mid_ok = jnp.where(typ == WAVE, per_q(frame_mid) & phase_ok,
                           jnp.where(typ == ANCHOR, per_q(frame_mid), per_q(block_mid)))
        valid = per_q(sink_ok | recent_ok) | mid_ok
        moved = per_q(is_sink | (is_mid & (kind[..., None] != VEIL)))  # attended at sync_t
        sync = self.sync_time(t_q)[:, None, None]
        shift = jnp.where(moved & valid, sync - per_q(st), 0).astype(jnp.int32)
        # Valid entries first, cut to the most any head attends (8 of 26 slots by default).
        order = jnp.argsort(~valid, axis=-1, stable=True)[..., :self.max_pages]
        take = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, valid.shape), order, axis=-1)
        own = frame0 + jnp.arange(f, dtype=jnp.int32)
        own_shift = jnp.where(own < n_sink, self.sync_time(frame0) - own, 0).astype(jnp.int32)  # [..., H, F]
        return PagePlan(frame0, take(per_q(slot_page)), take(shift), take(valid), own_shift)

    # ---- the cache-writing pass and commit -----------------------------------------
    def stage(self, state: CacheState, plan: PagePlan, layer, k_pre, v, chunk, q=None):
        """Before layer `layer` attends in the clean pass: put the chunk's own frames into the
        middle stores. k_pre, v: [B, H, F, T, Dh] (k before RoPE). Returns (state, pool, the
        layer's plan over the updated stores)."""
        p, sp = self.params, self.spec
        f = sp.frames_per_chunk
        frame0 = jnp.asarray(chunk, jnp.int32) * f
        times = frame0 + jnp.arange(f, dtype=jnp.int32)
        kind = state.own.head_kind[layer]
        n_sink, _, _ = self._counts(kind)
        off_mid = (n_sink + self.recent_slots)[:, None]
        skip = state.slot_time.shape[-1]
        wave = off_mid + times % (p.period * p.bucket)
        anchor = jnp.where(times % p.stride == 0, off_mid + (times // p.stride) % p.stride_cap, skip)
        slots = jnp.where(kind[:, None] == WAVE, wave, jnp.where(kind[:, None] == ANCHOR, anchor, skip))
        state = write_entries(state, rope_keys(sp, k_pre, times), v, slots,
                              jnp.broadcast_to(times, slots.shape), layer=layer)
        if state.own.merge_k.shape[1]:  # some head of this mesh group merges
            for i in range(f):
                state = self._merge(state, layer, k_pre[:, :, i], v[:, :, i], times[i])
        return state, state.pool(), self._plan(state.slot_time[layer], state.slot_page[layer], kind, frame0)

    def commit(self, state: CacheState, chunk_kv, chunk: jax.Array) -> CacheState:
        """After the clean pass: the chunk's frames into the sinks and the recent ring.
        chunk_kv: (k before RoPE, v), each [L, B, H, F, T, Dh]."""
        sp = self.spec
        k_pre, v = chunk_kv
        f = sp.frames_per_chunk
        times = jnp.asarray(chunk, jnp.int32) * f + jnp.arange(f, dtype=jnp.int32)
        n_sink = self._counts(state.own.head_kind)[0][..., None]  # [L, H, 1]
        r_c = self.recent_slots
        end = times[-1] + 1
        skip = state.slot_time.shape[-1]
        if r_c > 0:
            recent = jnp.where(times >= end - r_c, n_sink + times % r_c, skip)
        else:
            recent = jnp.full(n_sink.shape[:-1] + (f,), skip)
        slots = jnp.where(times < n_sink, times, recent)
        return write_entries(state, rope_keys(sp, k_pre, times), v, slots, jnp.broadcast_to(times, slots.shape))

    def _pool(self, x):
        """[B, H, T, Dh] -> [B, H, ph * pw, Dh] fp32 sums over merge_patch^2 patches."""
        gh, gw = self.spec.grid
        m = self.params.merge_patch
        ph, pw = self.pooled_grid
        x = x.astype(jnp.float32).reshape(x.shape[:2] + (gh, gw, x.shape[-1]))
        pad = [(0, 0)] * 2 + [(0, ph * m - gh), (0, pw * m - gw), (0, 0)]
        x = jnp.pad(x, pad).reshape(x.shape[:2] + (ph, m, pw, m, x.shape[-1]))
        return x.sum((3, 5)).reshape(x.shape[:2] + (ph * pw, x.shape[-1]))

    def _merge(self, state, layer, k_pre, v, t):
        """Add one frame ([B, H, T, Dh]) to its block's accumulator; when the block completes,
        write its mean as a pooled entry (keys RoPE'd at the block time) and clear the rows."""
        sp, p = self.spec, self.params
        gh, gw = sp.grid
        m, blk = p.merge_patch, p.merge_block
        ph, pw = self.pooled_grid
        own = state.own
        rows = own.merge_row[layer]  # [H]; out of range for heads that do not merge
        acc_k = own.merge_k.at[:, rows].add(self._pool(k_pre), mode="drop")
        acc_v = own.merge_v.at[:, rows].add(self._pool(v), mode="drop")
        # tokens in each (possibly partial) border patch, times the block's frames
        count = (np.minimum(m, gh - m * np.arange(ph))[:, None] * np.minimum(m, gw - m * np.arange(pw))[None]
                 ).reshape(-1, 1) * blk
        done = t % blk == blk - 1
        k_blk = t // blk
        block_time = k_blk * blk + (blk - 1) // 2  # (start + end) // 2
        cos, sin = rope.grid_tables(block_time[None], m * np.arange(ph), m * np.arange(pw),
                                    sp.head_dim, sp.theta)
        mean = lambda acc: jnp.take(acc, rows, axis=1, mode="clip") / count  # [B, H, Tq, Dh]
        kind = own.head_kind[layer]
        n_sink = self._counts(kind)[0]
        slot = jnp.where((kind == VEIL) & done, n_sink + self.recent_slots + k_blk % p.merge_cap,
                         state.slot_time.shape[-1])[:, None]
        state = write_entries(state, rope.apply_rope(mean(acc_k), cos, sin)[:, :, None], mean(acc_v)[:, :, None],
                              slot, jnp.full(slot.shape, block_time), layer=layer)
        keep = jnp.where(done, 0.0, 1.0)  # this layer's rows only: the others hold their own blocks
        return state._replace(own=own._replace(merge_k=acc_k.at[:, rows].multiply(keep, mode="drop"),
                                               merge_v=acc_v.at[:, rows].multiply(keep, mode="drop")))
