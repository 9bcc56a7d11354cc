"""Head typing: classifier on real profiles, on synthetic ones; profiling fast path vs brute force."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO
from pyramid_jax.attention import reference as ref
from pyramid_jax.cache.head_map import ANCHOR, VEIL, WAVE, HeadMapError, load_head_map, save_head_map_csv, save_head_map_json
from pyramid_jax.heads.classify import classify_heads, vote
from pyramid_jax.models.wan.modeling import Committed, WanConfig, init_model
from pyramid_jax.heads import calibrate
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.window import WindowPolicy
from pyramid_jax.sampling.rollout import RandomNoise, Sampler, clean_t, denoise, step

DATA = os.path.join(REPO, "..", "shared", "data", "pf_head_profiles")


@pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data/pf_head_profiles is absent")
def test_classifier_agrees_with_published_map():
    profiles = np.load(os.path.join(DATA, "profiles_dev.npz"))["profiles"][..., :-3]  # history only
    labels = np.loadtxt(os.path.join(DATA, "labels.csv"), delimiter=",").astype(int)
    head_map, per_prompt = classify_heads(profiles)
    alone = [(p == labels).mean() for p in per_prompt]
    combined = (head_map == labels).mean()
    print(f"agreement: per prompt {alone}, combined {combined:.4f}")
    assert min(alone) >= 0.94 and combined >= 0.95


def test_classifier_on_synthetic_profiles():
    t = np.arange(72, dtype=np.float64)
    rng = np.random.default_rng(0)
    anchor = 1.0 + 0.2 * rng.standard_normal(72)
    veil = -1.0 + 0.2 * rng.standard_normal(72)
    wave = np.sin(2 * np.pi * t / 6.0) + 0.1 * rng.standard_normal(72)
    flat_pos = 0.1 + 0.5 * rng.standard_normal(72)  # mixed signs, no period: mean decides
    prof = np.stack([anchor, veil, wave, flat_pos])[None, None]  # [1, 1, 4, T]
    head_map, _ = classify_heads(prof)
    assert head_map[0, :3].tolist() == [ANCHOR, VEIL, WAVE]


def test_vote_tie_break_is_deterministic():
    per_prompt = np.array([[[WAVE, ANCHOR]], [[ANCHOR, VEIL]]])  # [P=2, L=1, H=2], both tied
    assert vote(per_prompt, np.array([[WAVE, WAVE]])).tolist() == [[WAVE, ANCHOR]]


def test_head_map_io(tmp_path):
    m = np.array([[WAVE, ANCHOR], [VEIL, WAVE]])
    save_head_map_csv(tmp_path / "m.csv", m)
    save_head_map_json(tmp_path / "m.json", m, model="tiny", prompts=["a"])
    assert (load_head_map(str(tmp_path / "m.csv"), 2, 2) == m).all()
    assert (load_head_map(str(tmp_path / "m.json"), 2, 2) == m).all()
    with pytest.raises(HeadMapError, match="2 heads .columns., the model has 3"):
        load_head_map(str(tmp_path / "m.csv"), 2, 3)
    with pytest.raises(HeadMapError, match="not found"):
        load_head_map(str(tmp_path / "nope.csv"))


@pytest.mark.slow
def test_profile_fast_path_equals_brute_force(monkeypatch):
    cfg = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                    text_dim=24, freq_dim=32, text_len=5)
    model = init_model(cfg, seed=1)
    sampler = Sampler()
    tkv = model.text_kv(jax.random.normal(jax.random.key(0), (1, 5, 24)))
    noise = RandomNoise(0, (1, 9, 4, 4, 6), sampler)
    profiles = calibrate.record_profiles(model, sampler, tkv, noise, 9, (2, 3))
    assert profiles.shape == (1, 2, 2, 6)

    # Brute force: the same last chunk, eagerly, capturing each layer's real queries and pages.
    policy = WindowPolicy(PoolSpec(2, 2, 16, (2, 3), 3), local_attn_size=-1, num_frames=9)
    captured = []
    orig = ref.paged_attention

    def spy(q, k, v, pool_k, pool_v, *a, **kw):
        captured.append((np.asarray(q), np.asarray(pool_k)))
        return orig(q, k, v, pool_k, pool_v, *a, **kw)

    # replay chunks 0-1 to get the cache, then the last chunk's clean pass eagerly
    state = policy.init(1, jnp.float32)
    graphdef, params = nnx.split(model)
    for k in range(2):
        n, r = noise.chunk(k)
        _, state = step(graphdef, policy, sampler, params, state, tkv, n, r, jnp.int32(k))
    n, r = noise.chunk(2)
    plan = policy.plan(state, jnp.int32(2))
    x0 = denoise(model, sampler, tkv, state.pool(), plan, n, r)
    monkeypatch.setattr(ref, "paged_attention", spy)
    with jax.disable_jit():
        model(x0, clean_t(sampler, x0), tkv, Committed(state.pool(), plan))
    assert len(captured) == 2  # one call per layer
    for layer, (q, pool_k) in enumerate(captured):
        q_last = q[0, -1]  # [T, H, Dh] tokens of the chunk's last frame
        for h in range(2):
            for t in range(6):
                page = int(state.slot_page[layer, h, t])  # window -1: slot t holds frame t
                logits = q_last[:, h] @ pool_k[0, page].T / np.sqrt(16)  # all token pairs
                np.testing.assert_allclose(profiles[0, layer, h, t], logits.mean(), rtol=1e-4, atol=1e-5)
