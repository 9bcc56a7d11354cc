"""The studio's web app (FastAPI): the page, one WebSocket per page, the mp4 so far.

WebSocket messages. Page -> server, JSON: {"op": "start", "prompt", "seed", "policy",
optional "decoder" (wan | taehv, where the config names both), optional "given": true (start
from the uploaded frames)}, {"op": "continue", "prompt", "seed", "policy", "decoder"} (a new
generation from the current video), {"op": "stop"}, {"op": "switch",
"prompt", "recache"}. POST /given?name=FILE with the file as the body: an image or video to
start from (read and encoded at once; 400 with one line if it cannot be). Server -> page: JSON {"type": "hello"
| "status" | "cache" | "error", ...} and binary messages, one JPEG per video frame.

One generation at a time: the page that started it steers it; other pages watch it and are
told it is busy if they try to start or steer. When that page leaves, the work stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from pyramid_jax.errors import UserError
from pyramid_jax.studio.session import Busy, Hub, Studio

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
BUSY = "busy: another page's generation is running; this page shows it (wait, or stop it there)"


def create_app(spec, models, mesh=None) -> FastAPI:
    """The app of a run spec and its loaded models (pipeline.load_models(spec)); generations run on
    `mesh` (None: one device)."""
    ids = itertools.count(1)
    clients: set[int] = set()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.studio = Studio(spec, models, Hub(asyncio.get_running_loop()), mesh)
        yield
        app.state.studio.stop(wait=True)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/")
    def page():
        with open(PAGE) as fh:
            return HTMLResponse(fh.read())

    @app.get("/video.mp4")
    def download():
        data = app.state.studio.video_mp4()
        if data is None:
            return JSONResponse({"error": "no video yet: start a generation first"}, status_code=404)
        return Response(data, media_type="video/mp4",
                        headers={"Content-Disposition": 'attachment; filename="studio.mp4"'})

    @app.post("/given")
    async def given(request: Request, name: str = ""):
        studio: Studio = app.state.studio
        try:
            frames = await run_in_threadpool(studio.give, name, await request.body())
        except UserError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return {"name": name, "frames": frames}

    @app.websocket("/ws")
    async def socket(ws: WebSocket):
        studio: Studio = app.state.studio
        await ws.accept()
        me = next(ids)
        clients.add(me)
        queue = studio.hub.add()
        await ws.send_json(hello(studio))
        writer = asyncio.create_task(forward(ws, queue))
        try:
            while True:
                msg = await ws.receive_text()
                error = handle(studio, me, msg)
                if error:
                    await ws.send_json(dict(type="error", message=error))
        except WebSocketDisconnect:
            pass
        finally:
            writer.cancel()
            studio.hub.remove(queue)
            clients.discard(me)
            if studio.owner == me or not clients:
                studio.stop()  # its page left (or nobody watches): the work stops

    return app


def hello(studio: Studio) -> dict:
    """What a page needs on connecting: the choices, the defaults, and what is on now."""
    spec = studio.spec
    return dict(type="hello", policies=studio.policies, policy=spec.cache.policy, decoders=studio.decoders,
                decoder=spec.decoder.kind, prompt=spec.inputs.prompt, seed=spec.inputs.seed,
                num_frames=spec.inputs.num_frames, frames_per_chunk=spec.sampler.frames_per_chunk,
                video_fps=spec.output.fps,
                running=studio.running, status=studio.status, cache=studio.picture,
                frames=len(studio.frames))


async def forward(ws: WebSocket, queue: asyncio.Queue) -> None:
    """The hub's messages to one page, in order."""
    while True:
        msg = await queue.get()
        if isinstance(msg, bytes):
            await ws.send_bytes(msg)
        else:
            await ws.send_json(msg)


def handle(studio: Studio, me: int, text: str) -> str:
    """One page message; returns an error line for that page, or ''."""
    try:
        msg = json.loads(text)
        op = msg.get("op") if isinstance(msg, dict) else None
    except ValueError:
        return "not a JSON message"
    try:
        if op in ("start", "continue"):
            if studio.running:
                return "already generating: stop it first" if studio.owner == me else BUSY
            req = (studio.continue_request(msg) if op == "continue" else
                   studio.given_request(msg) if msg.get("given") else studio.check(msg))
            studio.start(req, owner=me)
        elif op in ("stop", "switch"):
            if not studio.running:
                return "nothing is being generated"
            if studio.owner != me:
                return BUSY
            if op == "stop":
                studio.stop()
            else:
                studio.switch(msg.get("prompt"), bool(msg.get("recache")))
        else:
            return f"unknown op {str(op)[:40]!r}; use start, continue, stop or switch"
    except UserError as e:
        return str(e)
    except Busy:
        return BUSY
    return ""
