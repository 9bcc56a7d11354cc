"""The shipped demo model follows its prompt: videos of prompts that differ only in the named
background colour are dominated by the colour each names."""

from __future__ import annotations

import os

import pytest

from conftest import REPO
from pyramid_jax import metrics, pipeline, video
from pyramid_jax.config import parse_spec

BACKGROUNDS = ("red", "blue", "yellow", "black")


@pytest.fixture(scope="module")
def demo():
    c = parse_spec(["generate", f"--config={os.path.join(REPO, 'configs', 'demo.py')}", "--config.num_frames=12",
                    "--config.output="])
    return c, pipeline.load_models(c)


def misses(demo, seeds):
    """[(seed, named background, top 3 colour shares)] of the videos (1.2 s, configs/demo.py)
    whose dominant colour is not the background their prompt names, or under 30% of the frame."""
    c, models = demo
    prompts = [f"a white circle bouncing left to right on a {bg} striped background" for bg in BACKGROUNDS]
    cases = [(seed, bg, prompt) for seed in seeds for bg, prompt in zip(BACKGROUNDS, prompts)]
    job = pipeline.scheduled_inputs(c, models, [p for _, _, p in cases], [s for s, _, _ in cases],
                                    pipeline.latent_size(c, models.dit.cfg))
    frames = video.PixelFrames().push(pipeline.generate(c, models, job).latents)  # [B, T, H, W, 3]
    out = []
    for (seed, bg, _), clip in zip(cases, frames):
        shares = {name: float(s.mean()) for name, s in metrics.color_shares(clip).items()}
        if max(shares, key=shares.get) != bg or shares[bg] < 0.3:
            out.append((seed, bg, sorted(shares.items(), key=lambda kv: -kv[1])[:3]))
    return out


def test_background_colour_follows_the_prompt(demo):
    assert not misses(demo, [0])


@pytest.mark.xfail(strict=True, reason="with seeds 1-3 the shipped demo's white circle outgrows the red and yellow "
                   "backgrounds, and the blue with seed 1 (white 0.44-0.59 of the frame; docs/demo_model.md): 9 of "
                   "the 16 videos of seeds 0-3 pass; strict, so a model that passes makes this fail until the mark "
                   "goes")
def test_background_colour_follows_the_prompt_other_seeds(demo):
    assert not misses(demo, [1, 2, 3])
