"""A picture of videos: frames evenly spaced (or every --every seconds), one row per video.

  python tools/strip.py --out docs/demo_strip.png [--frames 8 | --every 5 --fps 10] [--scale 2] A.mp4 [B.mp4 ...]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def read_video(path: str) -> np.ndarray:
    import warnings

    import imageio.v2 as imageio

    with warnings.catch_warnings():  # ffmpeg is a subprocess; JAX warns about any fork
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([np.asarray(f)[..., :3] for f in imageio.get_reader(path, "ffmpeg")])


def picks(length: int, frames: int = 8, every: float = 0, fps: int = 10) -> np.ndarray:
    """Frame indices: `frames` evenly spaced over the video, or one every `every` seconds."""
    if every:
        return np.arange(0, length, max(1, round(every * fps)))
    return np.linspace(0, length - 1, frames).round().astype(int)


def strip(videos: list[np.ndarray], idx_of, scale: int = 1, gap: int = 2) -> np.ndarray:
    """uint8 image: row i holds videos[i]'s frames at idx_of(len(video)), `gap` white pixels apart."""
    rows = []
    for v in videos:
        frames = [np.kron(v[i], np.ones((scale, scale, 1), np.uint8)) for i in idx_of(len(v))]
        h = frames[0].shape[0]
        sep = np.full((h, gap, 3), 255, np.uint8)
        rows.append(np.concatenate([x for f in frames for x in (f, sep)][:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    sep = np.full((gap, width, 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--every", type=float, default=0, help="seconds between frames (instead of --frames)")
    p.add_argument("--fps", type=int, default=10, help="the videos' frame rate (for --every)")
    p.add_argument("--scale", type=int, default=1)
    args = p.parse_args(argv)
    try:
        videos = [read_video(v) for v in args.videos]
    except Exception as e:
        print(f"strip: error: cannot read a video ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
              file=sys.stderr)
        return 2
    from pyramid_jax.media import write_png

    write_png(args.out, strip(videos, lambda n: picks(n, args.frames, args.every, args.fps), args.scale))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
