"""The shipped demo model follows its prompt: videos of prompts that differ only in the named
background colour are dominated by the colour each names."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import REPO
from pyramid_jax import metrics, pipeline, video
from pyramid_jax.config import parse_spec

BACKGROUNDS = ("red", "blue", "yellow", "black")


@pytest.mark.xfail(strict=True, reason="the shipped demo model (step 12200) draws the blue and yellow backgrounds, "
                   "but in these 1.2 s its white circle outgrows the red background (white 0.38, red 0.35) and the "
                   "black one comes out green + black (green 0.45, black 0.34; docs/demo_model.md); strict, so a model "
                   "that passes makes this fail until the mark goes")
def test_background_colour_follows_the_prompt():
    prompts = [f"a white circle bouncing left to right on a {bg} striped background" for bg in BACKGROUNDS]
    c = parse_spec(["generate", f"--config={os.path.join(REPO, 'configs', 'demo.py')}", "--config.num_frames=12",
                      "--config.output="])
    models = pipeline.load_models(c)
    hw = pipeline.latent_size(c, models.dit.cfg)
    job = pipeline.scheduled_inputs(c, models, prompts, [0] * len(prompts), hw)
    frames = video.PixelFrames().push(pipeline.generate(c, models, job).latents)  # [B, T, H, W, 3]
    for bg, clip in zip(BACKGROUNDS, frames):
        shares = {name: float(s.mean()) for name, s in metrics.color_shares(clip).items()}
        dominant = max(shares, key=shares.get)
        assert dominant == bg and shares[bg] >= 0.3, (bg, sorted(shares.items(), key=lambda kv: -kv[1])[:3])
