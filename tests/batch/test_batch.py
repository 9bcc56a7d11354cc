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

from conftest import REPO, run_main, run_tool

SMALL = ["--config.num_frames=6", "--config.height=64", "--config.width=64"]
LONG = " ".join(["word"] * 40)  # more tokens than the demo's text_len (32): invalid


def _records(out):
    return {f[:-5]: json.load(open(os.path.join(out, f))) for f in os.listdir(out)
            if f.endswith(".json") and f != "manifest.json"}


@pytest.mark.slow
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
    r = run_tool(*args, "--config.shift=3.0")  # another key: redone
    assert "2 to generate" in r.stdout
    assert (out / "ball.npz").stat().st_mtime_ns != before


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(prompts, out, extra=(), config="configs/tiny_random.py", frames=12):
    """Two hosts of a pod, as the pod command of docs/batch.md starts them (each in its own session,
    so a host can be killed whole)."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    size = SMALL[1:] if "tiny_random" in config else []
    return [subprocess.Popen([sys.executable, "-m", "pyramid_jax.batch", f"--config={config}", *size,
                              f"--config.num_frames={frames}", f"--prompts={prompts}", f"--out={out}",
                              f"--coordinator=127.0.0.1:{port}", "--num-processes=2", f"--process-id={i}",
                              "--heartbeat-timeout=5", "--shutdown-timeout=1",  # hosts must not rely on it
                              *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
            for i in range(2)]


def _wait(procs, timeout=300):
    """Exit codes and (stdout, stderr) of each host; every host's output is printed (shown when
    a test fails)."""
    outs = []
    for i, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        print(f"---- process {i} (exit {p.returncode}) ----\n{out}\n-- stderr --\n{err}")
        outs.append((out, err))
    return [p.returncode for p in procs], outs


def _check_complete(out, valid_names, invalid_name):
    files = os.listdir(out)
    assert not [f for f in files if f.startswith(".partial")], files
    assert sorted(f[:-4] for f in files if f.endswith(".npz")) == sorted(valid_names)
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {e["name"]: e for e in manifest["prompts"]}
    assert all(by_name[n]["status"] == "ok" for n in valid_names)
    assert by_name[invalid_name]["status"] == "error" and "too long" in by_name[invalid_name]["error"]


def _host_records(out):
    return {n: r for n, r in _records(out).items() if r.get("status") == "ok"}


def _kill_host_when(out, procs, victim, host_with_a_record):
    deadline = time.time() + 240
    while time.time() < deadline and not any(
            json.load(open(out / f)).get("host") == host_with_a_record
            for f in (os.listdir(out) if out.exists() else []) if f.endswith(".json") and f[0] != "m"):
        time.sleep(0.05)
    os.killpg(procs[victim].pid, signal.SIGKILL)  # the whole host: it has more prompts to do


def _one_clean_line(err):
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Check failure" not in err and "@ 0x" not in err and "Terminating" not in err
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker dies", "coordinator dies"])
def test_two_processes_kill_and_rerun(tmp_path, victim):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(["a red ball", "a blue cube", LONG, "a green cone", "a star", "a ring"]) + "\n")
    valid = ["00000", "00001", "00003", "00004", "00005"]

    if victim == 1:  # once: a clean two-host run
        out = tmp_path / "run1"
        codes, _ = _wait(_launch(prompts, out))
        assert codes == [1, 0]  # the invalid prompt (index 2) is process 0's
        _check_complete(out, valid, "00002")
        recs = _records(out)
        assert {recs[n]["host"] for n in valid} == {0, 1}  # split by process index

    out = tmp_path / "run2"
    procs = _launch(prompts, out)
    start = time.time()
    _kill_host_when(out, procs, victim, host_with_a_record=victim)
    codes, outs = _wait(procs, timeout=120)
    survivor = 1 - victim
    assert codes[survivor] == 3, codes  # one clear line, no abort, no C++ trace
    assert "lost the other hosts" in _one_clean_line(outs[survivor][1]) or "gone" in outs[survivor][1]
    assert time.time() - start < 200  # bounded: the heartbeat timeout (5 s) and the barrier
    assert len(_host_records(out)) < len(valid)

    codes, _ = _wait(_launch(prompts, out))
    assert codes == [1, 0]
    _check_complete(out, valid, "00002")


@pytest.mark.slow
def test_two_processes_restore_the_demo_checkpoint_like_one(tmp_path):
    """The pod command of docs/batch.md with a checkpoint config: both hosts restore assets/demo and the
    outputs equal a single-process run bit for bit."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle bouncing left to right on a blue striped background\n"
                       "a yellow square bouncing upwards on a green checkered background\n")
    out2 = tmp_path / "two"
    codes, outs = _wait(_launch(prompts, out2, config="configs/demo.py", frames=6))
    assert codes == [0, 0], outs
    assert "summary" in outs[0][0] and "video frames/s" in outs[0][0]
    r = run_tool("-m", "pyramid_jax.batch", "--config=configs/demo.py", "--config.num_frames=6",
                 f"--prompts={prompts}", f"--out={tmp_path / 'one'}")
    assert r.returncode == 0, r.stderr
    for name in ("00000", "00001"):
        a = np.load(out2 / f"{name}.npz")["latents"]
        b = np.load(tmp_path / "one" / f"{name}.npz")["latents"]
        assert a.shape == (1, 6, 3, 64, 64) and np.array_equal(a, b)
        assert media_frames(out2 / f"{name}.mp4") == 6
    assert {_records(out2)[n]["host"] for n in ("00000", "00001")} == {0, 1}


def media_frames(path):
    from pyramid_jax.media import count_frames

    return count_frames(str(path))


def _small_batch(tmp_path, out, *extra):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball\na blue cube\n")
    return run_tool("-m", "pyramid_jax.batch", "--config=configs/tiny_random.py", *SMALL, f"--prompts={prompts}",
                    f"--out={out}", *extra)


@pytest.mark.slow
def test_resume_redoes_damaged_and_stale_outputs(tmp_path):
    out = tmp_path / "out"
    r = _small_batch(tmp_path, out)
    assert r.returncode == 0, r.stderr
    assert media_frames(out / "00000.mp4") == 1 + 4 * 5  # a video per prompt (VAE-decoded)
    assert "summary: 2 generated" in r.stdout and "ETA" in r.stdout
    data = (out / "00000.npz").read_bytes()
    (out / "00000.npz").write_bytes(data[: len(data) // 2])  # truncated: not done
    video = (out / "00001.mp4").read_bytes()
    (out / "00001.mp4").write_bytes(video[: len(video) // 3])
    (out / ".partial-manifest.json-abc.tmp").write_text("{")  # a killed manifest write
    r = _small_batch(tmp_path, out)
    assert r.returncode == 0 and "0 done already" in r.stdout and "2 to generate" in r.stdout, r.stdout
    assert not [f for f in os.listdir(out) if f.startswith(".partial")]
    assert np.load(out / "00000.npz")["latents"].shape == (1, 6, 16, 8, 8)
    r = _small_batch(tmp_path, out)
    assert "2 done already" in r.stdout
    r = _small_batch(tmp_path, out, "--config.num_frames=9")  # another length: redone
    assert "2 to generate" in r.stdout
    assert np.load(out / "00000.npz")["latents"].shape == (1, 9, 16, 8, 8)


def test_stray_arguments_are_refused(tmp_path):
    from pyramid_jax.cli import batch, generate

    r = run_main(batch.main, ["--config=configs/tiny_random.py", "--prompts=p.txt", f"--out={tmp_path / 'o'}",
                              "b.npz"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "b.npz" in r.stderr
    r = run_main(generate.main, ["--config=configs/tiny_random.py", f"--config.save_latents={tmp_path}/a", "b.npz"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "b.npz" in r.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_prompt_schedule_switches_every_video(tmp_path):
    """--config.prompt_schedule in batch: each line's prompt opens its video and the schedule's
    switch applies to all; a batch video equals generate's with the same schedule, and the
    schedule is part of the resume key."""
    out = tmp_path / "out"
    r = _small_batch(tmp_path, out, "--config.prompt_schedule=3:it starts to rain")
    assert r.returncode == 0, r.stderr
    gen = tmp_path / "g.npz"
    r = run_tool("-m", "pyramid_jax.generate", "--config=configs/tiny_random.py", *SMALL, "--config.prompt=a blue cube",
                 "--config.seed=1", "--config.prompt_schedule=3:it starts to rain", "--config.output=",
                 f"--config.save_latents={gen}")
    assert r.returncode == 0, r.stderr
    record = _records(out)["00001"]
    assert record["seed"] == 1 and record["prompt"] == "a blue cube", record
    np.testing.assert_allclose(np.load(out / "00001.npz")["latents"], np.load(gen)["latents"], atol=1e-5)
    r = _small_batch(tmp_path, out)  # no schedule: another output, redone
    assert "2 to generate" in r.stdout, r.stdout
