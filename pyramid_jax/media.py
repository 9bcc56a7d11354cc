"""Frames -> mp4 with the ffmpeg that imageio-ffmpeg ships; atomic writes.

Until the VAE lands, `latent_preview` turns latents into a viewable video: three latent
channels as RGB, normalised per video, each latent frame held for 4 video frames (the
VAE's temporal stride) and upscaled 8x (its spatial stride).
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import warnings

import numpy as np


def latent_preview(latents: np.ndarray, upscale: int = 8, hold: int = 4) -> np.ndarray:
    """latents [F, C, h, w] -> uint8 frames [F * hold, h * upscale, w * upscale, 3]."""
    rgb = np.asarray(latents[:, :3], np.float32)
    if rgb.shape[1] < 3:
        rgb = np.concatenate([rgb] + [rgb[:, :1]] * (3 - rgb.shape[1]), axis=1)
    lo, hi = np.percentile(rgb, [1, 99])
    img = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    img = (img.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    img = img.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return img.repeat(hold, axis=0)


PARTIAL = ".partial-"


def _temp_beside(path: str, suffix: str) -> str:
    """A temporary file next to path (same filesystem, so the final rename is atomic),
    named `.partial-<name>-*` and with the permissions a plain open() would give."""
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{PARTIAL}{os.path.basename(path)}-", suffix=suffix, dir=out_dir)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


class Mp4Writer:
    """Streams uint8 frames [H, W, 3] into an mp4 under a temporary name; close() renames it
    into place, abort() removes it. Use as a context manager (an exception aborts)."""

    def __init__(self, path: str, fps: int = 16):
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise RuntimeError("writing mp4 needs imageio-ffmpeg: pip install -e '.[video]'") from None
        self.path, self.fps, self.tmp, self.writer, self.frames = path, fps, None, None, 0

    def write(self, frames: np.ndarray) -> None:
        import imageio_ffmpeg

        frames = np.ascontiguousarray(frames, np.uint8)
        if self.writer is None:
            h, w = frames.shape[1:3]
            self.tmp = _temp_beside(self.path, ".mp4")
            self.writer = imageio_ffmpeg.write_frames(self.tmp, (w, h), fps=self.fps, codec="libx264",
                                                      pix_fmt_out="yuv420p", macro_block_size=1, quality=7,
                                                      ffmpeg_log_level="quiet")  # failures surface as our one line
            with warnings.catch_warnings():  # ffmpeg is a subprocess; JAX warns about any fork
                warnings.simplefilter("ignore", RuntimeWarning)
                self.writer.send(None)
        for frame in frames:
            self.writer.send(frame)
            self.frames += 1

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()  # ffmpeg finishes the file (and fails here on a full disk)
                # imageio-ffmpeg does not check ffmpeg's exit status: a refused frame size
                # or a full disk leaves an empty file rather than an error
                if not os.path.getsize(self.tmp):
                    raise OSError(errno.EIO, "ffmpeg wrote no video (an odd frame size, or a full disk)", self.path)
                os.replace(self.tmp, self.path)
            except BaseException:
                self._remove_tmp()
                raise

    def abort(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # a broken ffmpeg pipe; its file goes anyway
                pass
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self.tmp and os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.close()


def write_mp4(path: str, frames: np.ndarray, fps: int = 16) -> None:
    """frames [N, H, W, 3] uint8 -> path (H.264), written to a temporary name, then renamed."""
    with Mp4Writer(path, fps) as writer:
        writer.write(frames)


def count_frames(path: str) -> int:
    """Frames of an mp4 (decoded to count them), or -1 if it is missing or unreadable."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.count_frames_and_secs(path)[0]
    except Exception:  # missing, truncated, not a video
        return -1


def write_text(path: str, text: str) -> None:
    """Write text to a temporary name, then rename."""
    write_bytes(path, text.encode())


def write_bytes(path: str, data: bytes) -> None:
    """Write bytes to a temporary name, then rename."""
    tmp = _temp_beside(path, ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_png(path: str, image, **savefig) -> None:
    """A PNG of image (uint8 [H, W, 3] array, or a matplotlib figure: `savefig` goes to its
    savefig) written to a temporary name, then renamed."""
    buf = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buf, format="png", **savefig)
    else:
        from PIL import Image

        Image.fromarray(np.asarray(image)).save(buf, "PNG")
    write_bytes(path, buf.getvalue())


def save_npz(path: str, **arrays) -> None:
    """np.savez to a temporary name, then rename (no half-written files)."""
    tmp = _temp_beside(path, ".npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
