"""Self Forcing's rolling window with pinned sink frames, and Deep Forcing's deep sink.

With window W and sink S, a chunk of F frames starting at frame t0 attends the first S
frames plus the most recent W - S frames counting its own F: committed frames
[max(S, t0 - R), t0) with R = W - S - F. Slots: S sink slots, then a ring of R slots
(frame t >= S lives in slot S + (t - S) mod R). W = -1 keeps every frame (capacity =
the requested length). Memory is fixed by W, never by the video length.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pyramid_jax.attention.plan import PagePlan, layer_plan
from pyramid_jax.cache.pool import CacheState, PoolSpec, empty_state, rope_keys, write_entries


WINDOW = 21  # Self Forcing's window (frames attended, the chunk's own included)
DEEP_SINK_WINDOW, DEEP_SINK_SINKS = 21, 10  # Deep Forcing's window and its pinned sinks


@dataclasses.dataclass(frozen=True)
class RingCache:
    """The slot layout window and deep_sink share: S sink slots, then a ring of recent frames.
    Its `plan` attends each committed frame at its own time."""

    spec: PoolSpec
    local_attn_size: int = -1
    sink_size: int = 0
    num_frames: int = 21  # requested length; sets the capacity when local_attn_size == -1

    def __post_init__(self):
        w, s, f = self.local_attn_size, self.sink_size, self.spec.frames_per_chunk
        if s < 0:
            raise ValueError(f"cache.sink_size must be >= 0, got {s}")
        if w != -1 and w < s + f:
            raise ValueError(f"cache.local_attn_size ({w}) must be -1 or at least sink_size + "
                             f"frames per chunk ({s} + {f})")

    @property
    def unlimited(self) -> bool:
        return self.local_attn_size == -1

    @property
    def sinks(self) -> int:
        return 0 if self.unlimited else self.sink_size

    @property
    def ring(self) -> int:
        if self.unlimited:
            return self.num_frames
        return min(self.local_attn_size - self.sink_size - self.spec.frames_per_chunk, self.num_frames)

    @property
    def num_slots(self) -> int:
        return max(self.sinks + self.ring, 1)  # one (never valid) slot keeps shapes non-empty

    @property
    def pooled_frames(self) -> int:
        """Frames a pooled entry stands for: none is pooled here."""
        return 1

    @property
    def head_types(self) -> np.ndarray:
        """[L, H] each head's type: one kind for every head (0)."""
        return np.zeros((self.spec.num_layers, self.spec.num_heads), np.int32)

    def init(self, batch: int, dtype, head_groups: int = 1) -> CacheState:
        """An empty cache; head_groups: the mesh's `model` axis size (see cache.pool)."""
        sp = self.spec
        pages = np.ones((sp.num_layers, sp.num_heads, self.num_slots), np.int64)  # a frame per slot
        return empty_state(sp, batch, dtype, pages, sp.tokens_per_frame, head_groups=head_groups)

    def attended(self, slot_time: jax.Array, frame0: jax.Array) -> jax.Array:
        """Which slots a chunk starting at frame0 reads: [..., S] bool."""
        recent = slot_time >= frame0 - self.ring
        keep = (slot_time < self.sinks) | recent
        return (slot_time >= 0) & (slot_time < frame0) & keep

    def plan(self, state: CacheState, chunk: jax.Array) -> PagePlan:
        """The entries `chunk` attends: [L, 1, H, S], one row that every query frame shares;
        no entry moves in time (time_shift None)."""
        frame0 = jnp.asarray(chunk, jnp.int32) * self.spec.frames_per_chunk
        valid = self.attended(state.slot_time, frame0)[:, None]
        return PagePlan(frame0, state.slot_page[:, None], None, valid)

    def stage(self, state: CacheState, plan: PagePlan, layer, k, v, chunk, q=None):
        """The cache-writing pass reads what the noisy passes read: (state, pool, layer plan)."""
        return state, state.pool(), layer_plan(plan, layer)

    def slots_for(self, times: jax.Array) -> jax.Array:
        """Target slot of each newly committed frame ([F] -> [F]; num_slots = skip)."""
        end = times[-1] + 1
        if self.unlimited:
            return jnp.where(times < self.num_slots, times, self.num_slots)
        s, r = self.sinks, self.ring
        ring_slot = s + (times - s) % max(r, 1)
        # only the last r frames of a chunk survive; writing earlier ones would collide
        in_ring = (times >= s) & (times >= end - r) if r > 0 else jnp.zeros_like(times, bool)
        return jnp.where(times < s, times, jnp.where(in_ring, ring_slot, self.num_slots))

    def commit(self, state: CacheState, chunk_kv, chunk: jax.Array) -> CacheState:
        """Write the chunk's clean K/V (k before RoPE, [L, B, H, F, T, Dh]) into the pool."""
        sp = self.spec
        k, v = chunk_kv
        times = jnp.asarray(chunk, jnp.int32) * sp.frames_per_chunk + jnp.arange(sp.frames_per_chunk)
        slots = jnp.broadcast_to(self.slots_for(times), (k.shape[0], k.shape[2], times.shape[0]))
        return write_entries(state, rope_keys(sp, k, times), v, slots, jnp.broadcast_to(times, slots.shape))


@dataclasses.dataclass(frozen=True)
class WindowPolicy(RingCache):
    """Self Forcing's rolling window (local_attn_size W, sink_size S; W = -1 keeps every frame)."""


@dataclasses.dataclass(frozen=True)
class DeepSinkPolicy(RingCache):
    """Deep Forcing's frame-level part: a window whose first `sink_size` frames (default 10
    of 21) are pinned and attended as if they sat right before the recent frames."""

    local_attn_size: int = DEEP_SINK_WINDOW
    sink_size: int = DEEP_SINK_SINKS

    def __post_init__(self):
        super().__post_init__()
        if self.unlimited:
            raise ValueError("deep_sink needs a finite cache.local_attn_size")

    def plan(self, state: CacheState, chunk: jax.Array) -> PagePlan:
        plan = super().plan(state, chunk)
        # recent frames start at t0 + F - (W - S); sinks move to the S frames before that
        shift = jnp.maximum(0, plan.frame0 + self.spec.frames_per_chunk - self.local_attn_size)
        is_sink = (jnp.arange(plan.slot.shape[-1]) < self.sinks) & plan.valid  # entries in slot order
        return plan._replace(time_shift=jnp.where(is_sink, shift, 0).astype(jnp.int32))


def full_sequence_mask(policy: RingCache, num_frames: int) -> np.ndarray:
    """[F, F] bool: what a window policy's cached chunks attend, as one full-sequence mask
    (query frame i attends key frame j: its own chunk, plus what the cache holds). A reference
    for tests; per-head and time-moved policies have no such mask."""
    f = policy.spec.frames_per_chunk
    i, j = np.arange(num_frames)[:, None], np.arange(num_frames)[None, :]
    start = (i // f) * f
    same_chunk = j // f == i // f
    cached = (j < start) & ((j < policy.sinks) | (j >= start - policy.ring))
    return same_chunk | cached
