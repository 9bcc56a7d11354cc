"""Starting a generation from frames it is given: a video to continue (`init_video`: an mp4,
or an npz of latents as `save_latents` writes them) or an image (`init_image`: png / jpg,
taken as a still clip).

Frames are resized (keeping their aspect) to cover the config's height x width and cut from
the centre; a latent model encodes them with its VAE's encoder (Wan or TAEHV), a pixel model (the demo)
takes them as they are. Of the latent frames, the last whole chunks are kept: they are what
generation continues from (`ChunkLoop.prefill`).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pyramid_jax.errors import UserError

log = logging.getLogger("pyramid_jax")

IMAGE_TYPES = (".png", ".jpg", ".jpeg")
VIDEO_TYPES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")


def field_of(spec) -> tuple[str, str] | None:
    """("init_video" | "init_image", path), or None when the config starts from noise alone."""
    if spec.inputs.init_video and spec.inputs.init_image:
        raise UserError("init_video and init_image are both set: give one")
    if spec.inputs.init_video:
        return "init_video", spec.inputs.init_video
    if spec.inputs.init_image:
        return "init_image", spec.inputs.init_image
    return None


def frames_needed(spec) -> int:
    """Video frames that make one chunk of latent frames (pixel model: one frame each)."""
    from pyramid_jax.video import strides

    stride = strides(spec)[0]
    return 1 + stride * (spec.sampler.frames_per_chunk - 1) if stride > 1 else spec.sampler.frames_per_chunk


def check(spec, cfg, latent_hw) -> None:
    """Everything about the given frames that can be known before a model loads: the file
    reads, holds enough frames for one chunk, an image is 8-bit RGB / grey, an npz of latents
    has the model's shape. One UserError line each."""
    given = field_of(spec)
    if given is None:
        return
    field, path = given
    if not os.path.isfile(path):
        raise UserError(f"{field} {path!r}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{field} {path!r} is empty")
    ext = os.path.splitext(path)[1].lower()
    if field == "init_image":
        if ext not in IMAGE_TYPES:
            raise UserError(f"init_image {path!r}: not a png or jpg (for a video use init_video)")
        _read_image(path)
    elif ext == ".npz":
        _read_latents(path, cfg, latent_hw, spec.sampler.frames_per_chunk)
    elif ext in VIDEO_TYPES:
        count = len(_read_video(path))
        if count < frames_needed(spec):
            raise UserError(f"init_video {path!r} has {count} frames; one chunk needs at least {frames_needed(spec)}")
    else:
        raise UserError(f"init_video {path!r}: not a video (mp4, ...) or an npz of latents")


def _read_image(path: str) -> np.ndarray:
    """uint8 [H, W, 3] of an 8-bit RGB or grey image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                raise UserError(f"init_image {path!r} has an alpha channel: save it as RGB (no transparency)")
            if mode.startswith("I") or mode == "F":
                raise UserError(f"init_image {path!r} has {mode} pixels (16 bits or more): save it as 8-bit RGB")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"init_image {path!r}: not a readable image ({type(e).__name__})") from None


def _read_video(path: str) -> np.ndarray:
    """uint8 [T, H, W, 3] of every frame of a video file."""
    import warnings

    try:
        import imageio.v2 as imageio

        with warnings.catch_warnings():  # ffmpeg is a subprocess; JAX warns about any fork
            warnings.simplefilter("ignore", RuntimeWarning)
            frames = [np.asarray(f)[..., :3] for f in imageio.get_reader(path, "ffmpeg")]
    except ImportError:
        raise UserError("reading init_video needs imageio-ffmpeg: pip install -e '.[video]'") from None
    except Exception as e:
        raise UserError(f"init_video {path!r}: not a readable video ({type(e).__name__})") from None
    if not frames:
        raise UserError(f"init_video {path!r} holds no frames")
    return np.stack(frames)


def _read_latents(path: str, cfg, latent_hw, frames_per_chunk: int) -> np.ndarray:
    """float32 latents [B, F, C, h, w] of an npz (`latents`, as save_latents writes them)."""
    try:
        with np.load(path) as data:
            if "latents" not in data.files:
                raise UserError(f"init_video {path!r} has no `latents` array (as --config.save_latents writes)")
            lat = np.asarray(data["latents"], np.float32)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"init_video {path!r}: not a readable npz ({type(e).__name__})") from None
    want = (cfg.in_channels, *latent_hw)
    if lat.ndim != 5 or tuple(lat.shape[2:]) != want:
        raise UserError(f"init_video {path!r} holds latents of shape {list(lat.shape)}; this model and size need "
                        f"[B, F, {want[0]}, {want[1]}, {want[2]}]")
    if lat.shape[1] < frames_per_chunk:
        raise UserError(f"init_video {path!r} holds {lat.shape[1]} latent frames; one chunk needs {frames_per_chunk}")
    return lat


def fit(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 frames [T, H, W, 3] (keeping their aspect) to cover height x width, then cut
    the centre."""
    from PIL import Image

    t, h, w = frames.shape[:3]
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    out = [np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC))[top:top + height, left:left + width]
           for f in frames]
    return np.stack(out)


def given_frames(spec) -> np.ndarray:
    """uint8 frames [T, height, width, 3] of init_video / init_image (an image: a still clip of
    one chunk's frames), resized and cut to the config's size (logged)."""
    field, path = field_of(spec)
    raw = _read_image(path)[None] if field == "init_image" else _read_video(path)
    if field == "init_image":
        raw = np.repeat(raw, frames_needed(spec), axis=0)
    frames = fit(raw, spec.inputs.height, spec.inputs.width)
    log.info("%s %s: %d frames of %dx%d%s", field, path, len(raw), raw.shape[2], raw.shape[1],
             "" if raw.shape[1:3] == frames.shape[1:3] else
             f", resized and centre-cropped to {spec.inputs.width}x{spec.inputs.height}")
    return frames


def initial_latents(spec, cfg, latent_hw, vae_encoder, batch: int) -> np.ndarray:
    """The latents generation continues from: [batch, F0, C, h, w] float32, F0 the last whole
    chunks of what was given. vae_encoder: the VAE's encoder (None for a pixel model)."""
    f = spec.sampler.frames_per_chunk
    if spec.inputs.init_video and os.path.splitext(spec.inputs.init_video)[1].lower() == ".npz":
        lat = _read_latents(spec.inputs.init_video, cfg, latent_hw, f)
        log.info("init_video %s: %d latent frames", spec.inputs.init_video, lat.shape[1])
    else:
        frames = given_frames(spec)
        if vae_encoder is None:  # a pixel model's frames are its latents
            lat = (frames.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)[None]
        else:
            import jax.numpy as jnp

            z = vae_encoder(jnp.asarray(frames[None], jnp.dtype(vae_encoder.cfg.dtype)) / 127.5 - 1.0)
            lat = np.asarray(z, np.float32).transpose(0, 1, 4, 2, 3)  # [1, F, C, h, w]
    keep = lat.shape[1] // f * f
    if keep < lat.shape[1]:
        log.info("continuing from the last %d of %d given latent frames (whole chunks of %d)", keep, lat.shape[1], f)
    lat = lat[:, lat.shape[1] - keep:]
    if lat.shape[0] not in (1, batch):
        raise UserError(f"init_video holds {lat.shape[0]} videos' latents for a batch of {batch}")
    return np.broadcast_to(lat, (batch,) + lat.shape[1:]).copy()
