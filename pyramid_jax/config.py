"""The generate config: the fields every config file has (a public interface: users' scripts
set them by name).

Config files in configs/ call `base_config()` and change what differs. Frames are latent
frames; height/width are pixels (latents are 8x smaller).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from pyramid_jax.models.wan import WanConfig


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
    c.context_noise = 0.0
    c.seed = 0
    c.dtype = "bfloat16"
    c.output = "outputs/video.mp4"
    c.save_latents = ""          # npz with `latents` [B, F, C, h, w]
    c.replay = ""                # npz with context, noise, renoise (upstream layout)
    c.save_replay = ""           # write the context and noise this run drew, as a replay file
    c.cache = ml_collections.ConfigDict(dict(
        policy="window", local_attn_size=21, sink_size=0, head_map=""))
    # VAE (kind "wan"): an orbax dir from `convert_checkpoint.py --kind vae`; or random=True (a
    # random VAE of base_dim, announced); neither = no decode (latents + a latent-channel preview
    # mp4). kind "pixel": the DiT works on RGB pixels in [-1, 1] (the demo model), no VAE.
    c.vae = ml_collections.ConfigDict(dict(kind="wan", checkpoint="", random=False, base_dim=96, num_res_blocks=2))
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
