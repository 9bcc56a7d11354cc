"""Self Forcing (arXiv 2506.08009): Wan2.1-T2V-1.3B, 4 steps, 3-frame chunks, 480x832.

Convert the released checkpoint first:
  python tools/convert_checkpoint.py --src self_forcing_dmd.pt --dst checkpoints/self_forcing
"""

from pyramid_jax.config import wan_1_3b_config


def get_config():
    c = wan_1_3b_config()
    c.num_frames = 21
    c.cache.policy = "window"
    c.cache.local_attn_size = 21
    c.cache.sink_size = 0
    return c
