"""Continuing a video or starting from an image: init_video / init_image through generate."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_main, run_tool
from pyramid_jax import media
from pyramid_jax.cli import generate

TINY = ["--config=configs/tiny_random.py", "--config.height=64", "--config.width=64", "--config.num_frames=3"]


def _frames(n, h=48, w=80, seed=0):
    """A moving gradient, uint8 [n, h, w, 3]."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(x * 3 + 9 * t) % 256, (y * 5) % 256, np.full_like(x, 40 * seed)], -1)
                     for t in range(n)]).astype(np.uint8)


def _run(tmp_path, *args):
    out = tmp_path / "v.mp4"
    code = generate.main([*TINY, f"--config.output={out}", *args])
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
    assert generate.main([*TINY, "--config.output=", f"--config.save_latents={first}"]) == 0
    code, _ = _run(tmp_path, f"--config.init_video={first}", f"--config.save_replay={tmp_path / 'r.npz'}")
    assert code == 0
    made = np.load(tmp_path / "v.npz")["latents"]
    np.testing.assert_array_equal(made[:, :3], np.load(first)["latents"])
    replay = np.load(tmp_path / "r.npz")
    assert replay["initial_latent"].shape == (1, 3, 16, 8, 8)
    again = tmp_path / "again.npz"
    assert generate.main([*TINY, "--config.output=", f"--config.replay={tmp_path / 'r.npz'}",
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
    r = run_main(generate.main, [*TINY, f"--config.output={tmp_path / 'x.mp4'}", *args])
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and want in lines[0], r.stderr
    assert "random weights" not in r.stdout  # refused before any model loads
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_batch_lines_continue_their_own_frames_and_resume_on_their_content(tmp_path):
    """A jsonl line's init_image (relative to the prompts file) is continued by that prompt only;
    its content is part of the prompt's resume key; a bad one fails that line alone."""
    import json

    from PIL import Image

    Image.fromarray(_frames(1)[0]).save(tmp_path / "still.png")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(e) for e in [
        {"prompt": "a red ball"}, {"prompt": "a blue cube", "init_image": "still.png"},
        {"prompt": "a green cone", "init_image": "missing.png"}]) + "\n")
    out = tmp_path / "out"
    args = ("-m", "pyramid_jax.batch", "--config=configs/tiny_random.py", "--config.num_frames=6",
            "--config.height=64", "--config.width=64", f"--prompts={prompts}", f"--out={out}")
    r = run_tool(*args)
    assert r.returncode == 1, r.stderr  # the missing image's line failed, the others are done
    recs = {n: json.load(open(out / f"{n}.json")) for n in ("00000", "00001", "00002")}
    assert recs["00000"]["status"] == "ok" and "init" not in recs["00000"]
    assert recs["00001"]["status"] == "ok" and recs["00001"]["given_frames"] == 3
    assert recs["00002"]["status"] == "error" and "no such file" in recs["00002"]["error"]
    assert np.load(out / "00001.npz")["latents"].shape == (1, 9, 16, 8, 8)
    assert np.load(out / "00000.npz")["latents"].shape == (1, 6, 16, 8, 8)
    assert _count(out / "00001.mp4") == 1 + 4 * 8
    r = run_tool(*args)
    assert "2 already done" in r.stdout, r.stdout
    Image.fromarray(_frames(1, seed=3)[0]).save(tmp_path / "still.png")  # new content: that line again
    r = run_tool(*args)
    assert "1 already done" in r.stdout and "summary: 1 generated" in r.stdout, r.stdout
