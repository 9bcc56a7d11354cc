"""Self Forcing + Deep Forcing's deep sink (arXiv 2512.05081): a 21-frame window whose first
10 frames stay pinned and are attended as if right before the recent frames."""

from pyramid_jax.config import wan_1_3b_config


def get_config():
    c = wan_1_3b_config()
    c.num_frames = 240  # 60 s
    c.cache.policy = "deep_sink"
    c.cache.local_attn_size = 21
    c.cache.sink_size = 10
    return c
