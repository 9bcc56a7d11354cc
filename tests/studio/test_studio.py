"""The studio (python -m pyramid_jax.serve): the app over its WebSocket, and the page in a real
browser (headless Chromium driven by Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest

from conftest import REPO, run_tool

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pyramid_jax.cache.head_map import load_head_map  # noqa: E402
from pyramid_jax.cli import serve  # noqa: E402
from pyramid_jax.config import parse_spec  # noqa: E402
from pyramid_jax.media import count_frames  # noqa: E402
from pyramid_jax.studio.app import create_app  # noqa: E402
from pyramid_jax.studio.session import Studio  # noqa: E402

# The shipped demo model, two denoising steps: quick chunks for tests (the README's picture,
# made with STUDIO_SCREENSHOT=FILE, uses the demo's own steps).
FAST = [] if os.environ.get("STUDIO_SCREENSHOT") else ["--config.denoising_step_list=(1000, 500)"]
PROMPT_A = "a black square bouncing left to right with 2 other shapes on a blue speckled background"
PROMPT_B = "a green triangle bouncing upwards with 2 other shapes on a black speckled background"


def demo_config(*overrides):
    return parse_spec(["serve", "--config=configs/demo.py", *FAST, *overrides])


@pytest.fixture(scope="module")
def models():
    return serve.load_models(demo_config())


def receive_until(ws, done, limit=2000):
    """Messages from the socket until done(msg) (JSON dicts; frames as bytes)."""
    seen = []
    for _ in range(limit):
        m = ws.receive()
        msg = m["bytes"] if m.get("bytes") is not None else json.loads(m["text"])
        seen.append(msg)
        if done(msg):
            return seen
    raise AssertionError(f"not done after {limit} messages")


def is_state(*states):
    return lambda m: isinstance(m, dict) and m.get("type") == "status" and m.get("state") in states


def test_serve_generates_streams_and_gives_the_mp4(models, tmp_path):
    """A start streams JPEG frames, a status per chunk and a cache picture; the mp4 so far
    downloads with every frame."""
    c = demo_config("--config.num_frames=9")
    with TestClient(create_app(c, models)) as client, client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        # forcing_kv needs a static / dynamic head map, which the demo config does not name
        assert hello["type"] == "hello" and set(hello["policies"]) == {"window", "deep_sink", "pyramid",
                                                                         "dummy_forcing"}
        ws.send_text(json.dumps(dict(op="start", prompt=PROMPT_A, seed=3, policy="pyramid")))
        seen = receive_until(ws, is_state("done", "error"))
        assert seen[-1]["state"] == "done", seen[-1]
        frames = [m for m in seen if isinstance(m, bytes)]
        assert len(frames) == 9 and all(f[:2] == b"\xff\xd8" for f in frames)  # JPEG
        chunks = [m["chunk"] for m in seen if is_state("running")(m) and "chunk" in m]
        assert chunks[-1] == 3 and seen[-1]["fps"] > 0
        pictures = [m for m in seen if isinstance(m, dict) and m["type"] == "cache"]
        assert [p["chunk"] for p in pictures] == [0, 1, 2]
        assert {r["type"] for r in pictures[-1]["rows"]} <= {"Wave", "Anchor", "Veil"}
        r = client.get("/video.mp4")
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    (tmp_path / "s.mp4").write_bytes(r.content)
    assert count_frames(str(tmp_path / "s.mp4")) == 9


@pytest.mark.slow
def test_decoder_choice_where_the_config_names_both(tmp_path):
    """A latent model whose config names a Wan VAE and a TAEHV: the page is offered both, and a
    run decodes with the one it asks for (the same frame count); an unknown one is a message."""
    from pyramid_jax.models.taehv import modeling as taehv
    from pyramid_jax.models.vae import modeling as vae
    from pyramid_jax.models.taehv import params as taehv_names
    from pyramid_jax.weights.checkpoint import save_params
    from pyramid_jax.models.vae.params import random_vae_params

    vcfg, tcfg = vae.VAEConfig(base_dim=16, num_res_blocks=1), taehv.TAEHVConfig()
    save_params(str(tmp_path / "wan"), random_vae_params(vcfg), vcfg, kind="vae")
    save_params(str(tmp_path / "taehv"), taehv_names.params(taehv_names.random_checkpoint(tcfg), tcfg), tcfg,
                kind="taehv")
    c = parse_spec(["serve", "--config=configs/tiny_random.py", "--config.vae.random=False",
                      f"--config.vae.checkpoint={tmp_path / 'wan'}", f"--config.vae.taehv_checkpoint={tmp_path / 'taehv'}",
                      "--config.num_frames=3", "--config.height=64", "--config.width=64"])
    with TestClient(create_app(c, serve.load_models(c))) as client, client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["decoders"] == ["wan", "taehv"] and hello["decoder"] == "wan"
        for decoder in ("taehv", "wan"):
            ws.send_text(json.dumps(dict(op="start", prompt="a red circle", seed=1, decoder=decoder)))
            seen = receive_until(ws, is_state("done", "error"))
            assert seen[-1]["state"] == "done" and seen[-1]["decoder"] == decoder, seen[-1]
            assert len([m for m in seen if isinstance(m, bytes)]) == 1 + 4 * 2
        ws.send_text(json.dumps(dict(op="start", prompt="a red circle", seed=1, decoder="vqgan")))
        assert "unknown decoder 'vqgan'; this config has wan, taehv" in ws.receive_json()["message"]


def _png(mode="RGB") -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((48, 80, len(mode)), 200, np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def test_continue_the_video_and_start_from_a_given_image(models, tmp_path):
    """continue: a new generation after the current video's frames (shown first, the same
    frames); an uploaded image starts one; a bad upload is one line and a 400."""
    c = demo_config("--config.num_frames=6")
    with TestClient(create_app(c, models)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps(dict(op="continue", prompt=PROMPT_A)))
        assert "nothing to continue" in ws.receive_json()["message"]
        ws.send_text(json.dumps(dict(op="start", prompt=PROMPT_A, seed=1, given=True)))
        assert "no image or video given" in ws.receive_json()["message"]
        ws.send_text(json.dumps(dict(op="start", prompt=PROMPT_A, seed=1)))
        first = [m for m in receive_until(ws, is_state("done", "error")) if isinstance(m, bytes)]
        ws.send_text(json.dumps(dict(op="continue", prompt=PROMPT_B, seed=2)))
        seen = receive_until(ws, is_state("done", "error"))
        assert seen[-1]["state"] == "done" and seen[-1]["given"] == 6, seen[-1]
        frames = [m for m in seen if isinstance(m, bytes)]
        assert len(frames) == 12 and frames[:6] == first
        for name, data, want in (("a.png", _png("RGBA"), "alpha channel"), ("notes.txt", b"hi", "not an image"),
                                 ("e.png", b"", "is empty")):
            r = client.post(f"/given?name={name}", content=data)
            assert r.status_code == 400 and want in r.json()["error"], r.text
        r = client.post("/given?name=still.png", content=_png())
        assert r.status_code == 200 and r.json()["frames"] == 3, r.text
        ws.send_text(json.dumps(dict(op="start", prompt=PROMPT_A, seed=1, given=True)))
        seen = receive_until(ws, is_state("done", "error"))
        assert seen[-1]["given"] == 3 and sum(isinstance(m, bytes) for m in seen) == 9
        r = client.get("/video.mp4")
    (tmp_path / "s.mp4").write_bytes(r.content)
    assert count_frames(str(tmp_path / "s.mp4")) == 9


@pytest.mark.parametrize("msg,want", [
    (dict(op="start", prompt="   "), "the prompt is empty"),
    (dict(op="start", prompt="a " * 600), "too long"),
    (dict(op="start", prompt="red " * 40), "tokens, the model reads 32"),
    (dict(op="start", prompt=PROMPT_A, policy="fancy"), "unknown cache policy 'fancy'"),
    (dict(op="start", prompt=PROMPT_A, seed="x1"), "the seed must be a whole number"),
    (dict(op="start", prompt=PROMPT_A, seed=-1), "the seed must be between 0"),
    (dict(op="switch", prompt=PROMPT_B), "nothing is being generated"),
    (dict(op="dance"), "unknown op 'dance'"),
])
def test_serve_bad_input_is_a_message_not_a_dead_server(models, msg, want):
    c = demo_config("--config.num_frames=6")
    with TestClient(create_app(c, models)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps(msg))
        error = ws.receive_json()
        assert error["type"] == "error" and want in error["message"], error
        ws.send_text("{not json")
        assert ws.receive_json()["message"] == "not a JSON message"
        assert client.get("/").status_code == 200  # still serving
        assert client.get("/video.mp4").status_code == 404


def test_serve_one_generation_at_a_time_and_a_page_that_leaves_stops_it(models):
    """A second page watches and is told it is busy; the owner's stop and the owner leaving
    both end the work."""
    c = demo_config("--config.num_frames=150")
    app = create_app(c, models)
    with TestClient(app) as client:
        studio = app.state.studio
        with client.websocket_connect("/ws") as owner:
            owner.receive_json()
            owner.send_text(json.dumps(dict(op="start", prompt=PROMPT_A, seed=0)))
            receive_until(owner, lambda m: isinstance(m, bytes))
            with client.websocket_connect("/ws") as watcher:
                hello = watcher.receive_json()
                assert hello["running"] and hello["status"]["prompt"] == PROMPT_A
                receive_until(watcher, lambda m: isinstance(m, bytes))  # the same stream
                for op in ("start", "switch", "stop"):
                    watcher.send_text(json.dumps(dict(op=op, prompt=PROMPT_B)))
                    assert "busy" in receive_until(watcher, lambda m: isinstance(m, dict) and m["type"] == "error")[-1][
                        "message"]
            owner.send_text(json.dumps(dict(op="start", prompt=PROMPT_B)))
            assert "stop it first" in receive_until(owner, lambda m: isinstance(m, dict) and m["type"] == "error")[-1][
                "message"]
            owner.send_text(json.dumps(dict(op="stop")))
            assert receive_until(owner, is_state("stopped", "done"))[-1]["state"] == "stopped"
            owner.send_text(json.dumps(dict(op="start", prompt=PROMPT_B, seed=1)))
            receive_until(owner, lambda m: isinstance(m, bytes))
        deadline = time.time() + 120  # the owner left: the thread ends at the next chunk
        while studio.running and time.time() < deadline:
            time.sleep(0.2)
        assert not studio.running and studio.status["state"] == "stopped"


class RecordingHub:
    """A hub that notes, for each status it is given, whether the studio says it is running."""

    def __init__(self):
        self.studio, self.seen, self.done = None, [], threading.Event()

    def publish(self, msg):
        if isinstance(msg, dict) and msg.get("type") == "status":
            self.seen.append((msg["state"], self.studio.running))
            if msg["state"] in ("done", "stopped", "error"):
                self.done.set()


@pytest.mark.parametrize("stop", [False, True])
def test_last_status_goes_out_when_no_longer_running(models, stop):
    """A page may start again as soon as it reads "done" or "stopped": by then the studio is
    no longer running (it was while the worker thread wound down, and such a start was refused)."""
    hub = RecordingHub()
    studio = hub.studio = Studio(demo_config("--config.num_frames=6"), models, hub)
    studio.start(studio.check(dict(prompt=PROMPT_A)), owner=1)
    if stop:
        studio.stop()
    assert hub.done.wait(120)
    assert hub.seen[-1] == ("stopped" if stop else "done", False), hub.seen
    assert all(running for _, running in hub.seen[:-1]), hub.seen
    studio.start(studio.check(dict(prompt=PROMPT_B)), owner=1)  # at once: not busy
    studio.stop(wait=True)


@pytest.mark.slow
def test_serve_cli_errors_are_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for args, want in ((["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
                           (["--port", "0"], "--port must be 1-65535"),
                           (["--config.prompt_embeds=/x.npy"], "prompt_embeds '/x.npy': no such file"),
                           (["stray"], "unexpected argument 'stray'")):
            r = run_tool("-m", "pyramid_jax.serve", "--config=configs/demo.py", *args)
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            assert r.returncode == 2 and len(lines) == 1 and want in lines[0], r.stderr


# ---- a real browser ----------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "pyramid_jax.serve", "--config=configs/demo.py", *FAST,
                             "--config.num_frames=150", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(30)


def canvas_sum(page) -> float:
    return page.evaluate("""() => { const c = document.getElementById('video');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 7) s += d[i]; return s; }""")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_studio_in_a_browser(server, tmp_path):
    """Chromium opens a shared link, sees frames arrive and change, switches the prompt and
    sees the stream follow, is told about bad input, and screenshots the page."""
    sync_api = pytest.importorskip("playwright.sync_api")
    url = server + "/?" + urllib.parse.urlencode(dict(prompt=PROMPT_A, seed=2, policy="pyramid"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport=dict(width=1100, height=620))
        page.goto(url)
        page.wait_for_function("window.studio.shown >= 3", timeout=240_000)
        first = canvas_sum(page)
        page.wait_for_function("window.studio.shown >= 9", timeout=120_000)
        assert canvas_sum(page) != first  # the picture moves
        assert "chunk" in page.inner_text("#status") and "frames/s" in page.inner_text("#status")
        types = len(np.unique(np.asarray(load_head_map(demo_config().cache.head_map))))  # one row per head type present
        page.wait_for_function(f"window.studio.cache && window.studio.cache.rows.length === {types}", timeout=60_000)
        page.wait_for_function("window.studio.shown >= 20", timeout=60_000)
        # the README's picture: the first prompt's video as it streams, before any switch
        page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
        if os.environ.get("STUDIO_SCREENSHOT"):  # how the README's picture is made
            shutil.copy(tmp_path / "studio.png", os.environ["STUDIO_SCREENSHOT"])

        page.fill("#prompt", PROMPT_B)
        page.check("#recache")
        page.click("#switch")
        page.wait_for_function(f"window.studio.status.prompt === {json.dumps(PROMPT_B)}", timeout=120_000)
        switched = page.evaluate("window.studio.status")
        at = switched["switches"][-1][0]
        received = page.evaluate("window.studio.received")
        page.wait_for_function(f"window.studio.received >= {received + 6}", timeout=120_000)  # it goes on
        assert at > 0 and switched["switches"][-1][2] is True and f"frame {at}: {PROMPT_B}" in page.inner_text(
            "#switches")
        page.wait_for_function(f"window.studio.cache && window.studio.cache.rows.length === {types}", timeout=60_000)
        page.wait_for_function("window.studio.status.state === 'done'", timeout=240_000)
        page.wait_for_timeout(1500)  # the last frames play out
        page.screenshot(path=str(tmp_path / "switched.png"), full_page=True)

        page.fill("#prompt", "")
        page.click("#start")
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
        assert page.inner_text("#error") == "the prompt is empty"

        page.fill("#prompt", PROMPT_A)  # continue the video made above
        page.click("#continue")
        page.wait_for_function("window.studio.status.state === 'running' && window.studio.status.given === 150",
                               timeout=60_000)
        assert "after 150 given frames" in page.inner_text("#status")
        page.click("#stop")
        page.wait_for_function("window.studio.status.state === 'stopped'", timeout=120_000)
        (tmp_path / "still.png").write_bytes(_png())  # an image to start from, chosen in the page
        page.set_input_files("#file", str(tmp_path / "still.png"))
        page.wait_for_function("window.studio.given && window.studio.given.frames === 3", timeout=60_000)
        assert page.is_checked("#usegiven") and "still.png: 3 latent frames" in page.inner_text("#given")
        browser.close()
    assert min((tmp_path / f).stat().st_size for f in ("studio.png", "switched.png")) > 10_000
