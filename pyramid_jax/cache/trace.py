"""The cache trace (`--config.trace_cache=PATH`): every cache entry every pass attended.

One int32 row per (chunk, pass, layer, head, sample, query frame, entry), columns COLUMNS:
  pass         0 .. n - 1 the noisy passes, n the cache-writing (clean) pass
  frame        the latent frame the entry holds (a pooled block: its first frame)
  token_start, token_stop   the frame's tokens it holds (a band of Forcing-KV: a part of them;
               a pooled block: its pooled tokens, 0 .. pooled count)
  rope_frame   the RoPE time its keys are attended at (the stored time plus the plan's shift)
  pooled       1 for a pooled block (Pyramid's Veil merge), else 0
  query_frame  the chunk's query frame (0 .. F - 1) the row is for, or -1: every query frame
               of the chunk reads the same entries
The chunk's own frames are not cache entries and are not listed. Plans are shared by the
samples of a batch: every sample has the same rows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

COLUMNS = ("chunk", "pass", "layer", "head", "sample", "frame", "token_start", "token_stop", "rope_frame",
           "pooled", "query_frame")


class SlotTables(NamedTuple):
    """What the trace needs of a cache state: which frame each slot holds and where (the pages
    themselves stay on the device)."""

    slot_time: Any
    slot_page: Any
    page_len: Any
    own: Any

    @classmethod
    def of(cls, state) -> "SlotTables":
        return cls(state.slot_time, state.slot_page, state.page_len, state.own)


def slot_table(policy, state) -> tuple[np.ndarray, ...]:
    """What each logical slot holds: (frame, token_start, token_stop, pooled), [L, H, S] each.
    A policy with pooled or partial entries says so (`trace_slots`); by default a slot holds
    its whole entry at slot_time."""
    slot_time = np.asarray(state.slot_time)
    length = np.asarray(state.page_len)[np.minimum(np.asarray(state.slot_page), len(state.page_len) - 1)]
    if hasattr(policy, "trace_slots"):
        return policy.trace_slots(state, slot_time, length)
    return slot_time, np.zeros_like(length), length, np.zeros_like(length)


def pass_rows(policy, record, chunk: int, pass_index: int, samples: int) -> np.ndarray:
    """Rows for one pass's record (sampling.rollout.PassRecord: plan [L, C, H, P], state)."""
    plan, state = record
    slot, shift, valid = (np.asarray(a) for a in (plan.slot, plan.time_shift, plan.valid))
    frame, start, stop, pooled = slot_table(policy, state)
    slot_page = np.asarray(state.slot_page)
    layer, qf, head, p = np.nonzero(valid)
    page = slot[layer, qf, head, p]
    # the logical slot that starts at each planned page (one per (layer, head))
    s = (slot_page[layer, head] == page[:, None]).argmax(-1)
    qf_col = qf if valid.shape[1] > 1 else np.full_like(qf, -1)
    at = (layer, head, s)
    rope_frame = np.asarray(state.slot_time)[at] + shift[layer, qf, head, p]  # stored time, moved
    cols = [np.full_like(layer, chunk), np.full_like(layer, pass_index), layer, head, None, frame[at], start[at],
            stop[at], rope_frame, pooled[at], qf_col]
    rows = []
    for b in range(samples):
        cols[4] = np.full_like(layer, b)
        rows.append(np.stack(cols, -1))
    return np.concatenate(rows).astype(np.int32).reshape(-1, len(COLUMNS))


def chunk_rows(policy, chunk: int, noisy, clean, num_steps: int, samples: int) -> np.ndarray:
    """Rows of one chunk: its num_steps noisy passes (one plan) and its clean pass."""
    once = pass_rows(policy, noisy, chunk, 0, samples)
    passes = [once] + [_with_pass(once, i) for i in range(1, num_steps)]
    return np.concatenate(passes + [pass_rows(policy, clean, chunk, num_steps, samples)])


def _with_pass(rows: np.ndarray, pass_index: int) -> np.ndarray:
    out = rows.copy()
    out[:, COLUMNS.index("pass")] = pass_index
    return out


def save(path: str, rows: np.ndarray, **meta) -> None:
    """The trace npz: `entries` [N, len(COLUMNS)] int32, `columns`, and meta (policy name...)."""
    from pyramid_jax import media

    media.save_npz(path, entries=np.asarray(rows, np.int32).reshape(-1, len(COLUMNS)),
                   columns=np.asarray(COLUMNS), **{k: np.asarray(v) for k, v in meta.items()})


def column(entries: np.ndarray, name: str) -> np.ndarray:
    return entries[:, COLUMNS.index(name)]
