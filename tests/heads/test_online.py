"""Online head typing for Pyramid (`cache.head_map=online`): the heads the video types itself
are what offline calibration types from the same frames; the video then goes on under them."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.heads import calibrate
from pyramid_jax.heads.classify import classify_heads
from pyramid_jax.heads.online import OnlineTyping
from pyramid_jax.models.wan.modeling import WanConfig, init_model
from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout

CFG = WanConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=3, in_channels=4, out_channels=4, text_dim=24,
                freq_dim=32, text_len=5)
GRID = (2, 3)


@pytest.mark.slow
def test_online_typing_types_what_calibration_types():
    model, sampler = init_model(CFG, seed=1), Sampler()
    tkv = model.text_kv(jax.random.normal(jax.random.key(0), (2, 5, 24)))
    shape = (2, 30, 4, 2 * GRID[0], 2 * GRID[1])
    typing = OnlineTyping(PoolSpec(CFG.num_layers, CFG.num_heads, CFG.head_dim, GRID, 3), frames=18)
    run = rollout(model, typing.first, sampler, tkv, RandomNoise(0, shape, sampler), 10, typing=typing)
    assert typing.chunk == 5 and typing.head_map is not None
    # calibration of the same first 18 frames (nothing evicted) records the same profiles
    profiles = calibrate.record_profiles(model, sampler, tkv, RandomNoise(0, shape, sampler), 18, GRID)
    np.testing.assert_allclose(typing.profiles, profiles, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(typing.head_map, classify_heads(profiles)[0])
    # until the typing chunk the video is the full-cache one; after it, the pyramid cache's
    full = rollout(model, typing.first, sampler, tkv, RandomNoise(0, shape, sampler), 6).latents
    np.testing.assert_allclose(run.latents[:, :18], full, rtol=1e-5, atol=1e-5)
    assert np.isfinite(run.latents).all() and run.latents.shape[1] == 30
