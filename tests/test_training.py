"""Training: block-causal flow-matching loss and a jitted optax step that learns."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pyramid_jax.data.shapes import sample
from pyramid_jax.models.wan.modeling import FrameMask, WanConfig, block_causal_mask, init_model
from pyramid_jax.training import loss_fn, make_optimizer, sample_timesteps, to_model_frames, train_step
from pyramid_jax.sampling.schedule import FlowSchedule


def test_timesteps_are_per_chunk():
    t = np.asarray(sample_timesteps(jax.random.key(0), 2, 7, 3, FlowSchedule()))
    assert t.shape == (2, 7)
    assert (t[:, 0] == t[:, 2]).all() and (t[:, 3] == t[:, 5]).all()
    assert set(np.unique(t)) <= set(FlowSchedule().timesteps.tolist())


def test_foreground_is_the_shapes():
    """The mask of a clip's shapes, found from its background's name alone, is where the clip
    differs from the same clip drawn without shapes."""
    import dataclasses

    from pyramid_jax.data import shapes

    for seed in range(20):
        clip = shapes.random_clip(seed)
        video = shapes.render(clip, 4, 32, 32)
        bare = shapes.render(dataclasses.replace(clip, shapes=()), 4, 32, 32)
        want = np.any(video != bare, axis=-1)
        np.testing.assert_array_equal(shapes.foreground(video, clip.background), want)


@pytest.mark.slow
def test_foreground_weight_is_on_the_first_chunk_only():
    """The weighted loss puts 1 + foreground_weight on the marked pixels of the first chunk,
    each frame normalised to mean 1, and leaves later chunks alone."""
    from pyramid_jax.data import shapes
    from pyramid_jax.training import Recipe

    cfg = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_channels=3, out_channels=3,
                    patch_size=(1, 4, 4), text_dim=16, freq_dim=32, text_len=4)
    model = init_model(cfg, seed=0)
    x0 = jnp.asarray(to_model_frames(shapes.sample(2, 3, 16, 16)[0]))[None]
    ctx, key = jnp.ones((1, 4, 16)) * 0.1, jax.random.key(1)
    plain = float(loss_fn(model, x0, ctx, key))
    ones = jnp.ones((1, 3, 1, 16, 16))
    weighted = Recipe(foreground_weight=8.0)
    assert abs(float(loss_fn(model, x0, ctx, key, weighted, ones)) - plain) <= 1e-5 * plain  # uniform = unweighted
    assert float(loss_fn(model, x0, ctx, key, Recipe(), ones.at[..., :8].set(0))) == plain  # weight 0: mask ignored
    right = ones.at[..., :8].set(0)
    # foreground_weight -1 zeroes the marked pixels: the loss of the other half alone
    only_left, only_right = (float(loss_fn(model, x0, ctx, key, Recipe(foreground_weight=-1.0), m))
                             for m in (right, 1 - right))
    got = float(loss_fn(model, x0, ctx, key, weighted, right))  # weights 1 left, 9 right: mean 5
    assert abs(got - (only_left + 9 * only_right) / 10) <= 1e-5 * got
    x6 = jnp.asarray(to_model_frames(shapes.sample(2, 6, 16, 16)[0]))[None]
    later = jnp.zeros((1, 6, 1, 16, 16)).at[:, 3:, ..., 8:].set(1)
    assert float(loss_fn(model, x6, ctx, key, weighted, later)) == float(loss_fn(model, x6, ctx, key))


@pytest.mark.slow
def test_self_context_continues_the_models_own_estimate():
    """self_context_prob 1: the context chunk the next chunk sees is the model's own x0
    estimate of it from self_context_t (the real frames stay the targets), so the loss is the
    plain loss of the clip whose context frames are that estimate."""
    from pyramid_jax.data import shapes
    from pyramid_jax.training import Recipe

    cfg = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_channels=3, out_channels=3,
                    patch_size=(1, 4, 4), text_dim=16, freq_dim=32, text_len=4)
    model = init_model(cfg, seed=0)
    x0 = jnp.asarray(to_model_frames(shapes.sample(2, 6, 16, 16)[0]))[None]
    ctx = jnp.ones((1, 4, 16)) * 0.1
    plain, own_ctx = Recipe(clean_context_prob=1.0), Recipe(clean_context_prob=1.0, self_context_prob=1.0)
    # a key whose sample has a context chunk (the first of the two chunks)
    key = next(k for k in map(jax.random.key, range(50))
               if int(jax.random.randint(jax.random.split(k, 6)[3], (1, 1), 0, 2)[0, 0]) == 1)
    _, k_s = jax.random.split(jax.random.fold_in(key, 1))
    t_s = jnp.full((1, 6), own_ctx.self_context_t)
    x_s = own_ctx.schedule.add_noise(x0, jax.random.normal(k_s, x0.shape), t_s)
    flow = model(x_s, t_s, model.text_kv(ctx), FrameMask(block_causal_mask(6, 3))).flow
    estimate = x0.at[:, :3].set(own_ctx.schedule.flow_to_x0(x_s, flow, t_s)[:, :3])
    got = float(loss_fn(model, x0, ctx, key, own_ctx))
    assert abs(got - float(loss_fn(model, estimate, ctx, key, plain))) <= 1e-5 * got
    assert abs(got - float(loss_fn(model, x0, ctx, key, plain))) > 1e-4 * got  # the context mattered


@pytest.mark.slow
def test_switch_samples_continue_another_clip_under_their_own_text():
    """switch_prob 1: each sample's context chunk is the previous sample's frames, as context
    even where clean_context_prob is 0, so the loss is the plain loss (every first chunk
    context) of the batch whose first chunks are rolled by one; a batch of one is unchanged."""
    from pyramid_jax.data import shapes
    from pyramid_jax.training import Recipe

    cfg = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_channels=3, out_channels=3,
                    patch_size=(1, 4, 4), text_dim=16, freq_dim=32, text_len=4)
    model = init_model(cfg, seed=0)
    x0 = jnp.asarray(np.stack([to_model_frames(shapes.sample(s, 6, 16, 16)[0]) for s in (2, 3, 4)]))
    ctx = jnp.stack([jnp.full((4, 16), v) for v in (0.1, -0.2, 0.3)])
    switch, plain = Recipe(switch_prob=1.0), Recipe(clean_context_prob=1.0)
    # a key whose samples all draw the second chunk as the first with a loss
    key = next(k for k in map(jax.random.key, range(200))
               if bool((jax.random.randint(jax.random.split(k, 6)[3], (3, 1), 0, 2) == 1).all()))
    rolled = x0.at[:, :3].set(jnp.roll(x0[:, :3], 1, axis=0))
    got = float(loss_fn(model, x0, ctx, key, switch))
    assert abs(got - float(loss_fn(model, rolled, ctx, key, plain))) <= 1e-5 * got
    assert abs(got - float(loss_fn(model, x0, ctx, key, plain))) > 1e-4 * got  # the context mattered
    one = float(loss_fn(model, x0[:1], ctx[:1], key, switch))
    assert one == float(loss_fn(model, x0[:1], ctx[:1], key, Recipe()))


@pytest.mark.slow
def test_overfits_a_fixed_batch():
    cfg = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_channels=3, out_channels=3,
                    patch_size=(1, 4, 4), text_dim=16, freq_dim=32, text_len=4)
    model = init_model(cfg, seed=0)
    video, _ = sample(1, 6, 16, 16)
    x0 = jnp.asarray(to_model_frames(video))[None]  # [1, 6, 3, 16, 16]
    ctx = jnp.ones((1, 4, 16)) * 0.1
    graphdef, params = nnx.split(model)
    opt = make_optimizer(lr=3e-3, warmup=5)
    opt_state = opt.init(params)
    key = jax.random.key(0)
    first = float(loss_fn(model, x0, ctx, key))
    for i in range(60):
        params, opt_state, loss = train_step(graphdef, opt, params, opt_state, x0, ctx, key)  # same noise: memorise it
    assert float(loss) < 0.5 * first, (first, float(loss))


@pytest.mark.slow
def test_train_demo_resumes_and_writes_a_loadable_model(tmp_path):
    from conftest import run_tool
    from pyramid_jax.weights.checkpoint import load_model

    args = ["tools/train_demo.py", "--out", str(tmp_path / "model"), "--work", str(tmp_path / "work"), "--batch", "1",
            "--frames", "6", "--size", "16", "--patch", "4", "--dim", "32", "--heads", "2", "--layers", "1",
            "--clips", "8", "--clip-frames", "6", "--save-every", "2"]
    r = run_tool(*args, "--steps", "2")
    assert r.returncode == 0, r.stderr
    r = run_tool(*args, "--steps", "4", "--fg-weight", "8", "--probe-every", "4")  # a second stage: the shapes weighted
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "at step 2" in r.stdout and "step 4/4" in r.stdout
    assert "probe at step 4: adherence" in r.stdout  # the probe is not part of the recipe (stages below)
    probes = [json.loads(line) for line in (tmp_path / "work" / "probes.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probes] == [4] and 0 <= probes[0]["adherence"] <= 1
    model = load_model(str(tmp_path / "model" / "dit"))
    assert model.cfg.in_channels == 3 and model.cfg.patch_size == (1, 4, 4)
    with open(tmp_path / "model" / "dit" / "config.json") as fh:
        stages = json.load(fh)["training"]["stages"]
    assert [(s["from_step"], s["args"]["steps"], s["args"]["fg_weight"]) for s in stages] == [(0, 2, 0.0), (2, 4, 8.0)]


def test_a_stage_recorded_before_an_option_existed_is_the_same_stage():
    import os
    import sys

    from conftest import REPO

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import train_demo

    old = {"steps": 4, "fg_weight": 8.0}
    assert train_demo._same_stage(old, {**old, "self_context": 0.0})
    assert not train_demo._same_stage(old, {**old, "self_context": 0.5})
    assert train_demo._same_stage(old, {**old, "switch": 0.0})


def test_demo_text_path_is_the_same_in_training_and_generate():
    """The captions' context train_demo trains on is, bit for bit, what generate feeds the
    shipped demo model for the same prompts (tokenizer, padding, zeroed rows, text_len, scale)."""
    import os
    import sys

    from conftest import REPO
    from pyramid_jax import pipeline
    from pyramid_jax.config import parse_config
    from pyramid_jax.spec import from_config

    sys.path.insert(0, os.path.join(REPO, "tools"))
    from train_demo import encode_captions

    c = parse_config(["generate", f"--config={os.path.join(REPO, 'configs', 'demo.py')}"])
    models = pipeline.load_models(from_config(c), decoder=False)
    prompts = [c.prompt, "a white square quickly bouncing downwards with 2 other shapes on a red checkered background"]
    trained_on = encode_captions(os.path.join(REPO, "assets", "demo", "text"), prompts, models.dit.cfg.text_len)
    np.testing.assert_array_equal(trained_on, models.text(prompts))
    assert (trained_on[:, -1] == 0).all() and np.abs(trained_on).max() > 1  # rows past the prompt zero


TINY_RUN = ["--batch", "2", "--frames", "6", "--size", "16", "--patch", "8", "--dim", "32", "--heads", "2",
            "--layers", "1", "--clips", "6", "--clip-frames", "9", "--warmup", "2", "--save-every", "100"]


@pytest.mark.slow
def test_train_demo_stopped_and_resumed_equals_an_uninterrupted_run(tmp_path):
    """A run stopped after 2 of 5 steps (as --max-minutes stops one) and run again ends with the
    same weights, bit for bit, as a run that never stopped: batches and noise depend on the
    step alone, and the checkpoint holds the params, optimizer state and EMA. The run that never
    stopped probes its weights on the way (--probe-every), which must not change them."""
    import os
    import sys

    from conftest import REPO
    from pyramid_jax.weights.checkpoint import load_model, load_t5

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import train_demo

    data = str(tmp_path / "data_shared")
    runs = {}
    for name, parts in (("straight", [["--probe-every", "2"]]), ("resumed", [["--run-steps", "2"], []])):
        work, out = tmp_path / name, tmp_path / name / "model"
        os.makedirs(work, exist_ok=True)
        if os.path.exists(data):  # one dataset for both runs
            os.symlink(data, work / "data")
        for extra in parts:
            assert train_demo.main(["--out", str(out), "--work", str(work), "--steps", "5", *TINY_RUN, *extra]) == 0
        if not os.path.exists(data):
            os.rename(work / "data", data)
            os.symlink(data, work / "data")
        runs[name] = out
    assert [json.loads(line)["step"] for line in (tmp_path / "straight" / "probes.jsonl").read_text().splitlines()] \
        == [2, 4]
    a, b = (load_model(str(runs[n] / "dit")) for n in ("straight", "resumed"))
    for x, y in zip(jax.tree.leaves(nnx.state(a, nnx.Param)), jax.tree.leaves(nnx.state(b, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ta, tb = (load_t5(str(runs[n] / "text" / "umt5")).params() for n in ("straight", "resumed"))
    for k in ta:
        np.testing.assert_array_equal(np.asarray(ta[k]), np.asarray(tb[k]))
    meta = __import__("json").load(open(runs["resumed"] / "dit" / "config.json"))
    assert meta["training"]["steps"] == 5 and np.isfinite(meta["training"]["final_loss"])


@pytest.mark.parametrize("bad, want", [(["--frames", "4"], "--frames must be a positive multiple of 3"),
                                       (["--fg-weight", "-1"], "--fg-weight must be >= 0"),
                                       (["--self-context", "1.5"], "--self-context is a share in [0, 1]"),
                                       (["--switch", "-0.1"], "--switch is a share in [0, 1]"),
                                       (["--fg-named", "-2"], "--fg-named must be >= 0"),
                                       (["--probe-every", "-1"], "--probe-every must be >= 0"),
                                       (["--probe-every", "5", "--probe-prompts", "/nonexistent.txt"],
                                        "--probe-prompts /nonexistent.txt: no such file"),
                                       (["--probe-every", "5", "--probe-prompts", "{tmp}/odd.txt"],
                                        "'a cat on a sofa' is not a shapes caption")])
def test_train_demo_bad_input_one_line(tmp_path, tmp_path_factory, capsys, bad, want):
    import os
    import sys

    from conftest import REPO

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import train_demo

    inputs = tmp_path_factory.mktemp("inputs")  # outside tmp_path, which must stay empty
    (inputs / "odd.txt").write_text("a red circle bouncing upwards on a blue striped background\na cat on a sofa\n")
    bad = [a.replace("{tmp}", str(inputs)) for a in bad]
    assert train_demo.main(["--out", str(tmp_path / "model"), "--work", str(tmp_path / "work"), *bad]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and want in err[0], err
    assert not os.listdir(tmp_path)  # nothing written


def test_foreground_can_weight_the_captioned_shape_more():
    """train_demo.foreground: 1 on every shape's pixels by default; with named=3, 3 on the
    pixels of the colour the caption gives its shape and still 1 on the other shapes'."""
    import os
    import sys

    from conftest import REPO
    from pyramid_jax.data import shapes

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import train_demo

    clip = next(c for c in map(shapes.random_clip, range(200))
                if len({s.color for s in c.shapes}) >= 2 and len(c.shapes) >= 2)
    video = shapes.render(clip, 3, 32, 32)[None]
    plain = train_demo.foreground(video, [clip.caption])[0, :, 0]
    np.testing.assert_array_equal(plain, shapes.foreground(video[0], clip.background))
    named = train_demo.foreground(video, [clip.caption], named=3.0)[0, :, 0]
    own = shapes.color_pixels(video[0], clip.shapes[0].color)
    assert own.any() and (plain.astype(bool) & ~own).any()  # both kinds of shape pixel are in view
    np.testing.assert_array_equal(named, np.where(own, 3.0, plain))


@pytest.mark.slow
def test_train_demo_probe_scores_the_weights_as_evaluate_prompts_does(tmp_path):
    """The training probe, given the shipped demo weights, reports what tools/evaluate_prompts.py
    measures for the same prompts, seeds, 2 s and the window of 12."""
    import os
    import sys
    from types import SimpleNamespace

    from conftest import REPO
    from pyramid_jax.models.umt5 import modeling as umt5
    from pyramid_jax.weights.checkpoint import load_model, load_t5

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import evaluate_prompts
    import train_demo

    demo = os.path.join(REPO, "assets", "demo")
    graphdef, dit = nnx.split(load_model(os.path.join(demo, "dit")))
    t5 = load_t5(os.path.join(demo, "text", "umt5"))
    tokenizer = umt5.Tokenizer(os.path.join(demo, "text", "spiece.model"), 32)
    prompts = train_demo.probe_prompts()[:2]
    assert len(train_demo.probe_prompts()) == train_demo.PROBE_PROMPTS and all(" on a " in p for p in prompts)
    args = SimpleNamespace(shift=train_demo.DEMO_SHIFT, size=64)
    got = train_demo.probe(graphdef, {"dit": dit, "text": t5.params()}, t5.cfg, tokenizer, args, prompts)
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "eval.json"
    assert evaluate_prompts.main([f"--config={os.path.join(REPO, 'configs', 'demo.py')}", "--prompts",
                                  str(tmp_path / "p.txt"), "--seeds", "0,1", "--seconds", "2.1",
                                  "--config.cache.policy=window", "--json", str(out)]) == 0
    want = json.loads(out.read_text())["results"]["1.0"]
    assert got["adherence"] == pytest.approx(want["mean"], abs=1e-6)
    assert got["shape_area"] == pytest.approx(want["shape_area"], abs=1e-6)
