"""The Wan2.1 VAE: `modeling` (the causal decoder, whole-video and streaming), `encoder` (given
frames -> latents) and `params` (the checkpoint name table: upstream and diffusers layouts)."""
