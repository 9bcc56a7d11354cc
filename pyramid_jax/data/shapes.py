"""Procedural videos of moving coloured shapes with template captions (the demo's data).

Deterministic by seed and any length: each clip draws a textured background (stripes,
checkers or blobs, optionally panning), one to three shapes (circle, square, triangle) with
their own colour, size, speed and direction, bouncing off the borders, drawn in a fixed order
so they occlude each other. The caption names the first shape's colour, shape and motion and
the background, e.g. "a red circle bouncing left to right on a blue striped background".
"""

from __future__ import annotations

import dataclasses

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
          "purple": (140, 60, 190), "orange": (240, 140, 30), "white": (240, 240, 240), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("striped", "checkered", "speckled")


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: float  # radius as a fraction of the frame height
    pos: tuple[float, float]  # (y, x) in [0, 1]
    vel: tuple[float, float]  # per frame


@dataclasses.dataclass(frozen=True)
class Clip:
    background: str
    texture: str
    pan: tuple[float, float]  # background drift per frame (pixels, as a fraction of the width)
    shapes: tuple[Shape, ...]

    @property
    def caption(self) -> str:
        s = self.shapes[0]
        vy, vx = s.vel
        if abs(vx) >= abs(vy):
            motion = "bouncing left to right" if vx > 0 else "bouncing right to left"
        else:
            motion = "bouncing downwards" if vy > 0 else "bouncing upwards"
        speed = "quickly " if max(abs(vx), abs(vy)) > 0.03 else ""
        extra = f" with {len(self.shapes) - 1} other shape{'s' if len(self.shapes) > 2 else ''}" \
            if len(self.shapes) > 1 else ""
        pan = " while the camera pans" if any(self.pan) else ""
        return f"a {s.color} {s.kind} {speed}{motion}{extra} on a {self.background} {self.texture} background{pan}"


def random_clip(seed: int) -> Clip:
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    background = names[rng.integers(len(names))]
    shapes = []
    for _ in range(rng.integers(1, 4)):
        color = background
        while color == background:
            color = names[rng.integers(len(names))]
        speed = rng.uniform(0.008, 0.05)
        angle = rng.uniform(0, 2 * np.pi)
        shapes.append(Shape(SHAPES[rng.integers(3)], color, float(rng.uniform(0.08, 0.2)),
                            (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
                            (float(speed * np.sin(angle)), float(speed * np.cos(angle)))))
    pan = (0.0, float(rng.uniform(-0.01, 0.01))) if rng.random() < 0.4 else (0.0, 0.0)
    return Clip(background, TEXTURES[rng.integers(3)], pan, tuple(shapes))


def _bounce(p0, v, t, lo, hi):
    """Position at time t of a point moving at v, reflected between lo and hi."""
    span = hi - lo
    x = (p0 - lo + v * t) % (2 * span)
    return lo + np.where(x > span, 2 * span - x, x)


def render(clip: Clip, num_frames: int, height: int, width: int) -> np.ndarray:
    """uint8 video [T, H, W, 3]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dark, light = background_shades(clip.background).astype(np.float32)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        oy, ox = clip.pan[0] * t * width, clip.pan[1] * t * width
        u, v = (yy + oy) / max(height, 1) * 8, (xx + ox) / max(width, 1) * 8
        if clip.texture == "striped":
            tex = np.sin(v * np.pi) > 0
        elif clip.texture == "checkered":
            tex = (np.floor(u) + np.floor(v)) % 2 > 0
        else:
            tex = np.sin(u * 2.3) * np.sin(v * 1.7 + u) > 0.3
        frame = np.where(tex[..., None], dark, light)
        for s in clip.shapes:
            r = s.size
            cy = _bounce(s.pos[0], s.vel[0], t, r, 1 - r) * height
            cx = _bounce(s.pos[1], s.vel[1], t, r * height / width, 1 - r * height / width) * width
            rad = r * height
            dy, dx = yy - cy, xx - cx
            if s.kind == "circle":
                mask = dy * dy + dx * dx <= rad * rad
            elif s.kind == "square":
                mask = (np.abs(dy) <= rad * 0.85) & (np.abs(dx) <= rad * 0.85)
            else:
                mask = (dy <= rad * 0.7) & (dy >= -rad) & (np.abs(dx) <= (dy + rad) * 0.6)
            frame = np.where(mask[..., None], np.asarray(COLORS[s.color], np.float32), frame)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def background_shades(name: str) -> np.ndarray:
    """[2, 3] uint8: the two colours `render` paints a background named `name` in."""
    base = np.asarray(COLORS[name], np.float32)
    return np.clip(np.stack([base * 0.75, np.minimum(base * 1.1 + 15, 255)]), 0, 255).astype(np.uint8)


def foreground(video: np.ndarray, background: str) -> np.ndarray:
    """bool [T, H, W]: the pixels of a rendered clip [T, H, W, 3] that are not its background
    (the shapes), from the background's name."""
    diff = np.abs(video[..., None, :].astype(np.int16) - background_shades(background).astype(np.int16))
    return ~np.any(np.all(diff <= 2, axis=-1), axis=-1)


def color_pixels(video: np.ndarray, color: str) -> np.ndarray:
    """bool [T, H, W]: the pixels of a rendered clip [T, H, W, 3] painted in the shape colour
    `color` (shapes are flat: no edge blends into its neighbours)."""
    diff = np.abs(video.astype(np.int16) - np.asarray(COLORS[color], np.int16))
    return np.all(diff <= 2, axis=-1)


def sample(seed: int, num_frames: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """A clip's frames [T, H, W, 3] uint8 and its caption."""
    clip = random_clip(seed)
    return render(clip, num_frames, height, width), clip.caption
