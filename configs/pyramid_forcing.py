"""Self Forcing + Pyramid Forcing (arXiv 2605.13111): per-head Anchor / Wave / Veil caches.

The head map is a field: type your model's heads with
  python tools/classify_heads.py --config=configs/self_forcing.py --out head_maps/self_forcing.csv
(or use the published map for the Self Forcing checkpoint).
"""

from pyramid_jax.config import base_config


def get_config():
    c = base_config()
    c.checkpoint = "checkpoints/self_forcing"
    c.vae.checkpoint = "checkpoints/wan_vae"
    c.text_encoder.kind = "umt5"
    c.text_encoder.checkpoint = "checkpoints/umt5_xxl"
    c.text_encoder.tokenizer = "checkpoints/umt5_xxl/spiece.model"
    c.num_frames = 240  # 60 s
    c.cache.policy = "pyramid"
    c.cache.head_map = "head_maps/self_forcing.csv"
    return c
