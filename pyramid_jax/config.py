"""The generate config: the fields every config file has (a public interface: users' scripts
set them by name).

Config files in configs/ call `base_config()` and change what differs. Frames are latent
frames; height/width are pixels (latents are 8x smaller).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
from absl import flags
from ml_collections import config_flags

from pyramid_jax.cache.window import WINDOW
from pyramid_jax.errors import UserError, first_line
from pyramid_jax.models.wan.modeling import WanConfig
from pyramid_jax.spec import RENAMED, RunSpec, from_config



def model_fields(cfg: WanConfig) -> ml_collections.ConfigDict:
    d = dataclasses.asdict(cfg)
    d["patch_size"] = tuple(d["patch_size"])
    return ml_collections.ConfigDict(d)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.checkpoint = ""            # orbax dir from tools/convert_checkpoint.py; "" = random init
    c.model = model_fields(WanConfig())  # shape for random init (ignored with a checkpoint)
    c.prompt = ""
    c.prompts_file = ""          # one prompt per line; the batch is all of them
    # "0:PROMPT A;30:PROMPT B": the latent frame where each prompt starts (multiples of
    # frames_per_chunk); without an entry at 0 the video opens with `prompt` (in batch: each
    # line's prompt), so "40:it starts to rain" switches every video at frame 40
    c.prompt_schedule = ""
    c.prompt_embeds = ""         # .npy/.npz of encoded prompts [Lt, text_dim] or [B, Lt, text_dim]
    # kind: umt5 (checkpoint from `convert_checkpoint.py --kind t5`, tokenizer = spiece.model),
    # placeholder (hash-seeded embeddings, for random demos) or none; device: default | cpu
    c.text_encoder = ml_collections.ConfigDict(dict(kind="none", checkpoint="", tokenizer="", device="default"))
    c.num_frames = 21            # latent frames, a multiple of frames_per_chunk
    c.height = 480
    c.width = 832
    c.frames_per_chunk = 3
    c.denoising_step_list = (1000, 750, 500, 250)
    c.warp_denoising_step = True
    c.shift = 5.0
    c.context_noise = 0.0        # the timestep the cache-writing pass tells the model (x0 is not noised)
    # classifier-free guidance: flow = u + g (c - u), the unconditional branch reading an empty
    # (all-zero) text context; 1 = off. g > 1 runs both branches as one batch of twice the size
    c.guidance_scale = 1.0
    # each denoising step re-noises its x0 with eta x fresh noise + sqrt(1 - eta^2) x the noise
    # the model's x0 implies: 1 = Self Forcing's sampler (all fresh), 0 = deterministic (DDIM)
    c.renoise_eta = 1.0
    c.seed = 0
    c.dtype = "bfloat16"
    c.output = "outputs/video.mp4"
    c.save_latents = ""          # npz with `latents` [B, F, C, h, w]
    c.replay = ""                # npz with context, noise, renoise (upstream layout)
    c.save_replay = ""           # write the context and noise this run drew, as a replay file
    # start from given frames: a video to continue (mp4, or an npz of `latents` as save_latents
    # writes them) or an image (png / jpg, a still clip); generation adds num_frames latent
    # frames after them; init_in_output puts the given frames at the head of the mp4
    c.init_video = ""
    c.init_image = ""
    c.init_in_output = True
    # kv_dtype: the cache pages' dtype: "" (the model's), bfloat16, float32, or 8-bit pages with
    # per-token scales: int8 | float8_e4m3fn (dequantized on load by every attention backend)
    # The head-aware policies' own fields (upstream's names and defaults): ar_start, the chunk
    # whose cache-writing pass types (dummy_forcing) or groups (forcing_kv) the heads;
    # dummy_forcing: num_dummy heads keep one frame, local_context_length chunks for mid heads;
    # forcing_kv: frames static / dynamic heads keep (spatial_ / temporal_context_length), bands
    # of dynamic_context_length frames chosen among 3 frames cut into num_frame_patch bands,
    # sim_retention_ratio of them. cache.head_map: the head map (pyramid: Anchor / Wave / Veil;
    # forcing_kv: its JSON head file; dummy_forcing: groups of an earlier run, else online)
    c.cache = ml_collections.ConfigDict(dict(
        policy="window", local_attn_size=WINDOW, sink_size=0, head_map="", kv_dtype="",
        ar_start=1, num_dummy=180, local_context_length=1, spatial_context_length=1, temporal_context_length=1,
        dynamic_context_length=1, num_frame_patch=6, sim_retention_ratio=0.33))
    c.trace_cache = ""           # npz: every cache entry every pass attended (pyramid_jax.cache.trace)
    # VAE (kind "wan"): an orbax dir from `convert_checkpoint.py --kind vae`; or random=True (a
    # random VAE of base_dim, announced); neither = no decode (latents + a latent-channel preview
    # mp4). kind "pixel": the DiT works on RGB pixels in [-1, 1] (the demo model), no VAE.
    # kind "taehv": the tiny autoencoder (convert_checkpoint.py --kind taehv), a preview-quality
    # decoder cheap enough for every chunk. taehv_checkpoint: a TAEHV beside the Wan VAE of
    # `checkpoint` (kind taehv then uses it, and the studio offers both decoders)
    c.vae = ml_collections.ConfigDict(dict(kind="wan", checkpoint="", taehv_checkpoint="", random=False, base_dim=96,
                                           num_res_blocks=2))
    c.fps = 16                   # of the written mp4 (the Wan VAE's video rate)
    c.attention = ml_collections.ConfigDict(dict(backend="reference"))
    # devices: data splits the batch, model splits heads; data=0 fills all local devices
    c.mesh = ml_collections.ConfigDict(dict(data=0, model=1))
    c.batch_size = 0             # prompts per step in pyramid_jax.batch; 0 = mesh.data
    return c


def wan_1_3b_config(checkpoint: str = "checkpoints/self_forcing"):
    """base_config plus the converted Wan2.1-1.3B family files (DiT, VAE, umT5 + tokenizer)."""
    c = base_config()
    c.checkpoint = checkpoint
    c.vae.checkpoint = "checkpoints/wan_vae"
    c.text_encoder.kind = "umt5"
    c.text_encoder.checkpoint = "checkpoints/umt5_xxl"
    c.text_encoder.tokenizer = "checkpoints/umt5_xxl/spiece.model"
    return c


def parse_spec(argv) -> RunSpec:
    """The run spec of a command line (parse_config, then spec.from_config)."""
    return from_config(parse_config(argv))


def parse_config(argv) -> ml_collections.ConfigDict:
    """The config of a command line: argv[0] is the program, then --config=FILE.py and
    --config.FIELD=VALUE overrides. Raises UserError (one line) for anything else."""
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
        raise UserError(f"cannot load config file {path!r}: {first_line(e)}") from None
    except (AttributeError, KeyError):
        bad = [a.split("=", 1)[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")]
        renamed = [f"--config.{b} is now --config.{RENAMED[b]}" for b in bad if b in RENAMED]
        raise UserError("; ".join(renamed) if renamed else
                        f"unknown config field in {', '.join('--config.' + b for b in bad)}; "
                        "see pyramid_jax/config.py for the fields") from None
    except flags.Error as e:
        raise UserError(first_line(e)) from None
    if rest:  # e.g. the second half of a value with a space in it, split by the shell
        raise UserError(f"unexpected argument {rest[0]!r}; every option is --config.FIELD=VALUE "
                        "(quote a value that has spaces)")
    return holder.value
