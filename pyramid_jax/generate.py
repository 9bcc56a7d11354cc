"""Generate one video (or one batch) from a config file.

  python -m pyramid_jax.generate --config=configs/demo.py [--config.FIELD=VALUE ...]

Bad input (unknown field, missing file, wrong shapes) gets one line on stderr and exit 2;
outputs are written to temporary names and renamed when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import tempfile
import time

import numpy as np

from pyramid_jax import logs

log = logging.getLogger("generate")

VAE_TIME_STRIDE, VAE_SPACE_STRIDE = 4, 8


class UserError(Exception):
    """Bad input; the message is printed as one line."""


# ---- config ------------------------------------------------------------------------
def parse_config(argv):
    from absl import flags
    from ml_collections import config_flags

    if not any(a.startswith("--config=") for a in argv[1:]):
        raise UserError("--config=configs/NAME.py is required (e.g. configs/demo.py)")
    path = next(a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config="))
    if not os.path.isfile(path):
        raise UserError(f"config file {path!r}: no such file (see configs/)")
    fv = flags.FlagValues()
    try:
        holder = config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
        rest = fv(argv)[1:]
    except (OSError, SyntaxError) as e:
        raise UserError(f"cannot load config file {path!r}: {logs.first_line(e)}") from None
    except (AttributeError, KeyError):
        bad = [a.split("=", 1)[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")]
        renamed = [f"--config.{b} is now --config.{RENAMED[b]}" for b in bad if b in RENAMED]
        raise UserError("; ".join(renamed) if renamed else
                        f"unknown config field in {', '.join('--config.' + b for b in bad)}; "
                        "see pyramid_jax/config.py for the fields") from None
    except flags.Error as e:
        raise UserError(logs.first_line(e)) from None
    if rest:  # e.g. the second half of a value with a space in it, split by the shell
        raise UserError(f"unexpected argument {rest[0]!r}; every option is --config.FIELD=VALUE "
                        "(quote a value that has spaces)")
    return holder.value


RENAMED = {"num_frame_per_block": "frames_per_chunk"}  # old config field -> its name now


def check_config(c):
    for old in RENAMED:
        if old in c:
            raise UserError(f"config field {old} is now {RENAMED[old]}: rename it in the config file")
    f = c.frames_per_chunk
    if f < 1:
        raise UserError(f"frames_per_chunk must be >= 1, got {f}")
    if not c.replay and (c.num_frames <= 0 or c.num_frames % f):
        raise UserError(f"num_frames ({c.num_frames}) must be a positive multiple of the chunk size "
                        f"frames_per_chunk ({f})")
    try:
        from pyramid_jax.attention import check_backend

        check_backend(c.attention.backend)
        if c.attention.backend == "pallas":  # only then does the platform matter
            import jax

            check_backend(c.attention.backend, jax.default_backend())
    except ValueError as e:
        raise UserError(str(e)) from None
    if not (c.prompt.strip() or c.prompts_file or c.prompt_embeds or c.replay):
        raise UserError("no prompt: set prompt, prompts_file, prompt_embeds or replay")
    if c.dtype not in ("float32", "bfloat16"):
        raise UserError(f"dtype must be float32 or bfloat16, got {c.dtype!r}")
    for field in ("replay", "prompts_file", "prompt_embeds"):
        path = c[field]
        if path and not os.path.isfile(path):
            raise UserError(f"{field} {path!r}: no such file")
    if c.cache.policy == "pyramid":  # read it now, before any model loads
        from pyramid_jax.cache.head_map import HeadMapError, load_head_map

        try:
            load_head_map(c.cache.head_map)
        except HeadMapError as e:
            raise UserError(str(e)) from None
    if c.vae.kind not in ("wan", "pixel"):
        raise UserError(f"unknown vae.kind {c.vae.kind!r}; choose wan or pixel")
    if c.fps <= 0:
        raise UserError(f"fps must be positive, got {c.fps}")
    if c.vae.checkpoint and not os.path.isdir(c.vae.checkpoint):
        raise UserError(f"vae.checkpoint {c.vae.checkpoint!r} not found: convert Wan2.1_VAE.pth with "
                        "tools/convert_checkpoint.py --kind vae, or set --config.vae.checkpoint=''")
    if c.checkpoint and not os.path.isdir(c.checkpoint):
        raise UserError(f"checkpoint {c.checkpoint!r} not found: convert one with "
                        "tools/convert_checkpoint.py, or set --config.checkpoint='' for random weights")


def check_outputs(c):
    """Every file generate writes can be written (checked before any compute)."""
    for field, path in (("output", c.output), ("save_latents", latents_path(c)), ("save_replay", c.save_replay)):
        if path:
            check_writable(path, field)


def latents_path(c) -> str:
    """Where the latents go: save_latents, or beside the mp4 (`<output>.npz`)."""
    return c.save_latents or (os.path.splitext(c.output)[0] + ".npz" if c.output else "")


def check_writable(path: str, what: str) -> None:
    """Before any compute: `path` is not a directory, its directory exists (made if missing)
    and a file can be created in it."""
    try:
        if os.path.isdir(path):
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


def os_reason(e: OSError) -> str:
    """'No space left on device', 'Not a directory: /a/b', ... in one short line."""
    reason = e.strerror or logs.first_line(e)
    return f"{reason}: {e.filename}" if e.filename else reason


# ---- model -------------------------------------------------------------------------
def load_dit(c):
    from pyramid_jax.models.wan import WanConfig, init_model
    from pyramid_jax.weights.checkpoint import CheckpointError, load_model

    if c.checkpoint:
        try:
            model = load_model(c.checkpoint, dtype=c.dtype, attention_backend=c.attention.backend)
        except (CheckpointError, ValueError) as e:
            raise UserError(str(e)) from None
        return model
    fields = dict(c.model.to_dict(), dtype=c.dtype)
    try:
        cfg = WanConfig.from_dict(fields)
        model = init_model(cfg, seed=0, attention_backend=c.attention.backend)
    except ValueError as e:
        raise UserError(str(e)) from None
    log.warning("NO CHECKPOINT: random weights (dim %d, %d layers); the video will show noise",
                cfg.dim, cfg.num_layers)
    return model


# ---- prompts -----------------------------------------------------------------------
def _prompts(c) -> list[str]:
    if c.prompts_file:
        with open(c.prompts_file) as fh:
            prompts = [line.strip() for line in fh if line.strip()]
        if not prompts:
            raise UserError(f"prompts_file {c.prompts_file!r} holds no prompts")
        return prompts
    return [c.prompt]  # check_config has made sure there is one


def placeholder_context(prompt: str, text_len: int, text_dim: int) -> np.ndarray:
    """Hash-seeded stand-in embeddings, one row per word (rest zero). [text_len, text_dim]."""
    words = prompt.split()[:text_len]
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    ctx = np.zeros((text_len, text_dim), np.float32)
    ctx[: len(words)] = np.random.default_rng(seed).standard_normal((len(words), text_dim)) * 0.5
    return ctx


def load_embeds(path: str) -> np.ndarray:
    try:
        data = np.load(path)
    except Exception as e:
        raise UserError(f"prompt_embeds {path!r}: not a readable .npy/.npz ({type(e).__name__})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = [k for k in ("context", "prompt_embeds") if k in data.files] or data.files
        if not keys:
            raise UserError(f"prompt_embeds {path!r}: empty npz")
        data = data[keys[0]]
    return np.asarray(data, np.float32)


class TextEncoder:
    """Prompts -> context [B, text_len, text_dim] float32, as configured by `text_encoder`."""

    def __init__(self, c, cfg):
        self.kind, self.cfg = c.text_encoder.kind, cfg
        if self.kind == "placeholder":
            log.warning("NO TEXT ENCODER: prompts become hash-seeded placeholder embeddings")
        elif self.kind == "umt5":
            self._load_umt5(c.text_encoder, c.dtype)
        elif self.kind != "none":
            raise UserError(f"unknown text_encoder.kind {self.kind!r}; choose umt5, placeholder or none")

    def _load_umt5(self, tc, dtype):
        import jax

        from pyramid_jax.models import umt5
        from pyramid_jax.weights.checkpoint import CheckpointError, load_t5

        for field in ("checkpoint", "tokenizer"):
            if not tc[field] or not os.path.exists(tc[field]):
                raise UserError(f"text_encoder.{field} {tc[field]!r} not found (convert the umT5 encoder with "
                                "tools/convert_checkpoint.py --kind t5; the tokenizer is the spiece.model file)")
        self.device = jax.devices("cpu")[0] if tc.device == "cpu" else None
        try:
            with jax.default_device(self.device) if self.device else contextlib.nullcontext():
                self.t5_cfg, self.t5_params = load_t5(tc.checkpoint, dtype=dtype)
        except CheckpointError as e:
            raise UserError(str(e)) from None
        if self.t5_cfg.d_model != self.cfg.text_dim:
            raise UserError(f"the text encoder's width {self.t5_cfg.d_model} differs from the DiT's text_dim "
                            f"{self.cfg.text_dim}")
        self.tokenizer = umt5.Tokenizer(tc.tokenizer, self.cfg.text_len)
        self._encode = jax.jit(lambda p, i, m: umt5.encode_prompts(p, self.t5_cfg, i, m))
        log.info("text encoder umT5 from %s (%d layers) on %s", tc.checkpoint, self.t5_cfg.num_layers,
                 "the host CPU" if self.device else "the default device")

    def __call__(self, prompts: list[str]) -> np.ndarray:
        cfg = self.cfg
        if self.kind == "placeholder":
            return np.stack([placeholder_context(p, cfg.text_len, cfg.text_dim) for p in prompts])
        if self.kind == "umt5":
            import jax

            try:
                ids, mask = self.tokenizer(prompts)
            except ValueError as e:
                raise UserError(str(e)) from None
            with jax.default_device(self.device) if self.device else contextlib.nullcontext():
                return np.asarray(self._encode(self.t5_params, ids, mask), np.float32)
        raise UserError("a text prompt needs a text encoder: set text_encoder.kind=umt5 (with its checkpoint "
                        "and tokenizer), or pass encoded prompts with --config.prompt_embeds=FILE.npy")


def prompt_context(c, cfg) -> np.ndarray:
    """The encoded prompts [B, text_len, text_dim] float32."""
    if c.prompt_embeds:
        ctx = load_embeds(c.prompt_embeds)
        if ctx.ndim == 2:
            ctx = ctx[None]
        if ctx.ndim != 3 or ctx.shape[-1] != cfg.text_dim:
            raise UserError(f"prompt_embeds {c.prompt_embeds!r} has shape {list(ctx.shape)}; the model "
                            f"expects [B, L, {cfg.text_dim}] (or [L, {cfg.text_dim}])")
        if ctx.shape[1] > cfg.text_len:
            raise UserError(f"prompt_embeds has {ctx.shape[1]} rows, more than text_len {cfg.text_len}")
        pad = np.zeros((ctx.shape[0], cfg.text_len - ctx.shape[1], cfg.text_dim), np.float32)
        log.info("prompt embeddings from %s (%d prompts)", c.prompt_embeds, ctx.shape[0])
        return np.concatenate([ctx, pad], axis=1)
    prompts = _prompts(c)
    return TextEncoder(c, cfg)(prompts)


def load_replay(path: str, cfg):
    try:
        data = np.load(path)
        context, noise, renoise = (np.asarray(data[k], np.float32) for k in ("context", "noise", "renoise"))
    except KeyError as e:
        raise UserError(f"replay {path!r} lacks {e}; it needs context, noise and renoise") from None
    except Exception as e:
        raise UserError(f"replay {path!r}: not a readable npz ({type(e).__name__})") from None
    if context.ndim != 3 or context.shape[-1] != cfg.text_dim:
        raise UserError(f"replay context has shape {list(context.shape)}; the model expects "
                        f"[B, L, {cfg.text_dim}]")
    if noise.ndim != 5 or noise.shape[2] != cfg.in_channels or noise.shape[0] != context.shape[0]:
        raise UserError(f"replay noise has shape {list(noise.shape)}; expected [B={context.shape[0]}, F, "
                        f"{cfg.in_channels}, h, w]")
    return context, noise, renoise  # frames vs the chunk: ReplayNoise checks


# ---- outputs -----------------------------------------------------------------------
def make_sampler(c):
    from pyramid_jax.sampling.rollout import Sampler
    from pyramid_jax.sampling.schedule import FlowSchedule

    sched = FlowSchedule(shift=c.shift)
    try:
        steps = sched.warp(c.denoising_step_list) if c.warp_denoising_step else np.asarray(
            c.denoising_step_list, np.float32)
    except ValueError as e:
        raise UserError(str(e)) from None
    return Sampler(timesteps=tuple(float(t) for t in steps), context_noise=float(c.context_noise),
                   frames_per_chunk=c.frames_per_chunk, schedule=sched)


def strides(c) -> tuple[int, int]:
    """(time, space) frames/pixels per latent frame/pixel."""
    return (1, 1) if c.vae.kind == "pixel" else (VAE_TIME_STRIDE, VAE_SPACE_STRIDE)


def latent_size(c, cfg) -> tuple[int, int]:
    space = strides(c)[1]
    step_h, step_w = space * cfg.patch_size[1], space * cfg.patch_size[2]
    if c.height % step_h or c.width % step_w:
        raise UserError(f"height/width ({c.height}x{c.width}) must be multiples of {step_h}x{step_w}")
    return c.height // space, c.width // space


def build_policy(c, cfg, latent_hw, num_frames):
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec

    lh, lw = latent_hw
    if lh % cfg.patch_size[1] or lw % cfg.patch_size[2]:
        raise UserError(f"latent size {lh}x{lw} is not divisible by the patch {cfg.patch_size[1:]}")
    spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim,
                    (lh // cfg.patch_size[1], lw // cfg.patch_size[2]), c.frames_per_chunk, cfg.rope_theta)
    try:
        return make_policy(c.cache.policy, spec, num_frames, c.cache.local_attn_size,
                           c.cache.sink_size, c.cache.head_map)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None


class PixelFrames:
    """The decoder of a pixel-space model: push(x0 [B, F, 3, H, W] in [-1, 1]) -> uint8 [B, F, H, W, 3]."""

    def push(self, x0) -> np.ndarray:
        from pyramid_jax.models.vae import to_uint8

        return to_uint8(np.moveaxis(np.asarray(x0), 2, -1))


def load_vae(c):
    """(cfg, params) of the configured VAE, or None when decoding is off."""
    from pyramid_jax.models.vae import VAEConfig
    from pyramid_jax.weights.checkpoint import CheckpointError
    from pyramid_jax.weights.checkpoint import load_vae as load

    if c.vae.checkpoint:
        try:
            return load(c.vae.checkpoint, dtype=c.dtype)
        except CheckpointError as e:
            raise UserError(str(e)) from None
    if c.vae.random:
        from pyramid_jax.weights.vae_names import random_vae_params

        cfg = VAEConfig(base_dim=c.vae.base_dim, num_res_blocks=c.vae.num_res_blocks, dtype=c.dtype)
        log.warning("NO VAE CHECKPOINT: a random VAE (base dim %d) decodes the latents", cfg.base_dim)
        return cfg, random_vae_params(cfg)
    return None


def load_video_weights(c, cfg):
    """The Wan VAE (cfg, params) that decodes this model's latents, or None: a pixel model's
    outputs are its frames (it must be RGB), and without a VAE there is no decoded video."""
    if c.vae.kind == "pixel":
        if cfg.out_channels != 3:
            raise UserError(f"vae.kind=pixel needs a model with 3 (RGB) output channels, this one has "
                            f"{cfg.out_channels}")
        return None
    return load_vae(c)


def video_decoder(c, batch: int, latent_hw, vae):
    """What turns each chunk's x0 [B, F, C, h, w] into uint8 frames as it is generated: the
    pixels of a pixel model, the streaming Wan VAE, or None (no decoded video)."""
    if c.vae.kind == "pixel":
        return PixelFrames()
    if vae is None:
        return None
    from pyramid_jax.models.vae import StreamingDecoder

    return StreamingDecoder(vae[1], vae[0], batch, latent_hw)


def output_paths(output: str, batch: int) -> list[str]:
    if batch == 1:
        return [output]
    stem, ext = os.path.splitext(output)
    return [f"{stem}_{i}{ext}" for i in range(batch)]


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logs.setup()
    try:
        return run(parse_config(argv))
    except UserError as e:
        print(f"generate: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that vanished or could not be read midway
        print(f"generate: error: {os_reason(e)}", file=sys.stderr)
        return 2


def run(c) -> int:
    import jax
    import jax.numpy as jnp

    from pyramid_jax import media
    from pyramid_jax.sampling.rollout import RandomNoise, ReplayNoise, rollout, text_kv_of

    check_config(c)
    check_outputs(c)
    model = load_dit(c)
    cfg = model.cfg
    f = c.frames_per_chunk
    sampler = make_sampler(c)

    if c.replay:
        context, noise, renoise = load_replay(c.replay, cfg)
        try:
            source = ReplayNoise(noise, renoise, sampler)
        except ValueError as e:
            raise UserError(f"replay {c.replay!r}: {e}") from None
        batch, num_frames, _, lh, lw = noise.shape
        log.info("replay from %s: batch %d, %d latent frames, latent %dx%d", c.replay, batch, num_frames, lh, lw)
    else:
        context = prompt_context(c, cfg)
        batch, num_frames = context.shape[0], c.num_frames
        lh, lw = latent_size(c, cfg)
        source = RandomNoise(c.seed, (batch, num_frames, cfg.in_channels, lh, lw), sampler)
    policy = build_policy(c, cfg, (lh, lw), num_frames)

    num_chunks = num_frames // f
    log.info("generating %d x %d latent frames (%d chunks of %d) at latent %dx%d, %s, cache %s",
             batch, num_frames, num_chunks, f, lh, lw, cfg.dtype, c.cache.policy)
    text_kv = text_kv_of(model, context)
    start = time.perf_counter()

    pixel = c.vae.kind == "pixel"
    vae = load_video_weights(c, cfg) if c.output else None
    decoder = video_decoder(c, batch, (lh, lw), vae) if c.output else None
    writers = None
    if decoder is not None:
        writers = [media.Mp4Writer(p, fps=c.fps) for p in output_paths(c.output, batch)]
    time_stride = strides(c)[0]

    def progress(k, x0, seconds):
        video_frames = x0.shape[1] * time_stride - (time_stride - 1 if k == 0 else 0)
        if decoder is not None:  # decode in step with generation, straight into the mp4s
            for w, video in zip(writers, decoder.push(x0)):
                w.write(video)
        log.info("chunk %d/%d: frames %d-%d in %.2f s (%.1f video frames/s)%s", k + 1, num_chunks,
                 k * f, (k + 1) * f - 1, seconds, batch * video_frames / seconds,
                 " incl. compile" if k == 0 else "")

    try:
        result = rollout(model, policy, sampler, text_kv, source, num_chunks, on_chunk=progress,
                         record_noise=bool(c.save_replay))
        latents, drawn = result.latents, (result.noise, result.renoise)
        log.info("done: %d latent frames in %.1f s", num_frames, time.perf_counter() - start)
        write_outputs(c, latents, context, drawn, writers, batch, pixel)
    except OSError as e:  # a full disk, a vanished directory: the partial files go
        for w in writers or []:
            w.abort()
        raise UserError(f"writing the outputs failed: {os_reason(e)}") from None
    except BaseException:
        for w in writers or []:
            w.abort()
        raise
    return 0


def write_outputs(c, latents, context, drawn, writers, batch, pixel):
    """Latents, the replay file and the mp4s (streamed ones closed, or latent previews)."""
    from pyramid_jax import media

    media.save_npz(latents_path(c), latents=latents)
    log.info("wrote latents %s %s", latents_path(c), list(latents.shape))
    if c.save_replay:
        media.save_npz(c.save_replay, context=context, noise=drawn[0], renoise=drawn[1])
        log.info("wrote replay %s", c.save_replay)
    if writers:
        for w in writers:
            w.close()
            log.info("wrote %s (%d frames, %g fps, %s)", w.path, w.frames, c.fps, "pixels" if pixel else "decoded")
    elif c.output:
        for path, lat in zip(output_paths(c.output, batch), latents):
            media.write_mp4(path, media.latent_preview(lat))
            log.info("wrote %s (latent preview: no VAE configured)", path)


if __name__ == "__main__":
    sys.exit(main())
