"""A tiny random Wan-architecture model and VAE: the whole latent pipeline in seconds on a CPU.

Weights are random (the output says so): tests and smoke runs of the latent path (Wan VAE
decode, replay, head typing). The trained demo is configs/demo.py.
"""

from pyramid_jax.config import base_config, model_fields
from pyramid_jax.models.wan.modeling import WanConfig


def get_config():
    c = base_config()
    c.checkpoint = ""
    c.model = model_fields(WanConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=2, in_channels=16,
                                     out_channels=16, text_len=32, text_dim=64, freq_dim=64))
    c.prompt = "a red circle bouncing left to right on a blue background"
    c.text_encoder.kind = "placeholder"
    c.num_frames = 21
    c.height = 128
    c.width = 128
    c.dtype = "float32"
    c.output = "outputs/tiny_random.mp4"
    c.vae.random = True  # a tiny random Wan VAE: real decoding, noise pictures
    c.vae.base_dim = 16
    c.vae.num_res_blocks = 1
    c.cache.local_attn_size = 12
    c.cache.sink_size = 3
    return c
