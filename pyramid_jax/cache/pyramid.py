"""Pyramid Forcing's head-aware cache (SPEC section 6).

Every head is typed by the head map and keeps, besides its sink frames and the recent
frames (the chunk's own plus `recent - F` committed ones):
  Wave    cyclic: the last `bucket` committed frames of the query frame's phase t_q mod period
  Anchor  stride: the last `stride_cap` committed frames with t mod stride == 0
  Veil    merge:  the last `merge_cap` completed blocks [4k, 4k+3], pooled over the block's
          frames and 2x2 spatial patches (pre-RoPE keys, fp32), at time 4k+1 and the patch corner
Middle frames that fall in the sink or recent range are skipped, not replaced (a merged block
only when all of its frames do). A frame in both the sink and recent ranges is a sink page.
Sink, stride and cyclic pages are attended at RoPE time sync_t = max(0, t_q - clamp(t_q, lo,
hi)) through the plan's per-page time shift; recent frames and merged blocks keep theirs.

Slot layout per head: [sinks | recent ring | middle ring]; Wave's middle ring holds the last
period * bucket committed frames, which contain exactly the last `bucket` of every phase.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from pyramid_jax.attention import PagePlan
from pyramid_jax.cache.head_map import ANCHOR, VEIL, WAVE, check_map
from pyramid_jax.cache.pool import CacheState, PoolSpec, empty_state, rope_keys, write_frames
from pyramid_jax.models import rope


@dataclasses.dataclass(frozen=True)
class PyramidParams:
    """Reference defaults (SPEC section 6)."""

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


@dataclasses.dataclass(frozen=True, eq=False)
class PyramidPolicy:
    spec: PoolSpec
    head_map: np.ndarray  # [L, H] of WAVE / ANCHOR / VEIL
    params: PyramidParams = PyramidParams()

    def __post_init__(self):
        sp, p = self.spec, self.params
        object.__setattr__(self, "head_map",
                           check_map(self.head_map, sp.num_layers, sp.num_heads, "cache.head_map"))
        if p.recent < sp.frames_per_chunk:
            raise ValueError(f"recent ({p.recent}) must cover the chunk ({sp.frames_per_chunk} frames)")

    # Hash by value: jit caches compiled steps per policy.
    def __hash__(self):
        return hash((self.spec, self.params, self.head_map.tobytes()))

    def __eq__(self, other):
        return (isinstance(other, PyramidPolicy) and self.spec == other.spec
                and self.params == other.params and np.array_equal(self.head_map, other.head_map))

    # ---- static layout -------------------------------------------------------------
    @property
    def recent_slots(self) -> int:
        return self.params.recent - self.spec.frames_per_chunk

    @property
    def pooled_grid(self) -> tuple[int, int]:
        gh, gw = self.spec.grid
        m = self.params.merge_patch
        return math.ceil(gh / m), math.ceil(gw / m)

    def _per_head(self, wave, anchor, veil):
        m = self.head_map
        return np.where(m == WAVE, wave, np.where(m == ANCHOR, anchor, veil)).astype(np.int32)

    @property
    def n_sink(self) -> np.ndarray:
        p = self.params
        return self._per_head(p.sink_wave, p.sink_anchor, p.sink_veil)

    @property
    def n_mid(self) -> np.ndarray:
        p = self.params
        return self._per_head(p.period * p.bucket, p.stride_cap, p.merge_cap)

    @property
    def off_mid(self) -> np.ndarray:
        return self.n_sink + self.recent_slots

    @property
    def max_pages(self) -> int:
        """Most pages any (query frame, head) attends: sinks + recent + middle."""
        p = self.params
        mid = self._per_head(p.bucket, p.stride_cap, p.merge_cap)
        return int((self.n_sink + self.recent_slots + mid).max())

    @property
    def num_slots(self) -> int:
        return int((self.off_mid + self.n_mid).max())

    def init(self, batch: int, dtype) -> CacheState:
        sp = self.spec
        ph, pw = self.pooled_grid
        acc = lambda: jnp.zeros((sp.num_layers, batch, sp.num_heads, ph * pw, sp.head_dim), jnp.float32)
        return empty_state(sp, batch, self.num_slots, dtype, extra={"merge_k": acc(), "merge_v": acc()})

    # ---- plan ----------------------------------------------------------------------
    def sync_time(self, t_q):
        p = self.params
        return jnp.maximum(0, t_q - jnp.clip(t_q, p.clamp_lo, p.clamp_hi))

    def plan(self, state: CacheState, chunk: jax.Array) -> PagePlan:
        sp, p = self.spec, self.params
        f, s = sp.frames_per_chunk, self.num_slots
        t0 = jnp.asarray(chunk, jnp.int32) * f
        t_q = t0 + jnp.arange(f, dtype=jnp.int32)  # [C]
        idx = np.arange(s)[None, None, :]
        n_sink, off_mid = self.n_sink[..., None], self.off_mid[..., None]
        is_sink = idx < n_sink  # static [L, H, S]
        is_recent = (idx >= n_sink) & (idx < off_mid)
        is_mid = (idx >= off_mid) & (idx < off_mid + self.n_mid[..., None])
        typ = self.head_map[..., None]

        st = state.slot_time  # [L, H, S]
        filled = (st >= 0) & (st < t0)
        r0 = jnp.maximum(n_sink, t0 + f - p.recent)  # first frame of the recent range
        in_sink_or_recent = lambda fr: (fr < n_sink) | ((fr >= r0) & (fr < t0))
        sink_ok = is_sink & filled
        recent_ok = is_recent & filled & (st >= r0)
        frame_mid_ok = is_mid & filled & ~in_sink_or_recent(st)
        block0 = st - (p.merge_block - 1) // 2  # merged slots sit at (start + end) // 2
        block_redundant = jnp.ones_like(filled)
        for j in range(p.merge_block):
            block_redundant = block_redundant & in_sink_or_recent(block0 + j)
        merge_ok = is_mid & filled & ~block_redundant

        # Per query frame: the Wave middle depends on the phase of t_q. -> [L, C, H, S]
        phase_ok = (st[:, None] % p.period) == (t_q[None, :, None, None] % p.period)
        mid_ok = jnp.where(typ[:, None] == WAVE, frame_mid_ok[:, None] & phase_ok,
                           jnp.where(typ[:, None] == ANCHOR, frame_mid_ok[:, None], merge_ok[:, None]))
        valid = (sink_ok | recent_ok)[:, None] | mid_ok
        moved = (is_sink | (is_mid & (typ != VEIL)))[:, None]  # pages attended at sync_t
        sync = self.sync_time(t_q)[None, :, None, None]
        shift = jnp.where(moved & valid, sync - st[:, None], 0)
        shape = (sp.num_layers, f, sp.num_heads, s)
        valid = jnp.broadcast_to(valid, shape)
        # Compact: valid pages first, cut to the most any head can attend (8 of 26 slots by
        # default), so attention backends walk a short page list.
        order = jnp.argsort(~valid, axis=-1, stable=True)[..., :self.max_pages]
        slot = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), shape)
        take = lambda a: jnp.take_along_axis(a, order, axis=-1)
        return PagePlan(t0, take(slot), take(shift.astype(jnp.int32)), take(valid))

    # ---- commit --------------------------------------------------------------------
    def commit(self, state: CacheState, chunk_kv, chunk: jax.Array) -> CacheState:
        """Commit the chunk's clean K/V (k before RoPE), frame by frame."""
        sp, p = self.spec, self.params
        k_pre, v = chunk_kv  # [L, B, H, F, T, Dh]
        f = sp.frames_per_chunk
        t0 = jnp.asarray(chunk, jnp.int32) * f
        times = t0 + jnp.arange(f, dtype=jnp.int32)
        k_rot = rope_keys(sp, k_pre, times)
        drop = self.num_slots
        n_sink, off_mid, typ = self.n_sink, self.off_mid, self.head_map
        r_c = self.recent_slots
        end = t0 + f
        for i in range(f):
            t = times[i]
            one = lambda a: a[:, :, :, i:i + 1]
            targets = [jnp.where(t < n_sink, t, drop)]
            if r_c > 0:
                targets.append(jnp.where((t >= n_sink) & (t >= end - r_c), n_sink + t % r_c, drop))
            wave_slot = off_mid + t % (p.period * p.bucket)
            anchor_slot = jnp.where(t % p.stride == 0, off_mid + (t // p.stride) % p.stride_cap, drop)
            targets.append(jnp.where(typ == WAVE, wave_slot, jnp.where(typ == ANCHOR, anchor_slot, drop)))
            for slots in targets:
                slots = jnp.broadcast_to(slots, typ.shape)[..., None]
                state = write_frames(state, one(k_rot), one(v), slots, jnp.full(slots.shape, t))
            state = self._merge(state, k_pre[:, :, :, i], v[:, :, :, i], t)
        return state

    def _pool(self, x):
        """[L, B, H, T, Dh] -> [L, B, H, ph * pw, Dh] fp32 sums over merge_patch^2 patches."""
        gh, gw = self.spec.grid
        m = self.params.merge_patch
        ph, pw = self.pooled_grid
        x = x.astype(jnp.float32).reshape(x.shape[:3] + (gh, gw, x.shape[-1]))
        pad = [(0, 0)] * 3 + [(0, ph * m - gh), (0, pw * m - gw), (0, 0)]
        x = jnp.pad(x, pad).reshape(x.shape[:3] + (ph, m, pw, m, x.shape[-1]))
        return x.sum((4, 6)).reshape(x.shape[:3] + (ph * pw, x.shape[-1]))

    def _merge(self, state, k_pre, v, t):
        """Accumulate one frame into the open block; when it completes, pool and commit it."""
        sp, p = self.spec, self.params
        gh, gw = sp.grid
        m, blk = p.merge_patch, p.merge_block
        ph, pw = self.pooled_grid
        acc_k = state.extra["merge_k"] + self._pool(k_pre)
        acc_v = state.extra["merge_v"] + self._pool(v)
        # tokens that exist in each (possibly partial) border patch, times the block's frames
        rows = np.minimum(m, gh - m * np.arange(ph))
        cols = np.minimum(m, gw - m * np.arange(pw))
        count = (rows[:, None] * cols[None, :]).reshape(-1, 1) * blk
        done = t % blk == blk - 1
        k_blk = t // blk
        block_time = k_blk * blk + (blk - 1) // 2  # (start + end) // 2
        cos, sin = rope.grid_tables(block_time[None], m * np.arange(ph), m * np.arange(pw),
                                    sp.head_dim, sp.theta)
        pooled_k = rope.apply_rope(acc_k / count, cos, sin).astype(state.k.dtype)
        pad_t = sp.tokens_per_frame - ph * pw
        widen = lambda a: jnp.pad(a, [(0, 0)] * 3 + [(0, pad_t), (0, 0)])[:, :, :, None]
        slot = jnp.where((self.head_map == VEIL) & done,
                         self.off_mid + k_blk % p.merge_cap, self.num_slots)[..., None]
        state = write_frames(state, widen(pooled_k), widen((acc_v / count).astype(state.v.dtype)),
                             slot, jnp.full(slot.shape, block_time))
        li = jnp.arange(sp.num_layers)[:, None, None]
        hi = jnp.arange(sp.num_heads)[None, :, None]
        page_len = state.page_len.at[li, hi, slot].set(ph * pw, mode="drop")
        keep = jnp.where(done, 0.0, 1.0)
        return state._replace(page_len=page_len, extra={"merge_k": acc_k * keep, "merge_v": acc_v * keep})
