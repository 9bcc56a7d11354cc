"""Head typing from recorded profiles (pure numpy; Pyramid Forcing's offline typing).

A profile x[T] is, for one prompt, layer and head, the mean pre-softmax logit between the
last query frame's tokens and those of each history frame. Per prompt:
  1. pos = fraction of x > 0, neg = fraction of x < 0;
  2. pos >= sign_threshold -> Anchor; neg >= sign_threshold -> Veil;
  3. periodicity of the first difference (mean removed, Hann window, rFFT amplitude, with
     harmonics folded onto their fundamental): Wave when the folded spectrum has a clear peak
     (>= peak_ratio x its mean) at a period within [period_min, period_max] (around 6);
  4. else the sign of mean(x): Anchor if > 0, Veil otherwise.
Prompts are combined by majority vote; a tie goes to the type of the prompt-averaged profile
when it is among the tied types, else to the first tied type in (Anchor, Wave, Veil).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pyramid_jax.cache.head_map import ANCHOR, DYNAMIC, STATIC, VEIL, WAVE


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    sign_threshold: float = 0.8
    period_min: float = 4.5
    period_max: float = 8.5
    peak_ratio: float = 1.5
    harmonics: int = 4          # fold the 2nd..4th multiples of each candidate period
    harmonic_decay: float = 0.5  # weight decay^(m-1) of the m-th multiple
    harmonic_tol: float = 0.2    # relative period tolerance when matching a multiple
    fold_period_min: float = 3.0  # fundamentals shorter than a chunk are not folded onto
    fold_min_cycles: float = 6.0  # a fundamental must repeat this often within the profile


def folded_spectrum(x: np.ndarray, cfg: ClassifyConfig = ClassifyConfig()):
    """Periods [K] (ascending) and harmonic-folded amplitudes [..., K] of profiles x [..., T]."""
    d = np.diff(np.asarray(x, np.float64), axis=-1)
    d = (d - d.mean(-1, keepdims=True)) * np.hanning(d.shape[-1])
    amp = np.abs(np.fft.rfft(d, axis=-1))[..., 1:]
    period = 1.0 / np.fft.rfftfreq(d.shape[-1])[1:]
    order = np.argsort(period)
    period, amp = period[order], amp[..., order]
    folded = amp.copy()
    fold_max = d.shape[-1] / cfg.fold_min_cycles
    for i, base in enumerate(period):
        if not cfg.fold_period_min <= base <= fold_max:
            continue
        for m in range(2, cfg.harmonics + 1):
            j = int(np.argmin(np.abs(period - m * base)))
            if abs(period[j] - m * base) / (m * base) < cfg.harmonic_tol:
                folded[..., i] += amp[..., j] * cfg.harmonic_decay ** (m - 1)
    return period, folded


def features(x: np.ndarray, cfg: ClassifyConfig = ClassifyConfig()) -> dict[str, np.ndarray]:
    """Per-profile features. x [..., T] -> dict of [...] arrays."""
    x = np.asarray(x, np.float64)
    period, folded = folded_spectrum(x, cfg)
    band = (period >= cfg.period_min) & (period <= cfg.period_max)
    if not band.any():
        raise ValueError(f"profiles of {x.shape[-1]} frames have no FFT bin with a period in "
                         f"[{cfg.period_min}, {cfg.period_max}]; record longer profiles")
    in_band = folded[..., band]
    return {
        "pos": (x > 0).mean(-1),
        "neg": (x < 0).mean(-1),
        "mean": x.mean(-1),
        "period": period[band][np.argmax(in_band, axis=-1)],
        "peak": in_band.max(-1) / np.maximum(folded.mean(-1), 1e-30),
        "dominant_period": period[np.argmax(folded, axis=-1)],
    }


def classify_profiles(x: np.ndarray, cfg: ClassifyConfig = ClassifyConfig()) -> np.ndarray:
    """Profiles [..., T] -> types [...] (WAVE / ANCHOR / VEIL), one prompt at a time."""
    f = features(x, cfg)
    by_mean = np.where(f["mean"] > 0, ANCHOR, VEIL)
    periodic = f["peak"] >= cfg.peak_ratio
    out = np.where(periodic, WAVE, by_mean)
    out = np.where(f["neg"] >= cfg.sign_threshold, VEIL, out)
    out = np.where(f["pos"] >= cfg.sign_threshold, ANCHOR, out)
    return out.astype(np.int32)


def vote(per_prompt: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Majority over prompts. per_prompt [P, L, H]; tie_break [L, H] (averaged-profile types)."""
    types = (ANCHOR, WAVE, VEIL)
    counts = np.stack([(per_prompt == t).sum(0) for t in types])  # [3, L, H]
    best = counts.max(0)
    tied = counts == best
    out = np.full(per_prompt.shape[1:], ANCHOR, np.int32)
    for i in reversed(range(3)):  # the first tied type in `types` wins...
        out = np.where(tied[i], types[i], out)
    avg_ok = np.zeros_like(tied[0])
    for i, t in enumerate(types):  # ...unless the averaged profile's type is among the tied
        avg_ok |= tied[i] & (tie_break == t)
    return np.where(avg_ok, tie_break, out).astype(np.int32)


def classify_heads(profiles: np.ndarray, cfg: ClassifyConfig = ClassifyConfig()):
    """profiles [P, L, H, T] (history frames only) -> (head map [L, H], per-prompt [P, L, H])."""
    p = np.asarray(profiles, np.float64)
    if p.ndim != 4:
        raise ValueError(f"profiles must be [prompts, layers, heads, frames], got shape {list(p.shape)}")
    if not np.isfinite(p).all():
        raise ValueError("profiles contain NaN or inf")
    per_prompt = classify_profiles(p, cfg)
    return vote(per_prompt, classify_profiles(p.mean(0), cfg)), per_prompt


@dataclasses.dataclass(frozen=True)
class StaticRule:
    """Forcing-KV's profiling rule (its head_profile.py): a head is static when the attention
    mass on the last `last` key frames over the mass on key frames from index `skip_first` is
    at least `threshold`."""

    threshold: float = 0.8
    last: int = 4
    skip_first: int = 1


def static_heads(masses: np.ndarray, rule: StaticRule = StaticRule()):
    """masses [P, L, H, T] (attention mass per key frame, the query's own chunk last) ->
    (head map [L, H] of STATIC / DYNAMIC, scores [L, H]); prompts are averaged first."""
    m = np.asarray(masses, np.float64)
    if m.ndim != 4 or m.shape[-1] <= rule.skip_first:
        raise ValueError(f"masses must be [prompts, layers, heads, frames > {rule.skip_first}], got {list(m.shape)}")
    m = m.mean(0)
    score = m[..., -rule.last:].sum(-1) / m[..., rule.skip_first:].sum(-1)
    return np.where(score >= rule.threshold, int(STATIC), int(DYNAMIC)).astype(np.int32), score
