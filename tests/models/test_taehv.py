"""TAEHV: parity with upstream's class (demo_utils/taehv.py of Self Forcing) through the
converter, streaming chunk by chunk, and generate / init_video with vae.kind=taehv.

Upstream's numbers are recorded in tests/upstream_recordings/upstream_taehv.npz by
`tools/record_upstream.py --what taehv` (its weights: taehv_names.random_checkpoint(seed),
numpy-drawn, so this test writes the same file)."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import REPO, rel_err, run_main, run_tool
from pyramid_jax.cli import generate
from pyramid_jax.models.taehv import modeling as taehv
from pyramid_jax.cli import convert
from pyramid_jax.models.taehv import params as taehv_names
from pyramid_jax.weights.checkpoint import load_taehv

UPSTREAM = os.path.join(REPO, "tests", "upstream_recordings", "upstream_taehv.npz")
TINY = ["--config=configs/tiny_random.py", "--config.num_frames=6", "--config.height=64", "--config.width=64",
        "--config.vae.kind=taehv"]


@pytest.fixture(scope="module")
def recorded():
    return dict(np.load(UPSTREAM))


@pytest.fixture(scope="module")
def converted(recorded, tmp_path_factory):
    """taew2_1.pth-like file (plain state dict) -> `convert_checkpoint --kind taehv` -> dir."""
    tmp = tmp_path_factory.mktemp("taehv")
    sd = taehv_names.random_checkpoint(seed=int(recorded["seed"]))
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp / "taew2_1.pth")
    assert convert.main(["--src", str(tmp / "taew2_1.pth"), "--dst", str(tmp / "taehv"), "--kind", "taehv"]) == 0
    return str(tmp / "taehv")


def _channels_last(a):
    return jnp.asarray(np.moveaxis(a, 2, -1))


def test_decode_and_encode_equal_upstream(recorded, converted):
    model = load_taehv(converted)
    got = np.moveaxis(np.asarray(model.decode_video(_channels_last(recorded["latents"]))), -1, 2)
    assert got.shape == recorded["decode_parallel"].shape == (1, 24, 3, 16, 24)  # 4 frames per latent, all kept
    assert rel_err(got, recorded["decode_parallel"]) <= 1e-4
    assert rel_err(got, recorded["decode_sequential"]) <= 1e-4
    z = np.moveaxis(np.asarray(model.encode_video(_channels_last(recorded["frames"]))), -1, 2)
    assert z.shape == recorded["encode_parallel"].shape == (1, 2, 16, 2, 3)
    assert rel_err(z, recorded["encode_parallel"]) <= 1e-4
    assert rel_err(z, recorded["encode_sequential"]) <= 1e-4


def test_streaming_decode_is_the_whole_decode_less_the_first_three_frames(recorded, converted):
    """Two chunks of 3 latent frames, memory carried: upstream's frames from the 4th on (its
    demo drops the first 3 of a video), as uint8."""
    model = load_taehv(converted)
    stream = taehv.StreamingTAEHV(model, 1, (2, 3))
    lat = recorded["latents"]
    frames = np.concatenate([stream.push(lat[:, :3]), stream.push(lat[:, 3:])], axis=1)
    assert frames.shape == (1, 1 + 4 * 5, 16, 24, 3) and frames.dtype == np.uint8
    want = np.round(np.clip(np.moveaxis(recorded["decode_sequential"][:, 3:], 2, -1), 0, 1) * 255)
    assert np.abs(frames.astype(int) - want).max() <= 1


def test_converter_refuses_what_is_not_taehv(tmp_path):
    sd = taehv_names.random_checkpoint()
    sd.pop("decoder.8.weight")
    sd["decoder.99.weight"] = np.zeros(3, np.float32)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "bad.pth")
    r = run_main(convert.main, ["--src", str(tmp_path / "bad.pth"), "--dst", str(tmp_path / "o"), "--kind", "taehv"])
    assert r.returncode == 2 and "missing keys: decoder.8.weight" in r.stderr and "unknown keys: decoder.99.weight" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_generate_streams_through_taehv_and_continues_with_its_encoder(converted, tmp_path):
    """vae.kind=taehv: the mp4 has 1 + 4 (F - 1) frames, as with the Wan VAE; init_video of
    that mp4 is encoded by TAEHV's encoder (the latent model continues from it)."""
    import imageio.v2 as imageio

    first = tmp_path / "a.mp4"
    assert generate.main([*TINY, f"--config.vae.checkpoint={converted}", f"--config.output={first}"]) == 0
    frames = [f for f in imageio.get_reader(str(first), "ffmpeg")]
    assert len(frames) == 1 + 4 * 5 and frames[0].shape == (64, 64, 3)
    second = tmp_path / "b.mp4"
    assert generate.main([*TINY, f"--config.vae.checkpoint={converted}", f"--config.init_video={first}",
                          f"--config.output={second}", f"--config.save_latents={tmp_path / 'b.npz'}"]) == 0
    lat = np.load(tmp_path / "b.npz")["latents"]
    assert lat.shape == (1, 6 + 6, 16, 8, 8)  # 21 frames -> 6 latent frames given, 6 made


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SELF_FORCING_DIR"),
                    reason="set SELF_FORCING_DIR to a Self Forcing checkout to re-record upstream's TAEHV")
def test_recording_is_what_upstream_makes_now(recorded, tmp_path):
    r = run_tool("tools/record_upstream.py", "--upstream", os.environ["SELF_FORCING_DIR"], "--what", "taehv",
                 "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    again = np.load(tmp_path / "upstream_taehv.npz")
    for key in ("decode_parallel", "decode_sequential", "encode_parallel", "encode_sequential"):
        assert rel_err(again[key], recorded[key]) <= 1e-6, key


@pytest.mark.slow
def test_compare_decoders_scores_taehv_against_the_wan_vae(converted, tmp_path):
    """The PSNR tool's mechanics on random weights (the published ones cannot be fetched here)."""
    import json

    from pyramid_jax.models.vae import modeling as vae
    from pyramid_jax.weights.checkpoint import save_params
    from pyramid_jax.models.vae.params import random_vae_params

    vcfg = vae.VAEConfig(base_dim=16, num_res_blocks=1)
    save_params(str(tmp_path / "wan"), random_vae_params(vcfg), vcfg, kind="vae")
    r = run_tool("tools/compare_decoders.py", "--vae", str(tmp_path / "wan"), "--taehv", converted,
                 "--random-latents", "6", "--hw", "2x3", "--json", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    row = json.loads((tmp_path / "p.json").read_text())
    assert row["video_frames"] == 21 and row["size"] == "24x16" and np.isfinite(row["psnr_dB"])
    assert "PSNR" in r.stdout and "random normal latents" in r.stdout
