"""tools/classify_heads.py: profiles file, --config calibration, and the demo with the pyramid cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import REPO, run_main, run_tool
from pyramid_jax.cli import generate

DATA = os.path.join(REPO, "..", "shared", "data", "pf_head_profiles")


def test_profiles_file_to_map_and_figures(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(40)
    prof = np.stack([np.full(40, 1.0), np.full(40, -1.0), np.sin(2 * np.pi * t / 6)])  # A, V, W
    prof = np.broadcast_to(prof[None, None] + 0.05 * rng.standard_normal((2, 1, 3, 40)), (2, 1, 3, 40))
    np.savez(tmp_path / "p.npz", profiles=prof, prompts=np.array(["a", "b"]))
    r = run_tool("tools/classify_heads.py", "--profiles", str(tmp_path / "p.npz"), "--out", str(tmp_path / "m.csv"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.csv").read_text().strip() == "1,2,-1"
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["prompts"] == ["a", "b"] and meta["thresholds"]["sign_threshold"] == 0.8 and "date" in meta
    assert (tmp_path / "m_grid.png").stat().st_size > 0 and (tmp_path / "m_profiles.png").stat().st_size > 0


@pytest.mark.parametrize("content,want", [(None, "no such file"), ("junk", "not a readable npz"),
                                          ("3d", "expected [prompts, layers, heads, frames]")])
def test_bad_profiles(tmp_path, content, want):
    path = tmp_path / "p.npz"
    if content == "junk":
        path.write_text("junk")
    elif content == "3d":
        np.savez(path, profiles=np.zeros((2, 3, 4)))
    from pyramid_jax.cli import classify

    r = run_main(classify.main, ["--profiles", str(path), "--out", str(tmp_path / "m.csv")])
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and want in lines[0], r.stderr
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.slow
def test_demo_map_then_pyramid_generate(tmp_path):
    """The demo runs end to end with cache.policy=pyramid using a map made by the tool."""
    m = tmp_path / "demo.csv"
    r = run_tool("tools/classify_heads.py", "--config=configs/tiny_random.py", "--frames", "24", "--out", str(m))
    assert r.returncode == 0, r.stderr
    assert np.loadtxt(m, delimiter=",").shape == (2, 4)
    out = tmp_path / "v.mp4"
    r = run_tool("-m", "pyramid_jax.generate", "--config=configs/tiny_random.py", "--config.cache.policy=pyramid",
                 f"--config.cache.head_map={m}", f"--config.output={out}")
    assert r.returncode == 0, r.stderr
    assert "cache pyramid" in r.stdout and out.exists()
    lat = np.load(tmp_path / "v.npz")["latents"]
    assert lat.shape == (1, 21, 16, 16, 16) and np.isfinite(lat).all()


def test_pyramid_without_head_map_is_refused(tmp_path):
    r = run_main(generate.main, ["--config=configs/tiny_random.py", "--config.cache.policy=pyramid",
                                 f"--config.output={tmp_path / 'v.mp4'}"])
    assert r.returncode != 0 and "tools/classify_heads.py" in r.stderr
    r = run_main(generate.main, ["--config=configs/tiny_random.py", "--config.cache.policy=pyramid",
                                 "--config.cache.head_map=/nope.csv", f"--config.output={tmp_path / 'v.mp4'}"])
    assert r.returncode != 0 and "not found" in r.stderr and "classify_heads" in r.stderr


def test_deep_forcing_demo(tmp_path):
    r = run_main(generate.main, ["--config=configs/tiny_random.py", "--config.cache.policy=deep_sink",
                                 "--config.cache.local_attn_size=9", "--config.cache.sink_size=3",
                                 "--config.num_frames=12", "--config.output=",
                                 f"--config.save_latents={tmp_path / 'l.npz'}"])
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_forcing_kv_typing_then_generate(tmp_path):
    """--policy forcing_kv: attention masses of a calibration rollout, static / dynamic by
    Forcing-KV's rule, a head map the forcing_kv policy then runs with."""
    from pyramid_jax.cli import classify

    m = tmp_path / "fkv.json"
    r = run_main(classify.main, ["--config=configs/tiny_random.py", "--config.height=96", "--config.width=64",
                                 "--policy", "forcing_kv", "--frames", "12", "--out", str(m)])
    assert r.returncode == 0, r.stderr
    doc = json.loads(m.read_text())
    masses = np.load(tmp_path / "fkv.masses.npz")["masses"]
    assert masses.shape == (1, 2, 4, 12) and np.allclose(masses.sum(-1), 1, atol=1e-4)  # every key frame
    score = masses[0, ..., -4:].sum(-1) / masses[0, ..., 1:].sum(-1)
    np.testing.assert_array_equal(np.asarray(doc["map"]) == 6, score >= 0.8)
    r = run_main(generate.main, ["--config=configs/tiny_random.py", "--config.height=96", "--config.width=64",
                                 "--config.cache.policy=forcing_kv", f"--config.cache.head_map={m}",
                                 "--config.num_frames=12", "--config.output=", f"--config.save_latents={tmp_path / 'l.npz'}"])
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "l.npz")["latents"].shape == (1, 12, 16, 12, 8)
