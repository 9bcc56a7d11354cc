"""pyramid_jax.batch: records, manifest, resume; two jax.distributed processes; SIGKILL + rerun."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_tool

SMALL = ["--config.num_frames=6", "--config.height=64", "--config.width=64"]
LONG = " ".join(["word"] * 40)  # more tokens than the demo's text_len (32): invalid


def _records(out):
    return {f[:-5]: json.load(open(os.path.join(out, f))) for f in os.listdir(out)
            if f.endswith(".json") and f != "manifest.json"}


def test_single_process_records_and_resume(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join([
        json.dumps({"prompt": "a red ball", "seed": 3, "name": "ball"}),
        json.dumps({"prompt": ""}),
        json.dumps({"prompt": "a cube", "seed": -2}),
        "not json",
        json.dumps({"prompt": "a cone", "num_frames": 3}),
    ]) + "\n")
    out = tmp_path / "out"
    args = ["-m", "pyramid_jax.batch", "--config=configs/tiny_random.py", *SMALL, f"--prompts={prompts}", f"--out={out}"]
    r = run_tool(*args)
    assert r.returncode == 1, r.stderr  # some prompts failed
    recs = _records(out)
    assert recs["ball"]["status"] == "ok" and recs["ball"]["seed"] == 3 and recs["00004"]["status"] == "ok"
    assert recs["00001"]["error"] == "empty prompt" and "bad seed" in recs["00002"]["error"]
    assert "not a JSON object" in recs["00003"]["error"]
    assert np.load(out / "ball.npz")["latents"].shape == (1, 6, 16, 8, 8)
    assert np.load(out / "00004.npz")["latents"].shape == (1, 3, 16, 8, 8)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 2, "error": 3, "pending": 0}
    before = (out / "ball.npz").stat().st_mtime_ns

    r = run_tool(*args)  # resume: nothing valid is redone
    assert "2 done already" in r.stdout and "0 to generate" in r.stdout
    assert (out / "ball.npz").stat().st_mtime_ns == before
    r = run_tool(*args, "--config.shift=3.0")  # another config hash: redone
    assert "2 to generate" in r.stdout
    assert (out / "ball.npz").stat().st_mtime_ns != before


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(prompts, out, extra=()):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return [subprocess.Popen([sys.executable, "-m", "pyramid_jax.batch", "--config=configs/tiny_random.py",
                              "--config.num_frames=30", f"--prompts={prompts}", f"--out={out}",
                              f"--coordinator=127.0.0.1:{port}", "--num-processes=2", f"--process-id={i}",
                              "--heartbeat-timeout=5", "--shutdown-timeout=1",  # hosts must not rely on it
                              *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
            for i in range(2)]


def _wait(procs, timeout=300):
    for i, p in enumerate(procs):
        try:
            output, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            output, _ = p.communicate()
        print(f"---- process {i} (exit {p.returncode}) ----\n{output}")  # shown when the test fails
    return [p.returncode for p in procs]


def _check_complete(out, valid_names, invalid_name):
    files = os.listdir(out)
    assert not [f for f in files if f.startswith(".partial")], files
    assert sorted(f[:-4] for f in files if f.endswith(".npz")) == sorted(valid_names)
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {e["name"]: e for e in manifest["prompts"]}
    assert all(by_name[n]["status"] == "ok" for n in valid_names)
    assert by_name[invalid_name]["status"] == "error" and "too long" in by_name[invalid_name]["error"]


@pytest.mark.slow
def test_two_processes_kill_and_rerun(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(["a red ball", "a blue cube", LONG, "a green cone", "a star", "a ring"]) + "\n")
    valid = ["00000", "00001", "00003", "00004", "00005"]

    out = tmp_path / "run1"
    codes = _wait(_launch(prompts, out))
    assert codes == [1, 0]  # the invalid prompt (index 2) is process 0's
    _check_complete(out, valid, "00002")
    recs = _records(out)
    assert {recs[n]["host"] for n in valid} == {0, 1}  # split by process index

    out = tmp_path / "run2"
    procs = _launch(prompts, out)
    deadline = time.time() + 240
    while time.time() < deadline and not any(
            json.load(open(out / f)).get("host") == 1
            for f in (os.listdir(out) if out.exists() else []) if f.endswith(".json") and f[0] != "m"):
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)  # mid-run: it has more prompts to do
    _wait(procs, timeout=120)
    assert len([f for f in os.listdir(out) if f.endswith(".npz")]) < len(valid)

    _wait(_launch(prompts, out))
    _check_complete(out, valid, "00002")
