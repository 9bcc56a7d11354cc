"""Long-horizon video measures that need no external model.

All take uint8 videos [T, H, W, 3] (as written to mp4) and return plain floats or per-frame
arrays:
  color_drift     how far each frame's mean colour moves from the first seconds' (RGB L2)
  brightness_drift  the same for mean luma
  flicker         mean |frame difference| at chunk boundaries vs inside chunks
  sharpness       variance of the Laplacian of luma per frame, and its last/first-quarter ratio
  persistence     for the synthetic shapes domain: the share of frames in which each object
                  colour seen in the first frames still covers at least a third of its area there
  prompt adherence  for the shapes domain: the share of frames (from 1 s on) that show the
                  caption's background colour (any texture shade) over >= 30% of the frame and
                  its shape's colour over >= 0.5%, counted after a 3x3 median filter (grain,
                  single pixels of every colour, does not pass for a shape)
"""

from __future__ import annotations

import numpy as np

from pyramid_jax.data.shapes import COLORS

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


def _foreground(px, min_dist):
    """[N, P] mask of pixels far from their frame's median (background) colour; px [N, P, 3]."""
    return np.linalg.norm(px - np.median(px, axis=1, keepdims=True), axis=-1) > min_dist


def _object_colors(frames, max_colors: int = 3, step: int = 32, min_dist: float = 48, radius: float = 40):
    """[K, 3] mean colours of the largest foreground colour groups of frames [N, H, W, 3].

    Pixels are grouped by quantised colour; groups nearer than `radius` to a larger one are the
    same object's shading and are skipped. A group needs ~0.1% of the pixels of each frame.
    """
    px = np.asarray(frames, np.float32).reshape(len(frames), -1, 3)
    fg = px[_foreground(px, min_dist)]
    if not len(fg):
        return np.zeros((0, 3), np.float32)
    _, inverse, counts = np.unique(fg // step, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    min_count = max(4.0, 1e-3 * px.shape[1]) * len(frames)
    colors = []
    for i in np.argsort(-counts):
        if counts[i] < min_count or len(colors) == max_colors:
            break
        c = fg[inverse == i].mean(0)
        if all(np.linalg.norm(c - o) >= radius for o in colors):
            colors.append(c)
    return np.array(colors, np.float32).reshape(-1, 3)


def persistence(video, ref_frames: int = 4, keep: float = 1 / 3, min_dist: float = 48,
                radius: float = 40) -> float:
    """Share of (object colour, frame) pairs in which the colour keeps >= keep of its area.

    Objects are the foreground colours of the first ref_frames; a pixel counts for a colour when
    it is within `radius` (RGB) of it and still stands out from its frame's background, so soft or
    slightly shifted colours still count. NaN when the first frames show no object at all.
    """
    v = np.asarray(video, np.float32)
    colors = _object_colors(v[:ref_frames], min_dist=min_dist, radius=radius)
    if not len(colors):
        return float("nan")
    px = v.reshape(len(v), -1, 3)
    fg = _foreground(px, min_dist)
    present = []
    for c in colors:
        area = (fg & (np.linalg.norm(px - c, axis=-1) < radius)).sum(1).astype(np.float32)
        present.append(area >= keep * area[:ref_frames].mean())
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


# Every palette colour in the shades the shapes renderer draws (textures darken to 0.75x and
# lighten to 1.1x + 15): a pixel takes the name of its nearest shade.
_SHADES = np.asarray([[min(max(x * f + b, 0), 255) for x in rgb] for rgb in COLORS.values()
                      for f, b in ((1.0, 0), (0.75, 0), (1.1, 15))], np.float32)
_SHADE_NAMES = [name for name in COLORS for _ in range(3)]


def caption_colors(prompt: str) -> tuple[str, str] | None:
    """(shape colour, background colour) a shapes caption names ("a red circle ... on a blue
    striped background"), or None for a prompt outside that grammar."""
    words = prompt.lower().split()
    if len(words) < 2 or words[0] != "a" or " on a " not in prompt.lower():
        return None
    background = prompt.lower().rsplit(" on a ", 1)[1].split()[:1]
    if words[1] not in COLORS or not background or background[0] not in COLORS:
        return None
    return words[1], background[0]


def median3(video) -> np.ndarray:
    """Each frame's 3x3 median per channel (edges repeated): [T, H, W, 3] -> the same."""
    v = np.asarray(video, np.float32)
    p = np.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = v.shape[1:3]
    return np.median(np.stack([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]), axis=0)


def color_shares(video, median: bool = False) -> dict[str, np.ndarray]:
    """{colour name: [T] share of each frame's pixels nearest to one of its shades}; with
    median, of the frames' 3x3 medians."""
    video = median3(video) if median else video
    px = np.asarray(video, np.float32).reshape(len(video), -1, 1, 3)
    nearest = np.argmin(((px - _SHADES) ** 2).sum(-1), axis=-1)  # [T, HW]
    names = np.asarray(_SHADE_NAMES)[nearest]
    return {name: (names == name).mean(1) for name in COLORS}


def prompt_adherence(video, prompt: str, fps: int, start_s: float = 1.0, background: float = 0.3,
                     shape: float = 0.005) -> float:
    """Share of frames from start_s on that show the caption's background colour over >=
    `background` of the frame and its shape's colour over >= `shape`, both counted on the
    frames' 3x3 medians (so noise grain, which holds every colour, cannot pass for a shape); NaN
    for a prompt outside the shapes caption grammar (or a video shorter than start_s)."""
    named = caption_colors(prompt)
    frames = np.asarray(video)[int(round(start_s * fps)):]
    if named is None or not len(frames):
        return float("nan")
    shares = color_shares(frames, median=True)
    ok = (shares[named[1]] >= background) & (shares[named[0]] >= shape)
    return float(ok.mean())
