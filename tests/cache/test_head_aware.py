"""Every head-aware policy, on a tiny model: the cache trace restates upstream's keep-sets
(window, deep_sink, pyramid, dummy_forcing, forcing_kv), Dummy Forcing's online typing and
Forcing-KV's band choice equal restatements of upstream's code, and their head files and bad
inputs behave."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pyramid_jax.cache import trace as tr
from pyramid_jax.cache.head_map import (ANCHOR, DYNAMIC, FIRST, FORCING_KV_TYPES, LAST, MID, STATIC, VEIL, WAVE,
                                        HeadMapError, load_head_map)
from pyramid_jax.cache.policies import advance_fn, make_policy
from pyramid_jax.cache.pool import PoolSpec, rope_keys
from pyramid_jax.models.wan.modeling import WanConfig, init_model
from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout, text_kv_of
from conftest import REPO, rel_err
from upstream_caches import (dummy_assign, dummy_frames, dummy_mass, forcing_kv_bands, forcing_kv_frames,
                             upstream_keys, window_frames)

F, CHUNKS, BATCH = 3, 8, 2
CFG = WanConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=3, in_channels=4, out_channels=4, text_len=6,
                text_dim=16, freq_dim=32, dtype="float32")
GRID = (4, 6)  # 24 tokens a frame: 6 bands of 4, pooled blocks of 2 x 3
SPEC = PoolSpec(CFG.num_layers, CFG.num_heads, CFG.head_dim, GRID, F)
PYRAMID_MAP = np.array([[WAVE, ANCHOR, VEIL, WAVE], [VEIL, WAVE, ANCHOR, ANCHOR], [ANCHOR, VEIL, WAVE, VEIL]])
FKV_MAP = np.array([[STATIC, DYNAMIC, DYNAMIC, STATIC], [DYNAMIC, STATIC, DYNAMIC, DYNAMIC],
                    [STATIC, DYNAMIC, STATIC, DYNAMIC]])
CASES = {
    "window": dict(local_attn_size=9, sink_size=1),
    "deep_sink": dict(local_attn_size=9, sink_size=3),
    "pyramid": dict(head_map=PYRAMID_MAP),
    "dummy_forcing": dict(num_dummy=6, seed=5),
    "forcing_kv": dict(head_map=FKV_MAP, sink_size=1),
}


class Runs(dict):
    """Each policy's rollout of CHUNKS chunks, batch 2, with its trace and final cache, made
    when a test first asks for it: traced[name] -> (policy, Rollout)."""

    def __missing__(self, name):
        model = init_model(CFG, seed=1)
        sampler = Sampler()
        ctx = np.random.default_rng(0).standard_normal((BATCH, CFG.text_len, CFG.text_dim)).astype(np.float32)
        policy = make_policy(name, SPEC, CHUNKS * F, **CASES[name])
        noise = RandomNoise(0, (BATCH, CHUNKS * F, CFG.in_channels, 2 * GRID[0], 2 * GRID[1]), sampler)
        self[name] = policy, rollout(model, policy, sampler, text_kv_of(model, ctx), noise, CHUNKS, keep_cache=True,
                                     trace=True)
        return self[name]


@pytest.fixture(scope="module")
def traced():
    return Runs()


def entries_by_pass(entries):
    """{(chunk, pass, layer, head, query frame): sorted [(frame, rope_frame, pooled, start, stop)]}
    of sample 0, after checking every sample has the same rows."""
    col = lambda n: tr.column(entries, n)
    s0, s1 = entries[col("sample") == 0], entries[col("sample") == 1]
    keep = [i for i, c in enumerate(tr.COLUMNS) if c != "sample"]
    assert np.array_equal(s0[:, keep], s1[:, keep])
    out = {}
    for row in s0:
        r = dict(zip(tr.COLUMNS, row.tolist()))
        key = (r["chunk"], r["pass"], r["layer"], r["head"], r["query_frame"])
        out.setdefault(key, []).append((r["frame"], r["rope_frame"], r["pooled"], r["token_start"], r["token_stop"]))
    return {k: sorted(v) for k, v in out.items()}


def frames_of(by_pass, chunk, layer, head, passes=range(5), query=-1):
    """The frames attended (as one sorted list), the same in every pass."""
    got = [[e[0] for e in by_pass.get((chunk, p, layer, head, query), [])] for p in passes]
    assert all(g == got[0] for g in got), got
    return got[0]


def test_trace_file_layout(traced):
    _, run = traced["dummy_forcing"]
    assert run.trace.dtype == np.int32 and run.trace.shape[1] == len(tr.COLUMNS)
    assert set(tr.column(run.trace, "pass")) == set(range(5))  # 4 noisy passes, then the clean one
    assert set(tr.column(run.trace, "sample")) == {0, 1}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["window", "deep_sink"])
def test_trace_restates_windows(traced, name):
    policy, run = traced[name]
    by_pass = entries_by_pass(run.trace)
    w, s = CASES[name]["local_attn_size"], CASES[name]["sink_size"]
    for k in range(CHUNKS):
        want = window_frames(F * k, w, s)
        shift = max(0, F * k + F - w) if name == "deep_sink" else 0
        for layer in range(CFG.num_layers):
            for h in range(CFG.num_heads):
                assert frames_of(by_pass, k, layer, h) == want
                rope = [e[1] for e in by_pass.get((k, 0, layer, h, -1), [])]
                assert rope == sorted(f + (shift if f < s else 0) for f in want)


@pytest.mark.slow
def test_trace_restates_pyramid(traced):
    _, run = traced["pyramid"]
    by_pass = entries_by_pass(run.trace)
    for k in range(CHUNKS):
        for layer in range(CFG.num_layers):
            for h in range(CFG.num_heads):
                for c in range(F):
                    for p in range(5):
                        got = [(("block", f // 4) if pooled else f, rope)
                               for f, rope, pooled, _, _ in by_pass.get((k, p, layer, h, c), [])]
                        want = upstream_keys(F * k, F * k + c, PYRAMID_MAP[layer, h], p == 4, cache_only=True)
                        assert sorted(got, key=str) == want, (k, p, layer, h, c)
    pooled = run.trace[tr.column(run.trace, "pooled") == 1]
    assert len(pooled) and (tr.column(pooled, "token_stop") == 6).all()  # 24 tokens pooled 2 x 2


def test_trace_restates_dummy_forcing(traced):
    policy, run = traced["dummy_forcing"]
    by_pass = entries_by_pass(run.trace)
    own = run.cache.own
    kinds = np.asarray(own.head_kind)
    mass = np.asarray(own.mass)
    # the groups are upstream's assignment of the measured masses; half of the heads are dummy
    np.testing.assert_array_equal(kinds, dummy_assign(mass[..., 0], mass[..., 1], 6))
    assert (kinds == LAST).sum() == 6 and (mass > 0).all()
    for k in range(CHUNKS):
        for layer in range(CFG.num_layers):
            for h in range(CFG.num_heads):
                assert frames_of(by_pass, k, layer, h) == dummy_frames(k, kinds[layer, h]), (k, layer, h)


def test_trace_restates_forcing_kv(traced):
    policy, run = traced["forcing_kv"]
    by_pass = entries_by_pass(run.trace)
    n, tb = 6, 4
    for k in range(CHUNKS):
        bands = None
        for layer in range(CFG.num_layers):
            for h in range(CFG.num_heads):
                entries = by_pass.get((k, 0, layer, h, -1), [])
                whole = sorted(e[0] for e in entries if e[4] - e[3] == 24)
                part = sorted((e[0], e[3]) for e in entries if e[4] - e[3] < 24)
                assert whole == forcing_kv_frames(k, layer, FKV_MAP[layer, h]), (k, layer, h)
                assert frames_of(by_pass, k, layer, h) == sorted([e[0] for e in entries])
                if layer == 0 or FKV_MAP[layer, h] == STATIC or k < 3:  # bands from chunk 2's pass on
                    assert part == []
                    continue
                # 6 bands of the 3 frames starting a frame before the previous chunk; one choice for
                # every dynamic head of every layer
                assert len(part) == n and all(3 * k - 4 <= f <= 3 * k - 2 and s % tb == 0 for f, s in part)
                bands = part if bands is None else bands
                assert part == bands


def test_dummy_typing_measures_what_upstream_measures():
    """The typing pass's (p0, p1) per head equal upstream's online_head_classification on the
    same queries and keys (sampled rows given, as a replay gives them)."""
    rng = np.random.default_rng(3)
    spec = SPEC
    t, dh, h = spec.tokens_per_frame, spec.head_dim, spec.num_heads
    rows = rng.integers(0, F * t, (spec.num_layers, t // 3))
    policy = make_policy("dummy_forcing", spec, 30, num_dummy=4, rows=rows)
    state = policy.init(1, jnp.float32)
    kv = lambda: jnp.asarray(rng.standard_normal((spec.num_layers, 1, h, F, t, dh)), jnp.float32)
    k0, v0 = kv(), kv()
    state = advance_fn(policy)(state, (k0, v0), jnp.int32(0))  # frames 0..2 in the cache
    k1 = kv()
    q = jnp.asarray(rng.standard_normal((1, F * t, h, dh)), jnp.float32)
    plan = policy.plan(state, jnp.int32(1))
    layer = 1
    staged, _, _ = policy.stage(state, plan, layer, k1[layer], k1[layer], jnp.int32(1), q)
    got = np.asarray(staged.own.mass[layer])
    # upstream's keys: sink (frame 0), local (frames 1, 2), the chunk's own (3..5), after RoPE
    roped = lambda k, t0: np.asarray(rope_keys(spec, k[layer, 0], jnp.arange(t0, t0 + F)))  # [H, F, T, Dh]
    keys = np.concatenate([roped(k0, 0), roped(k1, F)], axis=1).reshape(h, -1, dh).transpose(1, 0, 2)
    p0, p1 = dummy_mass(np.asarray(q)[0, rows[layer]], keys, t, F * t)
    np.testing.assert_allclose(got, np.stack([p0, p1], -1), rtol=1e-5, atol=1e-6)


def test_forcing_kv_bands_are_upstreams_choice():
    """The bands a commit keeps equal dynamic_compression's choice from layer 1's dynamic keys."""
    rng = np.random.default_rng(4)
    policy = make_policy("forcing_kv", SPEC, 30, head_map=FKV_MAP, sink_size=1)
    t, dh, h = SPEC.tokens_per_frame, SPEC.head_dim, SPEC.num_heads
    state = policy.init(1, jnp.float32)
    step = advance_fn(policy)
    ks = []
    for k in range(4):
        kk = jnp.asarray(rng.standard_normal((SPEC.num_layers, 1, h, F, t, dh)), jnp.float32)
        ks.append(kk)
        before = state
        state = step(state, (kk, kk), jnp.int32(k))
    # the last commit (chunk 3) chose among frames 8, 9, 10 (and compared 10 with 11)
    frames = np.concatenate([np.asarray(rope_keys(SPEC, kk[1, 0], jnp.arange(3 * i, 3 * i + 3))) for i, kk in
                             enumerate(ks)], axis=1)  # layer 1: [H, 12, T, Dh]
    dyn = np.flatnonzero(FKV_MAP[1] == DYNAMIC)
    chain = frames[dyn][:, 8:12].transpose(1, 2, 0, 3).reshape(4, t, -1)
    want = forcing_kv_bands(chain, 6, 6)
    got = np.asarray(state.own.band)
    assert before is not state
    np.testing.assert_array_equal(got, want % 6)
    slot_time = np.asarray(state.slot_time)[1, dyn[0], policy.frame_slots:]
    np.testing.assert_array_equal(slot_time, 8 + want // 6)
    # the band slots of every dynamic head of layers 1.. hold those bands' keys
    head = np.flatnonzero(FKV_MAP[2] == DYNAMIC)[0]
    page = np.asarray(state.slot_page)[2, head, policy.frame_slots:]
    k2 = np.concatenate([np.asarray(rope_keys(SPEC, kk[2, 0], jnp.arange(3 * i, 3 * i + 3))) for i, kk in
                         enumerate(ks)], axis=1)[head]  # [12, T, Dh]
    for j, c in enumerate(want):
        band = k2[8 + c // 6].reshape(6, 4, dh)[c % 6]
        np.testing.assert_allclose(np.asarray(state.k)[0, page[j]], band, rtol=1e-5, atol=1e-6)


def test_forcing_kv_reads_its_published_head_file(tmp_path):
    """Forcing-KV's JSON head file as published (layers of static_head / dynamic_head; a layer
    left out is all dynamic); the shipped Self Forcing map has its 134 static heads."""
    doc = {"format": "forcingkv_offline", "num_layers": 3, "num_heads": 4,
           "layers": [{"layer_idx": 0, "static_head": [0, 3], "dynamic_head": [1, 2]},
                      {"layer_idx": 2, "static_head": [1], "dynamic_head": [0, 2, 3]}]}
    path = tmp_path / "heads.json"
    path.write_text(json.dumps(doc))
    m = load_head_map(str(path), 3, 4, types=FORCING_KV_TYPES)
    np.testing.assert_array_equal(m == STATIC, [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    shipped = load_head_map(f"{REPO}/head_maps/forcing_kv_self_forcing.json", 30, 12, types=FORCING_KV_TYPES)
    assert (shipped == STATIC).sum() == 134
    assert (shipped == STATIC).sum(1).tolist() == [5, 4, 5, 4, 3, 8, 4, 6, 8, 4, 3, 4, 8, 1, 6, 1, 3, 8, 1, 4, 8, 6, 1,
                                                   3, 1, 2, 5, 6, 6, 6]


@pytest.mark.parametrize("doc,want", [
    ({"num_layers": 30, "num_heads": 12, "layers": []}, "made for 30 layers"),
    ({"layers": [{"layer_idx": 5, "static_head": [0], "dynamic_head": [1, 2, 3]}]}, "layer 5 does not exist"),
    ({"layers": [{"layer_idx": 0, "static_head": [0, 1], "dynamic_head": [1, 2, 3]}]}, "do not split"),
    ({"heads": "all"}, "neither format"),
    ([1, 2, 3], "neither format"),
])
def test_bad_head_files(tmp_path, doc, want):
    path = tmp_path / "heads.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(HeadMapError, match=want):
        load_head_map(str(path), 3, 4, types=FORCING_KV_TYPES)


@pytest.mark.parametrize("name,kw,want", [
    ("dummy_forcing", dict(num_dummy=13), "num_dummy \\(13\\) must be between 0 and the model's 12 heads"),
    ("forcing_kv", dict(head_map=FKV_MAP, num_frame_patch=5), "must divide a frame's 24 tokens"),
    ("forcing_kv", dict(head_map=FKV_MAP, sim_retention_ratio=0.5), "keeps 9 of 18 bands"),
    ("forcing_kv", dict(head_map=PYRAMID_MAP), "unknown head types"),
    ("forcing_kv", dict(head_map=FKV_MAP[:2]), "2 layers"),
    ("dummy_forcing", dict(head_map=FKV_MAP, num_dummy=4), "unknown head types"),
])
def test_bad_policy_settings(name, kw, want):
    with pytest.raises(ValueError, match=want):
        make_policy(name, SPEC, 30, **kw)


@pytest.mark.slow
def test_dummy_groups_reused_offline_give_the_same_video(traced):
    """The groups an online run chose, given as a head map, make the same video."""
    policy, run = traced["dummy_forcing"]
    kinds = np.asarray(run.cache.own.head_kind)
    again = make_policy("dummy_forcing", SPEC, CHUNKS * F, num_dummy=6, head_map=kinds)
    model, sampler = init_model(CFG, seed=1), Sampler()
    ctx = np.random.default_rng(0).standard_normal((BATCH, CFG.text_len, CFG.text_dim)).astype(np.float32)
    noise = RandomNoise(0, (BATCH, CHUNKS * F, CFG.in_channels, 2 * GRID[0], 2 * GRID[1]), sampler)
    lat = rollout(model, again, sampler, text_kv_of(model, ctx), noise, 6).latents
    np.testing.assert_allclose(lat, run.latents[:, :6 * F], rtol=1e-5, atol=1e-5)
    assert set(np.unique(kinds)) <= {FIRST, MID, LAST}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dummy_forcing", "forcing_kv"])
def test_eight_bit_pages_stay_close(traced, name):
    """int8 pages (per-token scales) give nearly the video of full-precision pages, the bands
    copied out of 8-bit pages included."""
    import dataclasses

    _, run = traced[name]
    policy = make_policy(name, dataclasses.replace(SPEC, kv_dtype="int8"), CHUNKS * F, **CASES[name])
    model, sampler = init_model(CFG, seed=1), Sampler()
    ctx = np.random.default_rng(0).standard_normal((BATCH, CFG.text_len, CFG.text_dim)).astype(np.float32)
    noise = RandomNoise(0, (BATCH, CHUNKS * F, CFG.in_channels, 2 * GRID[0], 2 * GRID[1]), sampler)
    lat = rollout(model, policy, sampler, text_kv_of(model, ctx), noise, 6).latents
    want = run.latents[:, :6 * F]
    assert rel_err(lat, want) < 2e-2


@pytest.mark.slow
def test_replay_gives_dummy_forcings_rows(tmp_path):
    """A replay file's `dummy_rows` are the rows the typing samples (a replay of upstream's
    draws); a run that saves its replay writes the rows it drew, and replaying it is exact."""
    from conftest import run_main
    from pyramid_jax.cli import generate

    base = ["--config=configs/tiny_random.py", "--config.num_frames=9", "--config.height=64", "--config.width=64",
            "--config.cache.policy=dummy_forcing", "--config.cache.num_dummy=4", "--config.output="]
    r = run_main(generate.main, [*base, f"--config.save_latents={tmp_path / 'a.npz'}",
                                 f"--config.save_replay={tmp_path / 'r.npz'}", "--config.seed=7"])
    assert r.returncode == 0, r.stderr
    rows = np.load(tmp_path / "r.npz")["dummy_rows"]
    assert rows.shape == (2, 16 // 3)  # 16 tokens a frame: 5 rows a layer
    r = run_main(generate.main, [*base, f"--config.save_latents={tmp_path / 'b.npz'}",
                                 f"--config.replay={tmp_path / 'r.npz'}"])
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["latents"], np.load(tmp_path / "b.npz")["latents"])
    groups = json.loads((tmp_path / "a.heads.json").read_text())
    assert np.asarray(groups["map"]).shape == (2, 4) and groups["policy"] == "dummy_forcing"
    assert json.loads((tmp_path / "b.heads.json").read_text())["map"] == groups["map"]


def test_cache_picture_draws_the_new_policies(traced):
    """The studio's picture: a row per Dummy group (last heads see the frame before the chunk,
    first heads frame 0) and per Forcing-KV type (dynamic heads see parts of frames: bands)."""
    from pyramid_jax.cache.picture import attended_frames

    from pyramid_jax.cache.dummy import DummyGroupsPolicy

    _, run = traced["dummy_forcing"]
    policy = DummyGroupsPolicy(SPEC, np.asarray(run.cache.own.head_kind))  # the layout after typing
    rows = {r["type"]: r for r in attended_frames(policy, run.cache, CHUNKS)["rows"]}
    assert set(rows) <= {"First", "Mid", "Last"} and rows["Last"]["heads"] == 6
    t0 = CHUNKS * F
    assert rows["Last"]["full"][t0 - 1] == 1.0 and sum(rows["Last"]["full"]) == 1.0
    if "First" in rows:
        assert rows["First"]["full"][0] == 1.0 and sum(rows["First"]["full"]) == 1.0
    policy, run = traced["forcing_kv"]
    rows = {r["type"]: r for r in attended_frames(policy, run.cache, CHUNKS)["rows"]}
    assert set(rows) == {"Static", "Dynamic"} and rows["Static"]["heads"] == 5
    assert rows["Static"]["full"][0] == 1.0 and rows["Static"]["full"][t0 - 1] == 1.0
    assert sum(rows["Static"]["pooled"]) == 0 and sum(rows["Dynamic"]["pooled"][t0 - 4:t0 - 1]) > 0


@pytest.mark.slow
def test_dummy_moves_into_its_groups_layout_after_typing(traced):
    """After the typing chunk the cache holds 1 frame slot per first / last head and R per mid
    head, as upstream re-allocates, and the video is the one the typing layout makes."""
    import dataclasses

    from pyramid_jax.cache.dummy import DummyForcingPolicy

    policy, run = traced["dummy_forcing"]
    kinds = np.asarray(run.cache.own.head_kind)
    assert run.cache.k.shape[1] == int(np.where(kinds == MID, 3, 1).sum())  # pages: a frame each

    @dataclasses.dataclass(frozen=True)
    class Unmoved(DummyForcingPolicy):
        relayout_at = None  # keep the typing layout (1 + R slots a head) to the end

    unmoved = Unmoved(policy.spec, policy.params, seed=policy.seed)
    model, sampler = init_model(CFG, seed=1), Sampler()
    ctx = np.random.default_rng(0).standard_normal((BATCH, CFG.text_len, CFG.text_dim)).astype(np.float32)
    noise = RandomNoise(0, (BATCH, CHUNKS * F, CFG.in_channels, 2 * GRID[0], 2 * GRID[1]), sampler)
    kept = rollout(model, unmoved, sampler, text_kv_of(model, ctx), noise, CHUNKS, keep_cache=True)
    assert kept.cache.k.shape[1] == 4 * CFG.num_layers * CFG.num_heads
    np.testing.assert_array_equal(np.asarray(kept.cache.own.head_kind), kinds)
    np.testing.assert_allclose(run.latents, kept.latents, rtol=1e-5, atol=1e-5)
