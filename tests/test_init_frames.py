"""Continuing a video or starting from an image: init_video / init_image through generate."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_tool
from pyramid_jax import generate, media

TINY = ["--config=configs/tiny_random.py", "--config.height=64", "--config.width=64", "--config.num_frames=3"]


def _frames(n, h=48, w=80, seed=0):
    """A moving gradient, uint8 [n, h, w, 3]."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(x * 3 + 9 * t) % 256, (y * 5) % 256, np.full_like(x, 40 * seed)], -1)
                     for t in range(n)]).astype(np.uint8)


def _run(tmp_path, *args):
    out = tmp_path / "v.mp4"
    code = generate.main(["generate", *TINY, f"--config.output={out}", *args])
    return code, out


def _count(path):
    import imageio.v2 as imageio

    return sum(1 for _ in imageio.get_reader(str(path), "ffmpeg"))


@pytest.mark.slow
def test_continue_a_video_and_start_from_an_image(tmp_path):
    """A 13-frame mp4 (wider than the config: resized and centre-cropped) encodes to 4 latent
    frames, of which the last 3 (one chunk) are continued: the mp4 holds their 9 decoded frames
    and the 12 made after them; init_in_output=False leaves the given ones out. An image is a
    still clip of one chunk."""
    src = tmp_path / "given.mp4"
    media.write_mp4(str(src), _frames(13), fps=16)
    code, out = _run(tmp_path, f"--config.init_video={src}")
    assert code == 0
    lat = np.load(tmp_path / "v.npz")["latents"]
    assert lat.shape == (1, 6, 16, 8, 8) and np.isfinite(lat).all()
    assert _count(out) == 1 + 4 * 5
    code, out = _run(tmp_path, f"--config.init_video={src}", "--config.init_in_output=False")
    assert code == 0 and _count(out) == 12
    from PIL import Image

    Image.fromarray(_frames(1)[0]).save(tmp_path / "still.png")
    code, out = _run(tmp_path, f"--config.init_image={tmp_path / 'still.png'}")
    assert code == 0 and np.load(tmp_path / "v.npz")["latents"].shape[1] == 6


@pytest.mark.slow
def test_latents_npz_continues_and_the_replay_file_carries_them(tmp_path):
    """Latents written by one run continue in another; its save_replay holds them as
    initial_latent, and replaying that file gives the same latents."""
    first = tmp_path / "first.npz"
    assert generate.main(["generate", *TINY, "--config.output=", f"--config.save_latents={first}"]) == 0
    code, _ = _run(tmp_path, f"--config.init_video={first}", f"--config.save_replay={tmp_path / 'r.npz'}")
    assert code == 0
    made = np.load(tmp_path / "v.npz")["latents"]
    np.testing.assert_array_equal(made[:, :3], np.load(first)["latents"])
    replay = np.load(tmp_path / "r.npz")
    assert replay["initial_latent"].shape == (1, 3, 16, 8, 8)
    again = tmp_path / "again.npz"
    assert generate.main(["generate", *TINY, "--config.output=", f"--config.replay={tmp_path / 'r.npz'}",
                          f"--config.save_latents={again}"]) == 0
    np.testing.assert_array_equal(np.load(again)["latents"], made)


def _bad_files(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    media.write_mp4(str(tmp_path / "short.mp4"), _frames(5), fps=16)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.zeros((8, 8), np.uint16) + 300).save(tmp_path / "deep.png")
    np.savez(tmp_path / "wrong.npz", latents=np.zeros((1, 3, 4, 8, 8), np.float32))


@pytest.mark.parametrize("args,want", [
    (["--config.init_video=DIR/nope.mp4"], "no such file"),
    (["--config.init_video=DIR/empty.mp4"], "is empty"),
    (["--config.init_video=DIR/junk.mp4"], "not a readable video"),
    (["--config.init_video=DIR/short.mp4"], "one chunk needs at least 9"),
    (["--config.init_image=DIR/alpha.png"], "alpha channel"),
    (["--config.init_image=DIR/deep.png"], "16 bits"),
    (["--config.init_video=DIR/wrong.npz"], "this model and size need [B, F, 16, 8, 8]"),
    (["--config.init_video=DIR/short.mp4", "--config.init_image=DIR/alpha.png"], "both set"),
])
def test_bad_given_frames_one_line(tmp_path, args, want):
    _bad_files(tmp_path)
    args = [a.replace("DIR", str(tmp_path)) for a in args]
    r = run_tool("-m", "pyramid_jax.generate", *TINY, f"--config.output={tmp_path / 'x.mp4'}", *args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and want in lines[0], r.stderr
    assert "random weights" not in r.stdout  # refused before any model loads
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.npz").exists()
