"""The embedded default: the project's own small model, trained on procedural shapes videos.

A 6-layer Wan-architecture DiT (dim 128) working on 64x64 RGB pixels, with a tiny umT5 and a
sentencepiece vocabulary of the caption words, all in assets/demo (tools/train_demo.py made
them). Prompts the model knows follow the captions of pyramid_jax/data/shapes.py: "a <colour>
<circle|square|triangle> [quickly] bouncing <left to right|right to left|upwards|downwards>
[with N other shapes] on a <colour> <striped|checkered|speckled> background [while the camera
pans]".
"""

import os

from pyramid_jax.config import base_config, model_fields
from pyramid_jax.models.wan.modeling import WanConfig

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")


def get_config():
    c = base_config()
    c.checkpoint = os.path.join(ASSETS, "dit")
    c.model = model_fields(WanConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=6, in_channels=3,
                                     out_channels=3, patch_size=(1, 8, 8), text_len=32, text_dim=64,
                                     freq_dim=64))  # the shape of assets/demo/dit
    c.prompt = "a black square bouncing left to right with 2 other shapes on a blue speckled background"
    c.text_encoder.kind = "umt5"
    c.text_encoder.checkpoint = os.path.join(ASSETS, "text", "umt5")
    c.text_encoder.tokenizer = os.path.join(ASSETS, "text", "spiece.model")
    c.vae.kind = "pixel"
    c.num_frames = 102           # 10.2 s at 10 fps (pixel frames: one per model frame)
    c.fps = 10
    # 5 steps at a low shift: 64x64 pixels need more low-noise steps than 480p latents (shift
    # 5); they are 5 of the 8 noise levels the model is trained at (tools/train_demo.py). The extra
    # high-noise step at 875 measured best on development prompts: with (1000, 750, 500, 250)
    # shapes and backgrounds of the palette's far ends (black, white, yellow) were often lost
    c.denoising_step_list = (1000, 875, 750, 500, 250)
    c.shift = 2.0
    c.guidance_scale = 1.0       # guidance lowered adherence on this model (docs/demo_model.md)
    c.height = 64
    c.width = 64
    c.dtype = "float32"
    c.output = "outputs/demo.mp4"
    # Pyramid Forcing with the heads typed for this model: at 60 s it held the prompt at least as
    # well as the window and drifted less (docs/cache_comparison.md); policy=window keeps 12 frames
    c.cache.policy = "pyramid"
    c.cache.head_map = os.path.join(ASSETS, "head_map.csv")
    c.cache.local_attn_size = 12
    c.cache.sink_size = 0
    c.cache.num_dummy = 12  # dummy_forcing: half of the 24 heads, as upstream's 180 of 360
    c.cache.num_frame_patch = 4  # forcing_kv: bands of 4 rows (6 do not divide a 16 x 16 frame)
    return c
