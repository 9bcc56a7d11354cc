"""Self Forcing + Pyramid Forcing (arXiv 2605.13111): per-head Anchor / Wave / Veil caches.

The head map is a field: type your model's heads with
  python tools/classify_heads.py --config=configs/self_forcing.py --out head_maps/self_forcing.csv
(or use the published map for the Self Forcing checkpoint).
"""

from pyramid_jax.config import wan_1_3b_config


def get_config():
    c = wan_1_3b_config()
    c.num_frames = 240  # 60 s
    c.cache.policy = "pyramid"
    c.cache.head_map = "head_maps/self_forcing.csv"
    return c
