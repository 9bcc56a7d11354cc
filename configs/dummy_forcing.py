"""Self Forcing + Dummy Forcing (arXiv 2601.20499): heads typed online in chunk 1.

Upstream's values (configs/dummy-forcing/dummy_self_forcing_inference.yaml): half of the 360
heads (num_dummy 180) keep only the frame before the chunk, the others frame 0 ("first") or
the previous chunk ("mid", local_context_length 1 chunk). The groups a run chooses are written
beside its output (`<output stem>.heads.json`); give that file as cache.head_map to reuse them.
"""

from pyramid_jax.config import wan_1_3b_config


def get_config():
    c = wan_1_3b_config()
    c.num_frames = 240  # 60 s
    c.cache.policy = "dummy_forcing"
    c.cache.ar_start = 1
    c.cache.num_dummy = 180
    c.cache.local_context_length = 1
    c.cache.sink_size = 0  # upstream ignores sink_size and local_attn_size: frame 0 is its own
    c.cache.local_attn_size = -1
    return c
