"""Long-horizon video measures that need no external model.

All take uint8 videos [T, H, W, 3] (as written to mp4) and return plain floats or per-frame
arrays:
  color_drift     how far each frame's mean colour moves from the first seconds' (RGB L2)
  brightness_drift  the same for mean luma
  flicker         mean |frame difference| at chunk boundaries vs inside chunks
  sharpness       variance of the Laplacian of luma per frame, and its last/first-quarter ratio
  persistence     for the synthetic shapes domain: the share of frames in which each object
                  colour seen at the start still covers at least a third of its initial area
"""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _f(video):
    return np.asarray(video, np.float32)


def color_drift(video, ref_frames: int = 16) -> np.ndarray:
    """[T] RGB distance of each frame's mean colour from the mean of the first ref_frames."""
    means = _f(video).mean(axis=(1, 2))
    return np.linalg.norm(means - means[:ref_frames].mean(0), axis=-1)


def brightness_drift(video, ref_frames: int = 16) -> np.ndarray:
    luma = _f(video) @ LUMA
    means = luma.mean(axis=(1, 2))
    return np.abs(means - means[:ref_frames].mean())


def frame_differences(video) -> np.ndarray:
    """[T-1] mean absolute difference between consecutive frames."""
    v = _f(video)
    return np.abs(v[1:] - v[:-1]).mean(axis=(1, 2, 3))


def chunk_starts(num_frames: int, first_chunk: int = 9, chunk: int = 12) -> np.ndarray:
    """Video frames that start a chunk (3 latent frames -> 9 then 12 video frames)."""
    return np.arange(first_chunk, num_frames, chunk)


def flicker(video, first_chunk: int = 9, chunk: int = 12) -> dict:
    d = frame_differences(video)  # d[t-1] is the change into frame t
    starts = chunk_starts(len(video), first_chunk, chunk)
    boundary = np.zeros(len(d), bool)
    boundary[starts - 1] = True
    at, inside = float(d[boundary].mean()) if boundary.any() else 0.0, float(d[~boundary].mean())
    return {"boundary": at, "inside": inside, "ratio": at / max(inside, 1e-6)}


def sharpness(video) -> np.ndarray:
    """[T] variance of the 4-neighbour Laplacian of luma."""
    y = _f(video) @ LUMA
    lap = (-4 * y[:, 1:-1, 1:-1] + y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:])
    return lap.var(axis=(1, 2))


def sharpness_trend(video) -> float:
    """Mean sharpness of the last quarter over the first quarter (1 = no loss)."""
    s = sharpness(video)
    q = max(1, len(s) // 4)
    return float(s[-q:].mean() / max(s[:q].mean(), 1e-6))


def _object_colors(frame, max_colors: int = 3, step: int = 32):
    """Quantised colours that differ from the frame's median (background) colour."""
    px = frame.reshape(-1, 3).astype(np.int32)
    bg = np.median(px, axis=0)
    fg = px[np.linalg.norm(px - bg, axis=1) > 60]
    if len(fg) == 0:
        return []
    q = fg // step
    keys, counts = np.unique(q, axis=0, return_counts=True)
    order = np.argsort(-counts)
    return [tuple(keys[i]) for i in order[:max_colors] if counts[i] >= max(8, 0.002 * len(px))]


def persistence(video, ref_frames: int = 4, step: int = 32, keep: float = 1 / 3) -> float:
    """Share of (object colour, frame) pairs in which the colour keeps >= keep of its area."""
    v = np.asarray(video)
    colors = _object_colors(v[0], step=step)
    if not colors:
        return float("nan")
    q = v.astype(np.int32) // step
    present = []
    for c in colors:
        area = (q == np.array(c)).all(-1).sum(axis=(1, 2)).astype(np.float32)
        ref = area[:ref_frames].mean()
        present.append(area >= keep * ref)
    return float(np.mean(present))


def summary(video, first_chunk: int = 9, chunk: int = 12, fps: int = 16) -> dict:
    """All measures of one video; drift is reported over its last quarter."""
    q = max(1, len(video) // 4)
    fl = flicker(video, first_chunk, chunk)
    return {
        "frames": int(len(video)),
        "seconds": len(video) / fps,
        "color_drift": float(color_drift(video)[-q:].mean()),
        "brightness_drift": float(brightness_drift(video)[-q:].mean()),
        "flicker_boundary": fl["boundary"],
        "flicker_inside": fl["inside"],
        "flicker_ratio": fl["ratio"],
        "sharpness_trend": sharpness_trend(video),
        "persistence": persistence(video),
    }
