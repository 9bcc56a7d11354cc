"""From a chunk's x0 to files: decoding (the streaming Wan VAE or TAEHV, or a pixel model's
frames), the mp4 writers, and the output checks made before any compute."""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from pyramid_jax import media
from pyramid_jax.errors import UserError, os_reason
from pyramid_jax.models.taehv import modeling as taehv
from pyramid_jax.models.vae import modeling as vae_model
from pyramid_jax.models.taehv import params as taehv_names
from pyramid_jax.weights.checkpoint import CheckpointError, load_taehv, load_vae, with_weights
from pyramid_jax.models.vae.params import random_vae_params

log = logging.getLogger("pyramid_jax")


def strides(spec) -> tuple[int, int]:
    """(time, space): video frames per latent frame, pixels per latent pixel."""
    return (1, 1) if spec.decoder.kind == "pixel" else (vae_model.TIME_STRIDE, vae_model.SPACE_STRIDE)


def video_frames(spec, num_frames: int) -> int:
    """Video frames that num_frames latent frames decode to (the first latent gives one)."""
    time_stride = strides(spec)[0]
    return 1 + time_stride * (num_frames - 1) if time_stride > 1 else num_frames


class PixelFrames:
    """The decoder of a pixel-space model: push(x0 [B, F, 3, H, W] in [-1, 1]) -> uint8 [B, F, H, W, 3]."""

    def push(self, x0) -> np.ndarray:
        return vae_model.to_uint8(np.moveaxis(np.asarray(x0), 2, -1))


def decoder_checkpoints(spec) -> dict[str, str]:
    """{decoder kind: checkpoint dir} of the decoders a config names: `vae.checkpoint` is the
    decoder of `vae.kind`, except that with kind taehv and a `vae.taehv_checkpoint` it names the
    Wan VAE (so a config can name both: the studio then offers both)."""
    v = spec.decoder
    if v.kind == "pixel":
        return {}
    out = {}
    if v.checkpoint:
        out["taehv" if v.kind == "taehv" and not v.taehv_checkpoint else "wan"] = v.checkpoint
    if v.taehv_checkpoint:
        out["taehv"] = v.taehv_checkpoint
    return out


def load_decoder(spec, kind: str):
    """The decoder `kind` (wan | taehv) from its checkpoint in the config."""
    path = decoder_checkpoints(spec).get(kind)
    if not path:
        raise UserError(f"no {kind} decoder in this config (vae.checkpoint / vae.taehv_checkpoint)")
    try:
        return (load_taehv if kind == "taehv" else load_vae)(path, dtype=spec.model.dtype)
    except CheckpointError as e:
        raise UserError(str(e)) from None


def load_video_weights(spec, cfg):
    """The decoder of this model's latents (the Wan VAE's, or TAEHV), or None: a pixel model's
    outputs are its frames (it must be RGB), and without a VAE there is no decoded video."""
    if spec.decoder.kind == "pixel":
        if cfg.out_channels != 3:
            raise UserError(f"vae.kind=pixel needs a model with 3 (RGB) output channels, this one has "
                            f"{cfg.out_channels}")
        return None
    if spec.decoder.kind in decoder_checkpoints(spec):
        return load_decoder(spec, spec.decoder.kind)
    if spec.decoder.random and spec.decoder.kind == "taehv":
        tcfg = taehv.TAEHVConfig(latent_channels=cfg.out_channels, dtype=spec.model.dtype)
        log.warning("NO VAE CHECKPOINT: a random TAEHV decodes the latents")
        return with_weights(taehv.TAEHV, tcfg, taehv_names.params(taehv_names.random_checkpoint(tcfg), tcfg))
    if spec.decoder.random:
        vcfg = vae_model.VAEConfig(base_dim=spec.decoder.base_dim, num_res_blocks=spec.decoder.num_res_blocks,
                                   dtype=spec.model.dtype)
        log.warning("NO VAE CHECKPOINT: a random VAE (base dim %d) decodes the latents", vcfg.base_dim)
        return with_weights(vae_model.WanVAEDecoder, vcfg, random_vae_params(vcfg))
    return None


def video_decoder(spec, batch: int, latent_hw, vae):
    """What turns each chunk's x0 [B, F, C, h, w] into uint8 frames as it is generated: the
    pixels of a pixel model, the streaming Wan VAE or TAEHV, or None (no decoded video)."""
    if spec.decoder.kind == "pixel":
        return PixelFrames()
    if vae is None:
        return None
    if isinstance(vae, taehv.TAEHV):
        return taehv.StreamingTAEHV(vae, batch, latent_hw)
    return vae_model.StreamingDecoder(vae, batch, latent_hw)


def output_paths(output: str, batch: int) -> list[str]:
    """One mp4 per sample: the output itself, or `<stem>_i<ext>` for a batch."""
    if batch == 1:
        return [output]
    stem, ext = os.path.splitext(output)
    return [f"{stem}_{i}{ext}" for i in range(batch)]


def latents_path(spec) -> str:
    """Where the latents go: save_latents, or beside the mp4 (`<output>.npz`)."""
    return spec.output.save_latents or (os.path.splitext(spec.output.output)[0] + ".npz" if spec.output.output else "")


def check_outputs(spec) -> None:
    """Every file a generation writes can be written (checked before any compute)."""
    for field, path in (("output", spec.output.output), ("save_latents", latents_path(spec)),
                        ("save_replay", spec.output.save_replay), ("trace_cache", spec.output.trace_cache)):
        if path:
            check_writable(path, field)


def check_writable(path: str, what: str) -> None:
    """Before any compute: `path` is not a directory, its directory exists (made if missing)
    and a file can be created in it."""
    try:
        if os.path.isdir(path) or path.endswith(("/", os.sep)):  # "outputs/" names a directory
            raise IsADirectoryError(21, "is a directory", path)
        parent = os.path.dirname(os.path.abspath(path))
        existing = parent
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, "Not a directory", existing)
        os.makedirs(parent, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{what} {path!r} cannot be written: {os_reason(e)}") from None


class VideoSink:
    """The mp4s of one generation, written as chunks arrive: push(x0) per chunk, then close()
    (renamed into place) or abort() (nothing left behind). Without a decoder it writes nothing
    until close(latents), which writes latent previews."""

    def __init__(self, spec, paths: list[str], decoder):
        self.spec, self.paths, self.decoder = spec, paths, decoder
        self.writers = [media.Mp4Writer(p, fps=spec.output.fps) for p in paths] if decoder is not None else []

    def push(self, x0, write: bool = True) -> None:
        """Decode a chunk's x0 into the mp4s (write=False: only through the decoder's state, e.g.
        given frames the output leaves out)."""
        if self.decoder is not None:
            for w, frames in zip(self.writers, self.decoder.push(x0)):
                if write:
                    w.write(frames)

    def close(self, latents) -> None:
        for w in self.writers:
            w.close()
            log.info("wrote %s (%d frames, %g fps, %s)", w.path, w.frames, self.spec.output.fps,
                     "pixels" if self.spec.decoder.kind == "pixel" else "decoded")
        if self.decoder is None:
            for path, lat in zip(self.paths, latents):
                media.write_mp4(path, media.latent_preview(lat))
                log.info("wrote %s (latent preview: no VAE configured)", path)

    def abort(self) -> None:
        for w in self.writers:
            w.abort()
