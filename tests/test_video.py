"""pyramid_jax.video: strides and frame counts per decoder kind, which decoder a config names and
loads (random ones included), output paths, the writability checks made before any compute,
and VideoSink writing (or leaving nothing) as chunks arrive."""

from __future__ import annotations

import logging
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

from pyramid_jax import media, video
from pyramid_jax.config import base_config
from pyramid_jax.spec import from_config
from pyramid_jax.errors import UserError
from pyramid_jax.models.taehv import modeling as taehv
from pyramid_jax.models.vae import modeling as vae_model

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
# ffmpeg runs as a subprocess; JAX warns about any fork
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

LATENT_DIT = SimpleNamespace(out_channels=4)  # the DiT config fields video.py reads


def config(kind="wan", checkpoint="", taehv_checkpoint="", **fields):
    """The run spec of the base config with these decoder settings and top-level fields."""
    c = base_config()
    c.vae.kind, c.vae.checkpoint, c.vae.taehv_checkpoint = kind, checkpoint, taehv_checkpoint
    c.dtype = "float32"
    for name, value in fields.items():
        c[name] = value
    return from_config(c)


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def read_mp4(path):
    """(fps, frames [N, H, W, 3] uint8) decoded by ffmpeg."""
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta["fps"], np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen])


# -- strides and frames --------------------------------------------------------------------------


@pytest.mark.parametrize("kind, want", [("wan", (4, 8)), ("taehv", (4, 8)), ("pixel", (1, 1))])
def test_strides(kind, want):
    assert video.strides(config(kind)) == want


@pytest.mark.parametrize("kind, latent, frames", [
    ("wan", 1, 1), ("wan", 2, 5), ("wan", 21, 81), ("taehv", 3, 9), ("pixel", 1, 1), ("pixel", 21, 21),
])
def test_video_frames(kind, latent, frames):
    # the Wan VAE's first latent frame decodes to one video frame, every later one to four
    assert video.video_frames(config(kind), latent) == frames


def test_pixel_frames_map_minus_one_to_one_onto_uint8():
    x0 = np.zeros((2, 1, 3, 2, 3), np.float32)  # [B, F, C, H, W]
    x0[0, 0, 0] = [[-1, 0, 1], [0.5, 2.0, -3.0]]
    x0[1, 0, 2] = 1.0
    out = video.PixelFrames().push(x0)
    assert out.shape == (2, 1, 2, 3, 3) and out.dtype == np.uint8
    # (x + 1) / 2 * 255, rounded, out-of-range clamped
    np.testing.assert_array_equal(out[0, 0, ..., 0], [[0, 128, 255], [191, 255, 0]])
    np.testing.assert_array_equal(out[0, 0, ..., 1], np.full((2, 3), 128))
    np.testing.assert_array_equal(out[1, 0, ..., 2], np.full((2, 3), 255))


# -- which decoder -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, ckpt, tae, want", [
    ("wan", "", "", {}),
    ("wan", "ck/vae", "", {"wan": "ck/vae"}),
    ("taehv", "ck/tae", "", {"taehv": "ck/tae"}),
    ("taehv", "ck/vae", "ck/tae", {"wan": "ck/vae", "taehv": "ck/tae"}),  # both: studio offers both
    ("wan", "ck/vae", "ck/tae", {"wan": "ck/vae", "taehv": "ck/tae"}),
    ("wan", "", "ck/tae", {"taehv": "ck/tae"}),
    ("pixel", "ck/vae", "ck/tae", {}),
])
def test_decoder_checkpoints(kind, ckpt, tae, want):
    assert video.decoder_checkpoints(config(kind, ckpt, tae)) == want


def test_load_decoder_of_a_kind_the_config_lacks():
    message = "no taehv decoder in this config (vae.checkpoint / vae.taehv_checkpoint)"
    with pytest.raises(UserError, match=exact(message)):
        video.load_decoder(config("wan", "ck/vae"), "taehv")


@pytest.mark.parametrize("kind", ["wan", "taehv"])
def test_load_decoder_from_a_directory_that_is_no_checkpoint(tmp_path, kind):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    name = "vae" if kind == "wan" else "taehv"
    with pytest.raises(UserError, match=rf"^{name} checkpoint .*ck' not found \(expected a directory written by "):
        video.load_decoder(config(kind, str(ckpt)), kind)


def test_load_video_weights_of_a_pixel_model():
    assert video.load_video_weights(config("pixel"), SimpleNamespace(out_channels=3)) is None
    with pytest.raises(UserError, match=exact("vae.kind=pixel needs a model with 3 (RGB) output channels, "
                                              "this one has 4")):
        video.load_video_weights(config("pixel"), LATENT_DIT)


def test_load_video_weights_without_a_vae_is_none():
    assert video.load_video_weights(config("wan"), LATENT_DIT) is None
    assert video.load_video_weights(config("taehv"), LATENT_DIT) is None


def test_load_video_weights_reports_a_bad_checkpoint(tmp_path):
    with pytest.raises(UserError, match=r"^vae checkpoint .*missing' not found"):
        video.load_video_weights(config("wan", str(tmp_path / "missing")), LATENT_DIT)


def test_random_taehv_is_announced(caplog):
    c = config("taehv").but(decoder=dict(random=True))
    with caplog.at_level(logging.WARNING, "pyramid_jax"):
        dec = video.load_video_weights(c, LATENT_DIT)
    assert isinstance(dec, taehv.TAEHV) and dec.cfg.latent_channels == 4
    assert "NO VAE CHECKPOINT: a random TAEHV" in caplog.text
    assert isinstance(video.video_decoder(c, 1, (2, 2), dec), taehv.StreamingTAEHV)


def test_random_wan_vae_is_announced(caplog):
    c = config("wan").but(decoder=dict(random=True, base_dim=8, num_res_blocks=1))
    with caplog.at_level(logging.WARNING, "pyramid_jax"):
        dec = video.load_video_weights(c, LATENT_DIT)
    assert isinstance(dec, vae_model.WanVAEDecoder) and dec.cfg.base_dim == 8 and dec.cfg.num_res_blocks == 1
    assert "NO VAE CHECKPOINT: a random VAE (base dim 8)" in caplog.text
    assert isinstance(video.video_decoder(c, 1, (2, 2), dec), vae_model.StreamingDecoder)


def test_video_decoder_without_weights():
    assert isinstance(video.video_decoder(config("pixel"), 2, (8, 8), None), video.PixelFrames)
    assert video.video_decoder(config("wan"), 2, (8, 8), None) is None


# -- paths and checks ----------------------------------------------------------------------------


def test_output_paths():
    assert video.output_paths("out/v.mp4", 1) == ["out/v.mp4"]
    assert video.output_paths("out.d/v.mp4", 3) == ["out.d/v_0.mp4", "out.d/v_1.mp4", "out.d/v_2.mp4"]
    assert video.output_paths("out.d/v", 2) == ["out.d/v_0", "out.d/v_1"]


def test_latents_path():
    assert video.latents_path(config(output="runs/a.mp4")) == "runs/a.npz"
    assert video.latents_path(config(output="runs/a.mp4", save_latents="l/x.npz")) == "l/x.npz"
    assert video.latents_path(config(output="")) == ""


def test_check_writable_makes_the_missing_directory(tmp_path):
    path = tmp_path / "a" / "b" / "v.mp4"
    video.check_writable(str(path), "output")
    assert (tmp_path / "a" / "b").is_dir() and os.listdir(tmp_path / "a" / "b") == []  # no probe left
    assert not path.exists()


def test_check_writable_refuses_a_directory(tmp_path):
    path = str(tmp_path)
    with pytest.raises(UserError, match=exact(f"output {path!r} cannot be written: is a directory: {path}")):
        video.check_writable(path, "output")


def test_check_writable_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    path = str(tmp_path / "f" / "sub" / "v.mp4")
    with pytest.raises(UserError, match=exact(f"--out {path!r} cannot be written: Not a directory: {tmp_path / 'f'}")):
        video.check_writable(path, "--out")
    assert (tmp_path / "f").read_text() == "x"


def test_check_writable_refuses_a_path_ending_in_a_separator(tmp_path):
    path = str(tmp_path / "outputs") + os.sep  # e.g. --config.output=outputs/
    with pytest.raises(UserError, match=r"^output .* cannot be written"):
        video.check_writable(path, "output")


def test_check_outputs_checks_every_file_a_generation_writes(tmp_path):
    video.check_outputs(config(output=str(tmp_path / "v.mp4"), save_replay=str(tmp_path / "r" / "replay.npz")))
    assert (tmp_path / "r").is_dir()
    (tmp_path / "v.npz").mkdir()  # where the latents would go beside the mp4
    with pytest.raises(UserError, match=r"^save_latents .*v\.npz' cannot be written: is a directory"):
        video.check_outputs(config(output=str(tmp_path / "v.mp4")))
    with pytest.raises(UserError, match=r"^save_replay "):
        video.check_outputs(config(output="", save_replay=str(tmp_path / "v.npz")))
    video.check_outputs(config(output=""))  # nothing to write, nothing to check


# -- VideoSink -----------------------------------------------------------------------------------


def chunk(batch, frames, values):
    """x0 [B, F, 3, 8, 8]: sample b's frames a flat grey of values[b] (in [-1, 1])."""
    x0 = np.empty((batch, frames, 3, 8, 8), np.float32)
    x0[:] = np.asarray(values, np.float32)[:, None, None, None, None]
    return x0


def test_video_sink_writes_pushed_chunks(tmp_path):
    c = config("pixel", fps=8)
    paths = video.output_paths(str(tmp_path / "v.mp4"), 2)
    sink = video.VideoSink(c, paths, video.PixelFrames())
    sink.push(chunk(2, 3, [-1.0, 1.0]))
    sink.push(chunk(2, 3, [0.0, 0.0]), write=False)  # decoded, not written
    sink.push(chunk(2, 1, [-1.0, 1.0]))
    assert not any(os.path.exists(p) for p in paths)  # only partial files until close
    sink.close(None)
    assert sorted(os.listdir(tmp_path)) == ["v_0.mp4", "v_1.mp4"]
    for path, level in zip(paths, (0, 255)):
        assert media.count_frames(path) == 4
        _, frames = read_mp4(path)
        assert abs(frames.mean() - level) < 4


def test_video_sink_abort_leaves_nothing(tmp_path):
    paths = video.output_paths(str(tmp_path / "v.mp4"), 2)
    sink = video.VideoSink(config("pixel"), paths, video.PixelFrames())
    sink.push(chunk(2, 3, [0.5, -0.5]))
    sink.abort()
    assert os.listdir(tmp_path) == []


def test_video_sink_without_decoder_writes_latent_previews(tmp_path):
    paths = video.output_paths(str(tmp_path / "v.mp4"), 2)
    sink = video.VideoSink(config("wan"), paths, None)
    sink.push(np.zeros((2, 3, 4, 2, 2), np.float32))  # nothing to decode into
    assert os.listdir(tmp_path) == []
    latents = np.random.default_rng(0).standard_normal((2, 3, 4, 2, 2)).astype(np.float32)  # [B, F, C, h, w]
    sink.close(latents)
    for path in paths:
        _, frames = read_mp4(path)
        assert frames.shape == (3 * 4, 2 * 8, 2 * 8, 3)  # each latent frame held 4, upscaled 8x
