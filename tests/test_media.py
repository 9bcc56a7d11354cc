"""pyramid_jax.media: latent previews (normalisation, channel use, strides), the atomic writers
(text, bytes, npz, mp4: a temporary `.partial-` name renamed into place, nothing left behind
on failure) and mp4 round trips through the bundled ffmpeg."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from pyramid_jax import media

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
# ffmpeg runs as a subprocess; JAX (when another test module has loaded it) warns about any fork
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(media.PARTIAL))


def read_mp4(path):
    """(fps, frames [N, H, W, 3] uint8) decoded by ffmpeg."""
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta["fps"], np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen])


def solid(n, h, w, rgb):
    frames = np.empty((n, h, w, 3), np.uint8)
    frames[:] = rgb
    return frames


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


# -- latent_preview ------------------------------------------------------------------------------


def test_latent_preview_shape_and_strides():
    lat = np.random.default_rng(0).standard_normal((2, 4, 3, 5)).astype(np.float32)
    out = media.latent_preview(lat)
    assert out.shape == (2 * 4, 3 * 8, 5 * 8, 3) and out.dtype == np.uint8
    # each latent frame held 4 frames, each latent pixel an 8 x 8 block
    for i in range(8):
        np.testing.assert_array_equal(out[i], out[(i // 4) * 4])
    blocks = out[::4].reshape(2, 3, 8, 5, 8, 3)
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
    assert media.latent_preview(lat, upscale=2, hold=1).shape == (2, 6, 10, 3)


def test_latent_preview_two_levels_become_black_and_white():
    # half the values -1, half +1: the 1st and 99th percentiles are -1 and +1
    lat = np.where(np.indices((1, 3, 4, 4)).sum(0) % 2, 1.0, -1.0).astype(np.float32)
    out = media.latent_preview(lat, upscale=1, hold=1)
    np.testing.assert_array_equal(out[0], np.where(lat[0].transpose(1, 2, 0) > 0, 255, 0))


def test_latent_preview_normalises_between_1st_and_99th_percentile():
    lat = np.arange(300, dtype=np.float32).reshape(1, 3, 10, 10)
    out = media.latent_preview(lat, upscale=1, hold=1)[0]
    lo, hi = 0.01 * 299, 0.99 * 299  # linear percentiles of 0..299
    assert out[0, 0, 0] == 0 and out[9, 9, 2] == 255  # beyond the percentiles: clipped
    assert out[5, 0, 1] == round((150 - lo) / (hi - lo) * 255)  # value 150: channel 1, row 5, col 0
    assert out[5, 0, 0] == round((50 - lo) / (hi - lo) * 255)


def test_latent_preview_uses_only_the_first_three_channels():
    lat = np.where(np.indices((2, 3, 2, 2)).sum(0) % 2, 0.5, -0.5).astype(np.float32)
    extra = np.concatenate([lat, np.full((2, 2, 2, 2), 1e6, np.float32)], axis=1)
    np.testing.assert_array_equal(media.latent_preview(extra), media.latent_preview(lat))


def test_latent_preview_with_fewer_channels_repeats_the_first():
    rng = np.random.default_rng(1)
    gray = media.latent_preview(rng.standard_normal((1, 1, 2, 3)), upscale=1, hold=1)
    assert np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 0] == gray[..., 2])
    two = media.latent_preview(rng.standard_normal((1, 2, 2, 3)), upscale=1, hold=1)
    np.testing.assert_array_equal(two[..., 2], two[..., 0])


def test_latent_preview_of_constant_latents_is_finite():
    out = media.latent_preview(np.full((1, 3, 2, 2), 7.0, np.float32), upscale=1, hold=1)
    np.testing.assert_array_equal(out, np.zeros((1, 2, 2, 3), np.uint8))


# -- write_text / write_bytes / save_npz ---------------------------------------------------------


def test_write_text_replaces_the_file_whole(tmp_path, umask_027):
    path = tmp_path / "notes" / "run.json"  # a missing directory is made
    media.write_text(str(path), "{}")
    media.write_text(str(path), '{"frames": 21}\n')
    assert path.read_text() == '{"frames": 21}\n'
    # the mode a plain open() would give under this umask, not mkstemp's 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert leftovers(path.parent) == []


def test_write_bytes_round_trip(tmp_path):
    data = bytes(range(256)) * 3
    media.write_bytes(str(tmp_path / "blob.bin"), data)
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["blob.bin"]


def test_write_bytes_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        media.write_bytes(str(path), "not bytes")  # fails inside the write
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_write_text_onto_a_directory_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(OSError):
        media.write_text(str(target), "x")
    assert target.is_dir() and os.listdir(target) == []
    assert leftovers(tmp_path) == []


def test_save_npz_round_trip(tmp_path):
    path = tmp_path / "latents.data"  # any name: np.savez must not add .npz to it
    lat = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    media.save_npz(str(path), latents=lat, seed=np.int64(7))
    assert sorted(os.listdir(tmp_path)) == ["latents.data"]
    with np.load(path) as data:
        assert sorted(data.files) == ["latents", "seed"]
        np.testing.assert_array_equal(data["latents"], lat)
        assert data["latents"].dtype == np.float32 and int(data["seed"]) == 7


def test_save_npz_failure_keeps_the_old_file(tmp_path):
    class Unsaveable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("device lost")

    path = tmp_path / "latents.npz"
    np.savez(path, latents=np.ones(3))
    with pytest.raises(RuntimeError, match="device lost"):
        media.save_npz(str(path), latents=np.zeros(3), broken=Unsaveable())
    with np.load(path) as data:
        np.testing.assert_array_equal(data["latents"], np.ones(3))
    assert leftovers(tmp_path) == []


def test_write_png_of_an_array_and_of_a_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    media.write_png(str(tmp_path / "strip.png"), image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "strip.png")), image)
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    media.write_png(str(tmp_path / "plot.png"), fig, dpi=50)
    plt.close(fig)
    assert Image.open(tmp_path / "plot.png").size == (100, 50)
    assert sorted(os.listdir(tmp_path)) == ["plot.png", "strip.png"]


def test_write_png_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "strip.png"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        media.write_png(str(path), np.zeros((4, 4, 3), complex))  # PIL cannot encode it
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


# -- mp4 -----------------------------------------------------------------------------------------


def test_write_mp4_round_trip(tmp_path):
    path = tmp_path / "clip.mp4"
    media.write_mp4(str(path), solid(5, 16, 24, (200, 40, 90)), fps=8)
    fps, frames = read_mp4(path)
    assert fps == 8 and frames.shape == (5, 16, 24, 3)
    # H.264 in yuv420p is lossy: a flat colour comes back within a few levels
    np.testing.assert_allclose(frames.reshape(-1, 3).mean(0), (200, 40, 90), atol=4)
    assert media.count_frames(str(path)) == 5
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]


def test_mp4_writer_streams_under_a_partial_name(tmp_path, umask_027):
    path = tmp_path / "stream.mp4"
    writer = media.Mp4Writer(str(path), fps=16)
    writer.write(solid(3, 8, 8, (0, 255, 0)))
    writer.write(solid(2, 8, 8, (0, 0, 255)))
    assert writer.frames == 5
    assert not path.exists()
    (partial,) = leftovers(tmp_path)
    assert partial.startswith(".partial-stream.mp4-") and partial.endswith(".mp4")
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["stream.mp4"]
    assert media.count_frames(str(path)) == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_mp4_writer_abort_leaves_nothing(tmp_path):
    writer = media.Mp4Writer(str(tmp_path / "a.mp4"))
    writer.write(solid(2, 8, 8, (9, 9, 9)))
    writer.abort()
    assert os.listdir(tmp_path) == []
    writer.abort()  # a second abort (or one before any write) is harmless
    media.Mp4Writer(str(tmp_path / "b.mp4")).abort()
    assert os.listdir(tmp_path) == []


def test_mp4_writer_closed_without_frames_writes_nothing(tmp_path):
    media.Mp4Writer(str(tmp_path / "empty.mp4")).close()
    assert os.listdir(tmp_path) == []


def test_mp4_writer_context_aborts_on_error_and_keeps_the_old_video(tmp_path):
    path = tmp_path / "video.mp4"
    media.write_mp4(str(path), solid(4, 8, 8, (1, 2, 3)))
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with media.Mp4Writer(str(path)) as writer:
            writer.write(solid(2, 8, 8, (200, 200, 200)))
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_count_frames_of_missing_or_broken_files(tmp_path):
    assert media.count_frames(str(tmp_path / "missing.mp4")) == -1
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video" * 100)
    assert media.count_frames(str(tmp_path / "junk.mp4")) == -1


def test_write_mp4_of_odd_sized_frames_fails_cleanly_or_writes_a_video(tmp_path):
    path = tmp_path / "odd.mp4"
    try:
        media.write_mp4(str(path), solid(3, 7, 9, (50, 100, 150)))
    except Exception:
        assert os.listdir(tmp_path) == []  # refused: nothing half-written
    else:
        assert media.count_frames(str(path)) == 3


def test_mp4_writer_failed_rename_leaves_nothing(tmp_path):
    (tmp_path / "taken.mp4").mkdir()  # a directory where the video should go
    with pytest.raises(OSError):
        media.write_mp4(str(tmp_path / "taken.mp4"), solid(2, 8, 8, (5, 5, 5)))
    assert leftovers(tmp_path) == []
