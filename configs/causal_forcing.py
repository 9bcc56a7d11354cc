"""Causal Forcing: the Self Forcing backbone and inference, different training."""

from pyramid_jax.config import base_config


def get_config():
    c = base_config()
    c.checkpoint = "checkpoints/causal_forcing"
    c.vae.checkpoint = "checkpoints/wan_vae"
    c.text_encoder.kind = "umt5"
    c.text_encoder.checkpoint = "checkpoints/umt5_xxl"
    c.text_encoder.tokenizer = "checkpoints/umt5_xxl/spiece.model"
    c.num_frames = 21
    c.cache.local_attn_size = 21
    c.cache.sink_size = 0
    return c
