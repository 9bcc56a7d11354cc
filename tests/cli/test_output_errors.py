"""Outputs that cannot be written, in both CLIs: one line, exit code 2, nothing half-written.

Checked before any compute where the path itself is the problem (its parent is a file, a
read-only directory); a disk that fills up while writing is found while writing, and what
was being written goes.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from conftest import REPO

GENERATE = ["-m", "pyramid_jax.generate", "--config=configs/tiny_random.py", "--config.num_frames=6",
            "--config.height=64", "--config.width=64"]


def _run(args, fsize_limit=None):
    def limit():  # the fallback "full disk": files cannot grow past the limit (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, preexec_fn=limit if fsize_limit else None)


def _batch(tmp_path, out):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball\na blue cube\n")
    return ["-m", "pyramid_jax.batch", "--config=configs/tiny_random.py", "--config.num_frames=6",
            "--config.height=64", "--config.width=64", f"--prompts={prompts}", f"--out={out}"]


def _mount_tmpfs(path, options):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """(directory, fsize limit): a 16 KiB tmpfs (the latents of one prompt need 24 KiB), or (no mount rights) a file-size limit."""
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "size=16k")
    yield disk, None if mounted else 16 * 1024
    if mounted:
        subprocess.run(["umount", str(disk)])


@pytest.fixture
def read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    mounted = _mount_tmpfs(ro, "ro,size=16k")
    if not mounted:
        os.chmod(ro, 0o555)
        if os.access(ro, os.W_OK):  # root without mount rights: nothing is read-only to us
            pytest.skip("cannot make a read-only directory here")
    yield ro
    if mounted:
        subprocess.run(["umount", str(ro)])


def _one_line(r, want):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and want in lines[0], (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr


def test_parent_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    r = _run([*GENERATE, f"--config.output={tmp_path}/f/v.mp4"])
    _one_line(r, "Not a directory")
    assert "chunk" not in r.stdout  # refused before loading anything
    r = _run(_batch(tmp_path, tmp_path / "f" / "out"))
    _one_line(r, "Not a directory")


def test_read_only_directory(tmp_path, read_only_dir):
    r = _run([*GENERATE, f"--config.output={read_only_dir}/v.mp4"])
    _one_line(r, "cannot be written")
    assert "chunk" not in r.stdout
    r = _run(_batch(tmp_path, read_only_dir / "out"))
    _one_line(r, "cannot be written")


@pytest.mark.slow
def test_disk_full_while_writing(tmp_path, small_disk):
    disk, fsize = small_disk
    r = _run([*GENERATE, f"--config.output={disk}/v.mp4"], fsize)
    _one_line(r, "writing the outputs failed")
    assert os.listdir(disk) == []  # no partial mp4 or npz left
    r = _run(_batch(tmp_path, disk / "out"), fsize)
    _one_line(r, "failed")
    assert not [f for f in os.listdir(disk / "out") if f.startswith(".partial")]
    assert not [f for f in os.listdir(disk / "out") if f.endswith((".npz", ".mp4"))]
