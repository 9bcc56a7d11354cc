"""Dummy Forcing's head-aware cache (arXiv 2601.20499), as its public code keeps it.

Every pass of chunk k (the noisy ones and the cache-writing one alike) attends the chunk's own
frames plus, with R = frames_per_chunk * local_context_length:
  before typing (k <= ar_start)  frame 0 and the last R frames after it
  after typing, per head group   first: frame 0;  last ("dummy"): the frame before the chunk;
                                 mid: the last R frames
Keys are stored after RoPE at their own frame and never moved in time.

Typing happens once, inside the jitted step, in the cache-writing pass of chunk `ar_start`:
each layer draws `rows` query rows of the chunk (sample 0 decides for every sample, as
upstream), takes the softmax over every key it attends and, per head, the mean mass on the
oldest `first` frames (p0) and on the other cached frames (p1); the commit then normalises p0
and p1 over all heads of all layers, makes the `num_dummy` heads of lowest max(p0, p1) "last"
and each other head "mid" if p0 < p1, else "first". Upstream counts the "first" frames as a
key span: one frame when ar_start is 1, three frames otherwise; so does this.

Upstream draws the rows from torch's global generator (the stream of its re-noise draws); here
they come from the run's seed, or are given (`rows`, a replay of upstream). A head map of
first / mid / last types (`head_map`) replaces the online typing: the groups of another run.

Memory: until the typing chunk every head owns 1 + R frame slots (the layout must hold that
chunk's frames before the groups exist). After it, as upstream re-allocates, the host loop
moves the cache into the groups' own layout (`relayout`: one read of the groups, one more
compiled step shape): a first or last head owns 1 frame slot, a mid head R
(`DummyGroupsPolicy`).

Upstream sources: zju-jiyicheng/Forcing-KV, wan/modules/dummyforcing.py (typing, assignment),
wan/modules/causal_model_dummyforcing.py (the caches), configs/dummy-forcing/ (the values).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pyramid_jax.attention.plan import PagePlan, layer_plan
from pyramid_jax.cache.head_map import DUMMY_TYPES, FIRST, LAST, MID, check_map
from pyramid_jax.cache.pool import CacheState, PoolSpec, dequantize, empty_state, rope_keys, write_entries

UNTYPED = 0  # a head's type before the typing chunk
ROW_STREAM = 0x64756D  # folded into the seed: the rows' draws are their own stream


@dataclasses.dataclass(frozen=True)
class DummyParams:
    """Upstream's values (configs/dummy-forcing/dummy_self_forcing_inference.yaml)."""

    ar_start: int = 1  # the chunk whose cache-writing pass types the heads
    local_context_length: int = 1  # chunks a mid head keeps
    num_dummy: int = 180  # of Wan2.1-1.3B's 360 heads


class DummyState(NamedTuple):
    """What Dummy Forcing keeps besides the pages (CacheState.own).

    head_kind: [L, H] int32, UNTYPED until the typing chunk, then FIRST / MID / LAST.
    mass: [L, H, 2] float32 (p0, p1) each head measured in the typing pass.
    rows: [L, R] int32 the query rows each layer samples (of the chunk's F * T).
    """

    head_kind: jax.Array
    mass: jax.Array
    rows: jax.Array

    def logical_axes(self) -> "DummyState":
        return DummyState(head_kind=P(None, "heads"), mass=P(None, "heads"), rows=P())


def first_frames(spec: PoolSpec, params: DummyParams) -> int:
    """Key frames typing counts as "first" (upstream's span: HW, or 3 HW past ar_start 1)."""
    return 1 if params.ar_start == 1 else spec.frames_per_chunk


def typing_rows(spec: PoolSpec, params: DummyParams) -> int:
    """Query rows each layer samples in the typing pass (upstream: its "first" span // 3)."""
    return first_frames(spec, params) * spec.tokens_per_frame // 3


@dataclasses.dataclass(frozen=True)
class DummyForcingPolicy:
    spec: PoolSpec
    params: DummyParams = DummyParams()
    seed: int = 0  # draws the typing rows
    rows: tuple | None = None  # [L][R] given rows (a replay of upstream's draws)
    head_map: tuple | None = None  # [L][H] first / mid / last: no online typing

    def __post_init__(self):
        sp, p = self.spec, self.params
        n = sp.num_layers * sp.num_heads
        if not 0 <= p.num_dummy <= n:
            raise ValueError(f"cache.num_dummy ({p.num_dummy}) must be between 0 and the model's {n} heads "
                             f"({sp.num_layers} layers x {sp.num_heads})")
        if p.ar_start < 1 or p.local_context_length < 1:
            raise ValueError("cache.ar_start and cache.local_context_length must be >= 1")
        if self.head_map is not None:
            m = check_map(self.head_map, sp.num_layers, sp.num_heads, "cache.head_map", types=DUMMY_TYPES)
            object.__setattr__(self, "head_map", tuple(tuple(int(v) for v in row) for row in m))
        if self.rows is not None:
            r = np.asarray(self.rows)
            if r.shape != (sp.num_layers, self.num_rows) or r.min() < 0 or r.max() >= self.query_tokens:
                raise ValueError(f"dummy_rows must be [{sp.num_layers}, {self.num_rows}] rows in [0, "
                                 f"{self.query_tokens}), got shape {list(r.shape)}")
            object.__setattr__(self, "rows", tuple(tuple(int(v) for v in row) for row in r))

    # ---- static layout -------------------------------------------------------------
    @property
    def relayout_at(self) -> int:
        """The chunk after which the host loop moves the cache into the groups' layout."""
        return self.params.ar_start

    @property
    def ring(self) -> int:
        """Frames the local ring keeps (a mid head's context)."""
        return self.spec.frames_per_chunk * self.params.local_context_length

    @property
    def num_slots(self) -> int:
        return 1 + self.ring  # frame 0, then the ring

    @property
    def pooled_frames(self) -> int:
        return 1

    @property
    def query_tokens(self) -> int:
        return self.spec.frames_per_chunk * self.spec.tokens_per_frame

    @property
    def first_frames(self) -> int:
        """Key frames counted as "first" in typing (upstream's span: HW, or 3 HW past ar_start 1)."""
        return first_frames(self.spec, self.params)

    @property
    def num_rows(self) -> int:
        return typing_rows(self.spec, self.params)

    @property
    def head_types(self) -> np.ndarray:
        """[L, H] the given groups, or UNTYPED (0) everywhere: the groups are chosen at run time."""
        if self.head_map is not None:
            return np.asarray(self.head_map, np.int32)
        return np.zeros((self.spec.num_layers, self.spec.num_heads), np.int32)

    def draw_rows(self) -> jax.Array:
        """[L, R] int32 the typing rows: the given ones, or drawn from the seed (with replacement)."""
        if self.rows is not None:
            return jnp.asarray(self.rows, jnp.int32)
        key = jax.random.fold_in(jax.random.key(self.seed), ROW_STREAM)
        return jax.random.randint(key, (self.spec.num_layers, self.num_rows), 0, self.query_tokens, jnp.int32)

    def init(self, batch: int, dtype, head_groups: int = 1) -> CacheState:
        sp = self.spec
        pages = np.ones((sp.num_layers, sp.num_heads, self.num_slots), np.int64)
        shape = (sp.num_layers, sp.num_heads)
        own = DummyState(jnp.zeros(shape, jnp.int32), jnp.zeros(shape + (2,), jnp.float32),
                         self.draw_rows())
        return empty_state(sp, batch, dtype, pages, sp.tokens_per_frame, head_groups=head_groups, own=own)

    # ---- plan ----------------------------------------------------------------------
    def plan(self, state: CacheState, chunk) -> PagePlan:
        """[L, 1, H, S]: every pass and query frame of a chunk reads the same frames."""
        frame0 = jnp.asarray(chunk, jnp.int32) * self.spec.frames_per_chunk
        st, kind = state.slot_time, state.own.head_kind[..., None]
        is_sink = jnp.arange(self.num_slots) == 0
        committed = (st >= 0) & (st < frame0)
        ring = committed & ~is_sink
        valid = jnp.where(kind == FIRST, committed & is_sink,
                          jnp.where(kind == LAST, ring & (st == frame0 - 1),
                                    jnp.where(kind == MID, ring, committed)))
        return PagePlan(frame0, state.slot_page[:, None], None, valid[:, None])

    # ---- the cache-writing pass and commit -----------------------------------------
    def stage(self, state: CacheState, plan: PagePlan, layer, k_pre, v, chunk, q=None):
        """The cache-writing pass reads what the noisy passes read; in the typing chunk each
        layer also measures its heads (q: the chunk's queries after RoPE, [B, N, H, Dh])."""
        lp = layer_plan(plan, layer)
        if q is not None and self.head_map is None:
            typing = jnp.asarray(chunk) == self.params.ar_start
            state = jax.lax.cond(typing, lambda s: self._measure(s, lp, layer, q, k_pre, chunk), lambda s: s, state)
        return state, state.pool(), lp

    def _measure(self, state: CacheState, lp: PagePlan, layer, q, k_pre, chunk) -> CacheState:
        """(p0, p1) of every head of `layer` from sample 0's sampled query rows."""
        sp = self.spec
        f, t, dh = sp.frames_per_chunk, sp.tokens_per_frame, sp.head_dim
        own = state.own
        rows = own.rows[layer]
        qs = q[0, rows].astype(jnp.float32)  # [R, H, Dh]
        pages = lp.slot[0]  # [H, S]: one frame per page
        pool = state.pool()
        cached = dequantize(pool.k[0, pages], None if pool.k_scale is None else pool.k_scale[0, pages])
        times = jnp.asarray(chunk, jnp.int32) * f + jnp.arange(f, dtype=jnp.int32)
        own_k = rope_keys(sp, k_pre[0], times).astype(jnp.float32).reshape(sp.num_heads, f * t, dh)
        scale = 1.0 / np.sqrt(dh)
        s_cached = jnp.einsum("rhd,hstd->hrst", qs, cached) * scale  # [H, R, S, T]
        s_cached = jnp.where(lp.valid[0][:, None, :, None], s_cached, -jnp.inf)
        s_own = jnp.einsum("rhd,hnd->hrn", qs, own_k) * scale  # [H, R, F T]
        top = jnp.maximum(s_cached.max((2, 3)), s_own.max(2))[..., None]
        e_cached = jnp.exp(s_cached - top[..., None]).sum(-1)  # [H, R, S]
        total = e_cached.sum(-1) + jnp.exp(s_own - top).sum(-1)
        mass = (e_cached / total[..., None]).mean(1)  # [H, S]
        # the oldest `first_frames` attended frames are "first", the other cached ones "mid"
        st = jnp.where(lp.valid[0], state.slot_time[layer], jnp.iinfo(jnp.int32).max)
        rank = (st[:, None, :] < st[:, :, None]).sum(-1)  # attended frames older than each
        first = lp.valid[0] & (rank < self.first_frames)
        p = jnp.stack([(mass * first).sum(-1), (mass * (lp.valid[0] & ~first)).sum(-1)], -1)
        return state._replace(own=own._replace(mass=own.mass.at[layer].set(p)))

    def assign(self, mass: jax.Array) -> jax.Array:
        """Upstream's global assignment: mass [L, H, 2] (p0, p1) -> [L, H] FIRST / MID / LAST."""
        p0, p1 = mass[..., 0].reshape(-1), mass[..., 1].reshape(-1)
        p0, p1 = p0 / p0.sum(), p1 / p1.sum()
        order = jnp.argsort(jnp.maximum(p0, p1), stable=True)
        dummy = jnp.zeros(p0.shape, bool).at[order[:self.params.num_dummy]].set(True)
        kind = jnp.where(dummy, LAST, jnp.where(p0 < p1, MID, FIRST))
        return kind.reshape(mass.shape[:2]).astype(jnp.int32)

    def commit(self, state: CacheState, chunk_kv, chunk) -> CacheState:
        """Frame 0 into slot 0, every later frame into the ring; after the typing chunk's
        pass, the groups. chunk_kv: (k before RoPE, v), each [L, B, H, F, T, Dh]."""
        sp = self.spec
        k_pre, v = chunk_kv
        f = sp.frames_per_chunk
        times = jnp.asarray(chunk, jnp.int32) * f + jnp.arange(f, dtype=jnp.int32)
        slots = jnp.where(times == 0, 0, 1 + (times - 1) % self.ring)
        slots = jnp.broadcast_to(slots, (k_pre.shape[0], k_pre.shape[2], f))
        state = write_entries(state, rope_keys(sp, k_pre, times), v, slots, jnp.broadcast_to(times, slots.shape))
        own = state.own
        typed = self.assign(own.mass) if self.head_map is None else jnp.asarray(self.head_types)
        kind = jnp.where(jnp.asarray(chunk) == self.params.ar_start, typed, own.head_kind)
        return state._replace(own=own._replace(head_kind=kind))

    def relayout(self, state: CacheState, head_groups: int = 1):
        """After the typing chunk: (DummyGroupsPolicy of the groups the state holds, the cache
        moved into its layout). One host read of the groups."""
        groups = DummyGroupsPolicy(self.spec, tuple(map(tuple, np.asarray(state.own.head_kind).tolist())),
                                   self.params)
        batch, dtype = state.k.shape[0], state.k.dtype
        empty = groups.init(batch, jnp.float32 if dtype.itemsize == 1 else dtype, head_groups)
        return groups, _move(self.num_slots, groups, state, empty)


@dataclasses.dataclass(frozen=True)
class DummyGroupsPolicy:
    """Dummy Forcing after typing, in its groups' own layout: a first head keeps frame 0, a
    last head the frame before the chunk (1 slot each), a mid head the last R frames (R slots).
    Plans, passes and commits as `DummyForcingPolicy` after its typing chunk."""

    spec: PoolSpec
    groups: tuple  # [L][H] FIRST / MID / LAST
    params: DummyParams = DummyParams()

    def __post_init__(self):
        m = check_map(self.groups, self.spec.num_layers, self.spec.num_heads, "dummy groups", types=DUMMY_TYPES)
        object.__setattr__(self, "groups", tuple(tuple(int(v) for v in row) for row in m))

    @property
    def ring(self) -> int:
        return self.spec.frames_per_chunk * self.params.local_context_length

    @property
    def head_types(self) -> np.ndarray:
        return np.asarray(self.groups, np.int32)

    @property
    def slots_per_head(self) -> np.ndarray:
        """[L, H] frame slots each head owns."""
        return np.where(self.head_types == MID, self.ring, 1)

    @property
    def num_slots(self) -> int:
        return int(self.slots_per_head.max())

    @property
    def pooled_frames(self) -> int:
        return 1

    def init(self, batch: int, dtype, head_groups: int = 1) -> CacheState:
        sp = self.spec
        pages = (np.arange(self.num_slots) < self.slots_per_head[..., None]).astype(np.int64)
        shape = (sp.num_layers, sp.num_heads)
        rows = jnp.zeros((sp.num_layers, typing_rows(sp, self.params)), jnp.int32)
        own = DummyState(jnp.asarray(self.head_types), jnp.zeros(shape + (2,), jnp.float32), rows)
        return empty_state(sp, batch, dtype, pages, sp.tokens_per_frame, head_groups=head_groups, own=own)

    def plan(self, state: CacheState, chunk) -> PagePlan:
        """[L, 1, H, S]: every committed frame a head holds (its layout is its keep-set)."""
        frame0 = jnp.asarray(chunk, jnp.int32) * self.spec.frames_per_chunk
        st = state.slot_time
        valid = (st >= 0) & (st < frame0)
        return PagePlan(frame0, state.slot_page[:, None], None, valid[:, None])

    def stage(self, state: CacheState, plan: PagePlan, layer, k_pre, v, chunk, q=None):
        return state, state.pool(), layer_plan(plan, layer)

    def commit(self, state: CacheState, chunk_kv, chunk) -> CacheState:
        """A last head's slot takes the chunk's last frame, a mid head's ring every frame; a
        first head keeps frame 0."""
        sp = self.spec
        k_pre, v = chunk_kv
        f = sp.frames_per_chunk
        times = jnp.asarray(chunk, jnp.int32) * f + jnp.arange(f, dtype=jnp.int32)
        kind = jnp.asarray(self.head_types)[..., None]
        skip = self.num_slots
        slots = jnp.where(kind == MID, (times - 1) % self.ring,
                          jnp.where((kind == LAST) & (times == times[-1]), 0, skip))
        return write_entries(state, rope_keys(sp, k_pre, times), v, slots, jnp.broadcast_to(times, slots.shape))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _move(typing_slots: int, groups: DummyGroupsPolicy, old: CacheState, new: CacheState) -> CacheState:
    """The typing layout's pages into the groups' layout: a first head's frame 0, a last head's
    newest frame, a mid head's ring (ring slot 1 + i -> slot i). Pages (and 8-bit scales) are
    copied as stored."""
    kind = jnp.asarray(groups.head_types)[..., None]
    s_new = jnp.arange(groups.num_slots)
    newest = jnp.argmax(old.slot_time, axis=-1)[..., None]  # [L, H, 1]
    src = jnp.where(kind == MID, 1 + s_new, jnp.where(kind == LAST, newest, 0))  # [L, H, S']
    src = jnp.minimum(src, typing_slots - 1)
    used = s_new < jnp.asarray(groups.slots_per_head)[..., None]
    dst_page = jnp.where(used, new.slot_page, new.k.shape[1])  # past the pool: dropped
    src_page = jnp.take_along_axis(old.slot_page, src, axis=-1)
    copy = lambda a, b: a.at[:, dst_page.reshape(-1)].set(b[:, src_page.reshape(-1)], mode="drop")
    moved = new._replace(k=copy(new.k, old.k), v=copy(new.v, old.v),
                         slot_time=jnp.where(used, jnp.take_along_axis(old.slot_time, src, axis=-1), -1),
                         own=old.own._replace(head_kind=jnp.asarray(groups.head_types)))
    if old.k_scale.shape[1]:
        moved = moved._replace(k_scale=copy(new.k_scale, old.k_scale), v_scale=copy(new.v_scale, old.v_scale))
    page_len = new.page_len.at[dst_page.reshape(-1)].set(old.page_len[src_page.reshape(-1)], mode="drop")
    return moved._replace(page_len=page_len)
