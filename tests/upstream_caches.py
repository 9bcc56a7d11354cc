"""Upstream caches restated as plain loops over frame indices, for the policy tests.

Each function says which cached frames a head attends in one pass of the chunk starting at
frame t0 (F = 3 frames a chunk), written from the upstream code's rules, independently of the
policies under test.
"""

from __future__ import annotations

import numpy as np

from pyramid_jax.cache.head_map import ANCHOR, FIRST, LAST, MID, STATIC, VEIL, WAVE

F = 3


def upstream_keys(t0, t_q, typ, clean, cache_only=False):
    """Upstream Pyramid Forcing (configs/pyramid-forcing.yaml, MegaCache path): the (source,
    RoPE time) pairs query frame t_q of the chunk starting at t0 attends, in a noisy pass or
    the clean (cache-writing) pass. cache_only: leave out the chunk's own frames that are
    attended as its own keys (sinks and recent frames of the chunk); the middle stores' copies
    of them stay, as they are cache entries."""
    n_sink = {WAVE: 1, ANCHOR: 3, VEIL: 3}[typ]
    sync = max(0, t_q - min(max(t_q, 18), 21))  # window_clamp, 18..21
    end = t0 + F  # the chunk's own frames are in the sink/recent pools in every pass
    stored = end if clean else t0  # frames the middle stores hold (clean: updated first)
    direct = t0 if cache_only else end
    keys = [(f, sync) for f in range(min(n_sink, direct))]  # sinks
    keys += [(f, f) for f in range(max(n_sink, end - 4), direct)]  # recent: last 4, own times
    if typ == WAVE:  # cyclic: 4 per phase t mod 6; sink frames skipped, recent ones not
        bucket = [f for f in range(stored) if f % 6 == t_q % 6][-4:]
        keys += [(f, sync) for f in bucket if f >= n_sink]
    elif typ == ANCHOR:  # stride: the last 4 frames with t mod 6 == 0
        ring = [f for f in range(stored) if f % 6 == 0][-4:]
        keys += [(f, sync) for f in ring if f >= n_sink]
    else:  # merge: the last 4 completed 4-frame blocks, at time 4b + 1; block 0 never
        blocks = list(range(stored // 4))[-4:]
        keys += [(("block", b), 4 * b + 1) for b in blocks if b > 0]
    return sorted(keys, key=str)


def window_frames(t0, window, sink):
    """Self Forcing's cache: the sinks and the frames of the window before the chunk."""
    recent = window - sink - F
    return sorted(set(range(min(sink, t0))) | set(range(max(sink, t0 - recent), t0)))


def dummy_frames(k, kind, ar_start=1, local_chunks=1):
    """Dummy Forcing (causal_model_dummyforcing.py): sink frame 0 and a local buffer of the
    last 3 * local_chunks frames after it; after the typing chunk, first heads read the sink,
    last heads the newest local frame, mid heads the local buffer."""
    t0, r = F * k, F * local_chunks
    local = list(range(max(1, t0 - r), t0))
    if k <= ar_start:
        return ([0] if t0 else []) + local
    return {FIRST: [0], LAST: [t0 - 1], MID: local}[kind]


def dummy_assign(p0, p1, num_dummy):
    """dynamic_head_programming: p0, p1 [L, H] -> [L, H] FIRST / MID / LAST."""
    p0n, p1n = p0.reshape(-1) / p0.sum(), p1.reshape(-1) / p1.sum()
    order = np.argsort(np.maximum(p0n, p1n), kind="stable")
    kind = np.where(p0n < p1n, int(MID), int(FIRST))
    kind[order[:num_dummy]] = int(LAST)
    return kind.reshape(p0.shape)


def dummy_mass(q_rows, keys, num_first_tokens, own_tokens):
    """online_head_classification for one sample: q_rows [R, H, Dh] (after RoPE), keys
    [N, H, Dh] as upstream concatenates them (sink, local, the chunk's own). Returns p0, p1 [H]:
    the mean over rows of the softmax mass on the first `num_first_tokens` keys and on the
    keys between them and the chunk's own."""
    logits = np.einsum("rhd,nhd->hrn", q_rows, keys) / np.sqrt(q_rows.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return (w[..., :num_first_tokens].sum(-1).mean(-1),
            w[..., num_first_tokens:keys.shape[0] - own_tokens].sum(-1).mean(-1))


def forcing_kv_frames(k, layer, kind, sink=1, spatial=1, temporal=1, ar_start=1):
    """Forcing-KV (causal_model_forcingkv.py) without its bands: the sinks and, before grouping
    and in layer 0, the last max(spatial, temporal) frames after them; after, the last
    `spatial` (static heads) or `temporal` (dynamic heads) frames."""
    t0 = F * k
    grouped = k > ar_start and layer > 0
    keep = (spatial if kind == STATIC else temporal) if grouped else max(spatial, temporal)
    return sorted(set(range(min(sink, t0))) | set(range(max(sink, t0 - keep), t0)))


def forcing_kv_bands(chain, num_frame_patch, keep):
    """dynamic_compression's choice: chain [4, T, D] (the 3 candidate frames and the next one,
    one sample, the dynamic heads' keys concatenated per token) -> the kept candidate band
    numbers (frame * n + band), sorted."""
    n = num_frame_patch
    a, b = chain[:3].reshape(3, n, -1, chain.shape[-1]), chain[1:].reshape(3, n, -1, chain.shape[-1])
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-8)
    return np.sort(np.argsort(cos.mean(-1).reshape(-1), kind="stable")[:keep])
