"""Self Forcing + Pyramid Forcing (arXiv 2605.13111): per-head Anchor / Wave / Veil caches.

The head map is a field. The default is the published Pyramid Forcing map for the Self Forcing
checkpoint (head_maps/self_forcing.csv); head_maps/self_forcing_classified.csv is the map this
project's classifier makes from public profiles of the same model (98% the same heads). For
another model, type its heads with
  python tools/classify_heads.py --config=configs/self_forcing.py --out MAP.csv
"""

import os

from pyramid_jax.config import wan_1_3b_config

HEAD_MAPS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "head_maps")


def get_config():
    c = wan_1_3b_config()
    c.num_frames = 240  # 60 s
    c.cache.policy = "pyramid"
    c.cache.head_map = os.path.join(HEAD_MAPS, "self_forcing.csv")
    return c
