"""Causal Forcing: the Self Forcing backbone and inference, different training."""

from pyramid_jax.config import wan_1_3b_config


def get_config():
    c = wan_1_3b_config("checkpoints/causal_forcing")
    c.num_frames = 21
    c.cache.local_attn_size = 21
    c.cache.sink_size = 0
    return c
