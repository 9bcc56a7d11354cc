"""The generate CLI: a happy path on the demo config, replay via files, and bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import REPO, run_main, run_tool
from pyramid_jax.cli import generate

DEMO = "--config=configs/tiny_random.py"
SMALL = ["--config.num_frames=6", "--config.height=64", "--config.width=64"]


@pytest.mark.slow
def test_demo_writes_latents_and_mp4(tmp_path):
    out = tmp_path / "v.mp4"
    r = run_tool("-m", "pyramid_jax.generate", DEMO, f"--config.output={out}")
    assert r.returncode == 0, r.stderr
    assert "random weights" in r.stdout and "chunk 7/7" in r.stdout and "video frames/s" in r.stdout
    lat = np.load(tmp_path / "v.npz")["latents"]
    assert lat.shape == (1, 21, 16, 16, 16) and np.isfinite(lat).all()
    import imageio.v2 as imageio

    frames = [f for f in imageio.get_reader(str(out), "ffmpeg")]
    assert len(frames) == 1 + 4 * (21 - 1) and frames[0].shape == (128, 128, 3)  # decoded by the VAE
    assert "decoded" in r.stdout
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]


def test_latent_preview_without_vae(tmp_path):
    out = tmp_path / "v.mp4"
    r = run_main(generate.main, [DEMO, *SMALL, "--config.vae.random=False", f"--config.output={out}"])
    assert r.returncode == 0, r.stderr
    import imageio.v2 as imageio

    assert len([f for f in imageio.get_reader(str(out), "ffmpeg")]) == 6 * 4 and "latent preview" in r.stdout


@pytest.mark.slow
def test_replay_round_trip_cli(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    replay = tmp_path / "replay.npz"
    r = run_tool("-m", "pyramid_jax.generate", DEMO, *SMALL, "--config.seed=5", "--config.output=",
                 f"--config.save_latents={a}", f"--config.save_replay={replay}")
    assert r.returncode == 0, r.stderr
    data = np.load(replay)
    assert data["noise"].shape == (1, 6, 16, 8, 8) and data["renoise"].shape == (6, 1, 3, 16, 8, 8)
    r = run_tool("-m", "pyramid_jax.generate", DEMO, "--config.output=", f"--config.replay={replay}",
                 f"--config.save_latents={b}")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(a)["latents"], np.load(b)["latents"])


def test_prompt_embeds_and_one_frame_chunks(tmp_path):
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32))
    r = run_main(generate.main, [DEMO, *SMALL, "--config.frames_per_chunk=1", f"--config.prompt_embeds={emb}",
                                 "--config.output=", f"--config.save_latents={tmp_path / 'l.npz'}"])
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "l.npz")["latents"].shape == (2, 6, 16, 8, 8)


def _bad_embeds(tmp_path):
    p = tmp_path / "wide.npy"
    np.save(p, np.zeros((4, 65), np.float32))
    return p


@pytest.mark.parametrize("args,want", [
    (["--config.no_such_field=1"], "unknown config field"),
    (["--config.cache.nope=3"], "unknown config field"),
    (["--config.checkpoint=/nonexistent/ckpt"], "not found"),
    (["--config.num_frames=7"], "multiple of the chunk"),
    (["--config.prompt_embeds=EMB"], "[B, L, 64]"),
    (["--config.replay=/nonexistent.npz"], "no such file"),
    (["--config.vae.checkpoint=/nonexistent"], "vae.checkpoint"),
    (["--config.cache.policy=fancy"], "unknown cache.policy"),
    (["--config.num_frame_per_block=1"], "is now --config.frames_per_chunk"),
    (["--config.prompt_schedule=0:a;4:b"], "multiple of frames_per_chunk"),
    (["--config.prompt_schedule=0:a;9:b"], "below num_frames"),
    (["--config.prompt_schedule=3:a;0:b"], "must increase"),
    (["--config.prompt_schedule=three:a"], "is not FRAME:PROMPT"),
    (["--config.cache.kv_dtype=int4"], "unknown cache.kv_dtype 'int4'"),
    (["--config.guidance_scale=-2"], "guidance_scale must be a number >= 0"),
    (["--config.renoise_eta=1.5"], "renoise_eta must be a number in [0, 1]"),
    (["--config.prompt_schedule=3:b", "--config.prompt_embeds=EMB"], "cannot go with prompt_embeds"),
])
def test_bad_inputs_one_line(tmp_path, args, want):
    args = [a.replace("EMB", str(_bad_embeds(tmp_path))) for a in args]

    r = run_main(generate.main, [DEMO, *SMALL, f"--config.output={tmp_path / 'x.mp4'}", *args])
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and want in lines[0], r.stderr
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_prompt_schedule_switches_text_at_its_frame(tmp_path):
    """--config.prompt_schedule: the frames before a switch are those of the opening prompt
    alone; from the switch on the video follows the new text (and differs)."""
    def latents(*args):
        out = tmp_path / f"l{len(os.listdir(tmp_path))}.npz"
        r = run_tool("-m", "pyramid_jax.generate", DEMO, *SMALL, "--config.num_frames=9", "--config.output=",
                     f"--config.save_latents={out}", *args)
        assert r.returncode == 0, r.stderr
        return np.load(out)["latents"], r.stdout

    plain, _ = latents("--config.prompt=a red circle")
    switched, log = latents("--config.prompt=a red circle", "--config.prompt_schedule=6:a blue square")
    explicit, _ = latents("--config.prompt=", "--config.prompt_schedule=0:a red circle;6:a blue square")
    assert "prompt schedule: 0: a red circle; 6: a blue square" in log
    np.testing.assert_array_equal(switched[:, :6], plain[:, :6])
    assert np.abs(switched[:, 6:] - plain[:, 6:]).mean() > 1e-3
    np.testing.assert_array_equal(explicit, switched)


@pytest.mark.slow
def test_eight_bit_cache_pages_stay_close(tmp_path):
    """cache.kv_dtype=int8: the same video as the model-dtype pages, up to the quantization."""
    outs = {}
    for kv in ("", "int8"):
        out = tmp_path / f"l{kv}.npz"
        r = run_tool("-m", "pyramid_jax.generate", DEMO, *SMALL, "--config.num_frames=9", "--config.output=",
                     f"--config.cache.kv_dtype={kv}", f"--config.save_latents={out}")
        assert r.returncode == 0, r.stderr
        outs[kv] = np.load(out)["latents"]
    err = np.linalg.norm(outs["int8"] - outs[""]) / np.linalg.norm(outs[""])
    assert 0 < err < 0.05, err


@pytest.mark.slow
def test_compile_cache_holds_one_step_and_is_reused(tmp_path):
    """The CLI's persistent compilation cache: the chunk step compiles once per run (the first
    cache is committed like every later one), and a second run loads it."""
    env = dict(PYRAMID_JAX_COMPILE_CACHE=str(tmp_path / "cache"), JAX_DEBUG_LOG_MODULES="jax._src.compiler")
    args = ("-m", "pyramid_jax.generate", DEMO, *SMALL, "--config.output=", f"--config.save_latents={tmp_path / 'l.npz'}")
    r = run_tool(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert len([f for f in os.listdir(tmp_path / "cache") if f.startswith("jit_step-")]) == 1
    r = run_tool(*args, env=env)
    assert "Persistent compilation cache hit for 'jit_step'" in r.stdout + r.stderr


def test_missing_config_file():
    r = run_main(generate.main, ["--config=configs/nope.py"])
    assert r.returncode != 0 and "no such file" in r.stderr


def test_trained_demo_writes_pixel_video(tmp_path):
    """configs/demo.py: the shipped model, umT5 text and pixel frames; a picture, not noise."""
    out = tmp_path / "demo.mp4"
    r = run_tool("-m", "pyramid_jax.generate", "--config=configs/demo.py", "--config.num_frames=6",
                 f"--config.output={out}")
    assert r.returncode == 0, r.stderr
    assert "random weights" not in r.stdout and "text encoder umT5" in r.stdout and "pixels" in r.stdout
    import imageio.v2 as imageio

    frames = np.stack([f for f in imageio.get_reader(str(out), "ffmpeg")]).astype(np.float32)
    assert frames.shape == (6, 64, 64, 3)
    # The default prompt asks for a blue background: blue dominates (a random model gives grey noise).
    mean = frames.reshape(-1, 3).mean(0)
    assert mean[2] > mean[0] + 20 and mean[2] > mean[1] + 20, mean


def test_demo_assets_fit_the_repo_budget():
    root = os.path.join(REPO, "assets", "demo")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    assert 0 < size <= 20 * 2**20


@pytest.mark.slow
def test_pyramid_forcing_config_runs_on_a_converted_checkpoint(tmp_path):
    """configs/pyramid_forcing.py as shipped (the published head map, 30 layers x 12 heads) on a
    Self Forcing-style checkpoint of that shape (narrow heads), converted as a user would."""
    from conftest import diffusers_wan, save_self_forcing_pt

    pt = tmp_path / "self_forcing_dmd.pt"
    save_self_forcing_pt(diffusers_wan(num_layers=30, num_attention_heads=12, attention_head_dim=8), pt)
    ckpt = tmp_path / "ckpt"
    r = run_tool("tools/convert_checkpoint.py", "--src", str(pt), "--dst", str(ckpt), "--num-heads", "12")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "v.mp4"
    r = run_tool("-m", "pyramid_jax.generate", "--config=configs/pyramid_forcing.py", f"--config.checkpoint={ckpt}",
                 "--config.prompt=a cat", "--config.text_encoder.kind=placeholder", "--config.vae.checkpoint=",
                 "--config.num_frames=6",
                 "--config.height=32", "--config.width=48", "--config.dtype=float32", f"--config.output={out}")
    assert r.returncode == 0, r.stderr
    assert "pyramid" in r.stdout and "chunk 2/2" in r.stdout and out.exists()


@pytest.mark.parametrize("args,want", [
    (["--config.cache.policy=dummy_forcing", "--config.cache.num_dummy=99"], "cache.num_dummy (99) must be between"),
    (["--config.cache.policy=forcing_kv", "--config.cache.head_map=NEITHER"], "is in neither format"),
    (["--config.cache.policy=forcing_kv", "--config.cache.head_map=WIDE"], "made for 30 layers, the model has 2"),
    (["--config.cache.policy=forcing_kv", "--config.cache.head_map=GOOD"], "must divide a frame's 16 tokens"),
    (["--config.cache.policy=forcing_kv", "--config.cache.head_map=GOOD", "--config.cache.num_frame_patch=4",
      "--config.cache.sim_retention_ratio=0.5"], "keeps 6 of 12 bands"),
])
def test_head_aware_bad_inputs_one_line(tmp_path, args, want):
    """Head files and head-aware settings that cannot work: one line, non-zero, nothing written."""
    import json

    files = {"NEITHER": {"heads": [0, 1]}, "WIDE": {"num_layers": 30, "num_heads": 12, "layers": []},
             "GOOD": {"layers": [{"layer_idx": i, "static_head": [0, 1], "dynamic_head": [2, 3]} for i in range(2)]}}
    for name, doc in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    value = lambda a: a.split("=", 1)[1]
    args = [a.replace(value(a), f"{tmp_path / value(a)}.json") if value(a) in files else a for a in args]
    r = run_main(generate.main, [DEMO, *SMALL, f"--config.output={tmp_path / 'x.mp4'}",
                                 f"--config.trace_cache={tmp_path / 't.npz'}", *args])
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and want in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.json" for n in files)
