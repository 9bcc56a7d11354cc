"""Self Forcing (arXiv 2506.08009): Wan2.1-T2V-1.3B, 4 steps, 3-frame chunks, 480x832.

Convert the released checkpoint first:
  python tools/convert_checkpoint.py --src self_forcing_dmd.pt --dst checkpoints/self_forcing
"""

from pyramid_jax.config import base_config


def get_config():
    c = base_config()
    c.checkpoint = "checkpoints/self_forcing"
    c.vae.checkpoint = "checkpoints/wan_vae"
    c.text_encoder.kind = "umt5"
    c.text_encoder.checkpoint = "checkpoints/umt5_xxl"
    c.text_encoder.tokenizer = "checkpoints/umt5_xxl/spiece.model"
    c.num_frames = 21
    c.cache.policy = "window"
    c.cache.local_attn_size = 21
    c.cache.sink_size = 0
    return c
