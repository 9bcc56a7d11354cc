"""Self Forcing + Deep Forcing's deep sink (arXiv 2512.05081): a 21-frame window whose first
10 frames stay pinned and are attended as if right before the recent frames."""

from pyramid_jax.config import base_config


def get_config():
    c = base_config()
    c.checkpoint = "checkpoints/self_forcing"
    c.vae.checkpoint = "checkpoints/wan_vae"
    c.text_encoder.kind = "umt5"
    c.text_encoder.checkpoint = "checkpoints/umt5_xxl"
    c.text_encoder.tokenizer = "checkpoints/umt5_xxl/spiece.model"
    c.num_frames = 240  # 60 s
    c.cache.policy = "deep_sink"
    c.cache.local_attn_size = 21
    c.cache.sink_size = 10
    return c
