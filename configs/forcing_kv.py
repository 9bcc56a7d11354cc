"""Self Forcing + Forcing-KV (arXiv 2605.09681): offline static / dynamic heads.

Upstream's values (configs/forcing-kv/forcingkv_self_forcing_inference.yaml): frame 0 as sink,
static heads keep the last frame, dynamic heads the last frame plus 6 of 18 token bands (the
least self-similar, chosen at every cache-writing pass); grouping after chunk 1 (its
_vbench.yaml uses ar_start 2). The default head map is Forcing-KV's published head file for
Self Forcing (134 static / 226 dynamic heads) in this project's format; its own JSON files
(configs_head/forcingkv_heads_*.json) are read as published: cache.head_map=FILE.json.
"""

import os

from pyramid_jax.config import wan_1_3b_config

HEAD_MAPS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "head_maps")


def get_config():
    c = wan_1_3b_config()
    c.num_frames = 240  # 60 s
    c.cache.policy = "forcing_kv"
    c.cache.head_map = os.path.join(HEAD_MAPS, "forcing_kv_self_forcing.json")
    c.cache.sink_size = 1
    c.cache.local_attn_size = -1
    c.cache.ar_start = 1
    c.cache.spatial_context_length = 1
    c.cache.temporal_context_length = 1
    c.cache.dynamic_context_length = 1
    c.cache.num_frame_patch = 6
    c.cache.sim_retention_ratio = 0.33
    return c
