"""What a cache lets a chunk see: per head type, the share of its heads that attend each past
frame (as a whole frame or inside a pooled block). The studio draws it live; it reads the
policy's own plan, so it shows what the attention kernel is given, not a re-derivation.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from pyramid_jax.cache.head_map import TYPE_NAMES, HeadType
from pyramid_jax.cache.pool import CacheState


@functools.partial(jax.jit, static_argnames=("policy",))
def _plan(policy, state: CacheState, chunk):
    return policy.plan(state, chunk)


def attended_frames(policy, state: CacheState, chunk: int, query: int = 0) -> dict:
    """For the chunk's query frame `query`: which past frames each head attends.

    Returns {"chunk", "frame0", "frames_per_chunk", "rows": [{"type", "heads", "full",
    "pooled"}]}: one row per head type present (one "all heads" row for uniform policies);
    full[t] / pooled[t]: the share of that type's heads (over every layer) that attend past
    frame t (0 <= t < frame0) as a whole frame / a part of it (inside a pooled block, or a band
    of its tokens). The chunk's own
    frames are always attended and are not listed.
    """
    plan = _plan(policy, state, jax.numpy.int32(chunk))
    frame0 = int(plan.frame0)
    row = query if plan.slot.shape[1] > 1 else 0     # one shared row: every query frame's
    page = np.asarray(plan.slot[:, row])             # [L, H, P]
    valid = np.asarray(plan.valid[:, row])           # [L, H, P]
    slot_page = np.asarray(state.slot_page)          # [L, H, S]
    slot_time = np.asarray(state.slot_time)          # [L, H, S]
    page_len = np.asarray(state.page_len)
    # [L, H] the types the state holds (a policy that types heads online has them only there)
    kind = np.asarray(getattr(state.own, "head_kind", policy.head_types))
    tokens = policy.spec.tokens_per_frame

    match = (page[..., :, None] == slot_page[..., None, :]) & (slot_time[..., None, :] >= 0)
    time = np.where(match.any(-1), np.where(match, slot_time[..., None, :], -1).max(-1), -1)  # [L, H, P]
    pooled = page_len[np.clip(page, 0, len(page_len) - 1)] < tokens
    # a pooled entry stands for a block of frames around its time (Pyramid's Veil merge); a
    # shorter entry of one frame is a band of it (Forcing-KV)
    block = policy.pooled_frames
    rows = []
    for k in np.unique(kind):
        heads = kind == k
        full, part = np.zeros(frame0), np.zeros(frame0)
        for (li, hi) in zip(*np.nonzero(heads)):
            seen_full, seen_pooled = set(), set()
            for t, ok, pool in zip(time[li, hi], valid[li, hi], pooled[li, hi]):
                if not ok or t < 0:
                    continue
                if pool:
                    start = t - (block - 1) // 2
                    seen_pooled.update(range(max(start, 0), min(start + block, frame0)))
                elif t < frame0:
                    seen_full.add(int(t))
            full[list(seen_full)] += 1
            part[list(seen_pooled)] += 1
        n = int(heads.sum())
        name = TYPE_NAMES[HeadType(int(k))] if int(k) in set(HeadType) else "all heads"
        rows.append(dict(type=name, heads=n, full=(full / n).round(3).tolist(), pooled=(part / n).round(3).tolist()))
    return dict(chunk=int(chunk), frame0=frame0, frames_per_chunk=policy.spec.frames_per_chunk, rows=rows)
