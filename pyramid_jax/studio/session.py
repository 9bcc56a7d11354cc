"""The studio's generation: one at a time per server, on a worker thread, pushing each chunk's
frames (JPEG), a status and a picture of the cache to every connected page.

The thread owns the device work; the server's event loop only passes messages. A prompt
switch is taken between chunks (new text K/V from the next chunk on; with `recache`, the
frames made so far are re-written into the cache under the new text first). A generation can
start from given frames (an uploaded image or video, or the current video: "continue"), which
are written into the cache first (`ChunkLoop.prefill`) and shown at the head of the video.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from pyramid_jax import init_frames, media, pipeline, video
from pyramid_jax.cache.picture import attended_frames
from pyramid_jax.cache.policies import POLICIES, REGISTRY
from pyramid_jax.errors import UserError, first_line
from pyramid_jax.sampling.rollout import ChunkLoop, RandomNoise, text_kv_of

log = logging.getLogger("pyramid_jax")

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
MAX_UPLOAD_BYTES = 256 << 20


class Busy(Exception):
    """Another client's generation is running."""


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: str
    seed: int
    policy: str
    initial: np.ndarray | None = None  # given latents [1, F0, C, h, w] (whole chunks) to continue
    decoder: str = ""  # wan | taehv where the config names both; "" = the config's vae.kind


class Hub:
    """The connected pages' queues; publish() may be called from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queues = loop, set()

    def add(self) -> asyncio.Queue:
        q = asyncio.Queue()
        self.queues.add(q)
        return q

    def remove(self, q) -> None:
        self.queues.discard(q)

    def publish(self, msg) -> None:
        """msg: a dict (sent as JSON) or bytes (a JPEG frame)."""
        for q in list(self.queues):
            self.loop.call_soon_threadsafe(q.put_nowait, msg)


def policy_config(spec, name: str):
    """The spec of a studio run with cache policy `name`: the config's own settings for its
    policy; for another, that policy's defaults (cache.policies.REGISTRY)."""
    if name == spec.cache.policy:
        return spec
    kind = REGISTRY[name]
    fields = dict(policy=name, local_attn_size=kind.local_attn_size, sink_size=kind.sink_size)
    if not kind.head_map:  # the config's map is another policy's (dummy_forcing types heads online)
        fields["head_map"] = ""
    return spec.but(cache=fields)


def jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Studio:
    """What the server holds: the config, the models (loaded once), the running generation.

    spec: the run spec (spec.from_config); models: pipeline.load_models(spec); hub: where messages go.
    """

    def __init__(self, spec, models: pipeline.LoadedModels, hub: Hub, mesh=None):
        self.spec, self.models, self.hub, self.mesh = spec, models, hub, mesh
        self.policies = [p for p in POLICIES if self._offers(p)]
        # the decoders a run may pick (offered when the config names both), loaded when first asked
        self.decoders = sorted(video.decoder_checkpoints(spec), key=lambda k: k != spec.decoder.kind)
        self.decoder_weights = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.active = False  # a generation runs; cleared before its last status goes out
        self.stop_event = threading.Event()
        self.pending: tuple[str, bool] | None = None  # a prompt switch, taken between chunks
        self.owner = None
        self.status: dict = dict(type="status", state="idle")
        self.picture: dict | None = None
        self.frames: list[bytes] = []  # JPEGs of the current video, for late pages and the mp4
        self.latents: list[np.ndarray] = []  # its latents, a chunk at a time (given frames first)
        self.given: tuple[str, np.ndarray] | None = None  # an uploaded start: (name, latents)

    def _offers(self, name: str) -> bool:
        """Whether a run may pick policy `name`: it builds from the config (a head-aware
        policy needs a head map of its kind)."""
        spec, cfg = policy_config(self.spec, name), self.models.dit.cfg
        if spec.cache.head_map == "online":  # typed during a video: the studio's loop has no typing phase
            return False
        try:
            pipeline.build_policy(spec, cfg, pipeline.latent_size(spec, cfg), spec.inputs.num_frames)
        except UserError:
            return False
        return True

    # ---- requests ----------------------------------------------------------------
    def check_prompt(self, prompt) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserError(f"the prompt is too long ({len(prompt)} characters, at most {MAX_PROMPT_CHARS})")
        n, limit = self.models.text.count_tokens(prompt), self.models.dit.cfg.text_len
        if n > limit:
            raise UserError(f"the prompt is too long ({n} tokens, the model reads {limit})")
        return prompt.strip()

    def check(self, msg: dict) -> Request:
        """A start message -> a Request; UserError (one line for the page) if bad."""
        prompt = self.check_prompt(msg.get("prompt"))
        try:
            seed = int(str(msg.get("seed", 0)).strip())
        except ValueError:
            raise UserError(f"the seed must be a whole number, got {str(msg.get('seed'))[:40]!r}") from None
        if not 0 <= seed <= MAX_SEED:
            raise UserError(f"the seed must be between 0 and {MAX_SEED}, got {seed}")
        policy = msg.get("policy") or self.spec.cache.policy
        if policy not in self.policies:
            raise UserError(f"unknown cache policy {str(policy)[:40]!r}; choose one of {', '.join(self.policies)}")
        decoder = msg.get("decoder") or ""
        if decoder and decoder not in self.decoders:
            raise UserError(f"unknown decoder {str(decoder)[:40]!r}; this config has "
                            f"{', '.join(self.decoders) or 'none to choose from'}")
        return Request(prompt, seed, policy, decoder=decoder)

    def continue_request(self, msg: dict) -> Request:
        """A continue message: a new generation from the current video (stopped or done)."""
        if not self.latents:
            raise UserError("nothing to continue: make a video first")
        return dataclasses.replace(self.check(msg), initial=np.concatenate(self.latents, axis=1))

    def given_request(self, msg: dict) -> Request:
        """A start message asking for the uploaded image or video as the first frames."""
        if self.given is None:
            raise UserError("no image or video given: drop one on the page first")
        return dataclasses.replace(self.check(msg), initial=self.given[1])

    def give(self, name: str, data: bytes) -> int:
        """An uploaded image or video to start from: read, fitted to the config's size and
        encoded now (UserError, one line, if it cannot be); returns its latent frames."""
        ext = os.path.splitext(str(name))[1].lower()
        if ext not in init_frames.IMAGE_TYPES + init_frames.VIDEO_TYPES:
            raise UserError(f"{str(name)[:80]!r}: not an image (png, jpg) or a video (mp4, webm, ...)")
        if len(data) > MAX_UPLOAD_BYTES:
            raise UserError(f"{str(name)[:80]!r} is larger than {MAX_UPLOAD_BYTES >> 20} MB")
        field = "init_image" if ext in init_frames.IMAGE_TYPES else "init_video"
        cfg = self.models.dit.cfg
        hw = pipeline.latent_size(self.spec, cfg)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "given" + ext)
            spec = self.spec.but(inputs={"init_video": "", "init_image": "", field: path})
            with open(path, "wb") as fh:
                fh.write(data)
            init_frames.check(spec, cfg, hw)
            latents = init_frames.initial_latents(spec, cfg, hw, pipeline.encoder_for(spec, self.models), 1)
        self.given = (str(name), latents)
        log.info("studio: %s given, %d latent frames", name, latents.shape[1])
        return latents.shape[1]

    @property
    def running(self) -> bool:
        return self.active

    def start(self, req: Request, owner) -> None:
        with self.lock:
            if self.running:
                raise Busy()
            self.stop_event.clear()
            self.active = True
            self.pending, self.owner, self.frames, self.latents, self.picture = None, owner, [], [], None
            self.thread = threading.Thread(target=self._run, args=(req,), name="studio-generation", daemon=True)
            self.thread.start()

    def stop(self, wait: bool = False) -> None:
        self.stop_event.set()
        if wait and self.thread is not None:
            self.thread.join()

    def switch(self, prompt: str, recache: bool) -> None:
        self.pending = (self.check_prompt(prompt), bool(recache))

    # ---- the generation thread ---------------------------------------------------
    def _run(self, req: Request) -> None:
        try:
            last = dict(state=self._generate(req))
        except UserError as e:
            last = dict(state="error", error=str(e))
        except Exception as e:  # the page gets one line; the server keeps serving
            log.exception("studio generation failed")
            last = dict(state="error", error=first_line(e))
        # Not running before the last status goes out (a page that reads "stopped" or "done"
        # may start the next generation at once), and under the lock, so that status goes out
        # before the next generation's first.
        with self.lock:
            self.status = dict(self.status, type="status", **last)
            self.active = False
            self.hub.publish(self.status)

    def weights_of(self, decoder: str):
        """The decoder a run asked for ("" = the config's), loaded once."""
        kind = decoder or self.spec.decoder.kind
        if kind == self.spec.decoder.kind:  # what the server loaded (None for a pixel model: its frames)
            return self.models.vae
        if kind not in self.decoder_weights:
            self.decoder_weights[kind] = video.load_decoder(self.spec, kind)
            log.info("studio: %s decoder loaded", kind)
        return self.decoder_weights[kind]

    def _publish_status(self, **fields) -> None:
        self.status = dict(self.status, type="status", **fields)
        self.hub.publish(self.status)

    def _generate(self, req: Request) -> str:
        """Runs one generation; returns how it ended: "stopped" or "done"."""
        spec, models = policy_config(self.spec, req.policy), self.models
        cfg, f = models.dit.cfg, spec.sampler.frames_per_chunk
        hw = pipeline.latent_size(spec, cfg)
        chunks, given = spec.inputs.num_frames // f, 0 if req.initial is None else req.initial.shape[1]
        policy = pipeline.build_policy(spec, cfg, hw, given + spec.inputs.num_frames)
        encode = lambda p: text_kv_of(models.dit, models.text([p]), self.mesh, models.sampler)
        noise = RandomNoise(req.seed, (1, spec.inputs.num_frames, cfg.in_channels, *hw), models.sampler)
        loop = ChunkLoop(models.dit, policy, models.sampler, encode(req.prompt), noise, self.mesh)
        decoder = video.video_decoder(spec, 1, hw, self.weights_of(req.decoder))
        switches, latents = [[given, req.prompt]], self.latents
        self.status = dict(type="status")
        self._publish_status(state="running", chunk=0, chunks=chunks, fps=0.0, prompt=req.prompt, seed=req.seed,
                             policy=req.policy, decoder=req.decoder or spec.decoder.kind, switches=switches,
                             video_fps=spec.output.fps, error="", given=given)
        log.info("studio: %r seed %d, cache %s, %d chunks%s", req.prompt, req.seed, req.policy, chunks,
                 f" after {given} given latent frames" if given else "")
        if given:  # into the cache, and at the head of the video
            loop.prefill(req.initial)
            latents.append(req.initial)
            self._show(decoder.push(req.initial)[0])
        for k in range(chunks):
            if self.stop_event.is_set():
                return "stopped"
            t0 = time.perf_counter()
            if self.pending is not None:
                (prompt, recache), self.pending = self.pending, None
                loop.set_text(encode(prompt))
                if recache and latents:
                    loop.recache(np.concatenate(latents, axis=1))
                switches.append([given + k * f, prompt, recache])
                log.info("studio: prompt from latent frame %d: %r%s", given + k * f, prompt,
                         " (re-cached)" if recache else "")
            self.picture = dict(type="cache", policy=req.policy, **attended_frames(loop.policy, loop.cache, loop.chunk))
            self.hub.publish(self.picture)
            x0, _, _ = loop.next()
            latents.append(x0)
            frames = decoder.push(x0)[0]
            self._show(frames)
            seconds = time.perf_counter() - t0
            self._publish_status(chunk=k + 1, fps=round(len(frames) / seconds, 2), prompt=switches[-1][1],
                                 frames=len(self.frames))
        return "done"

    def _show(self, frames) -> None:
        for frame in frames:
            self.frames.append(jpeg(frame))
            self.hub.publish(self.frames[-1])

    def video_mp4(self) -> bytes | None:
        """The video so far as mp4 bytes (None before the first frame)."""
        frames = list(self.frames)
        if not frames:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "video.mp4")
            media.write_mp4(path, np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in frames]),
                            fps=self.spec.output.fps)
            with open(path, "rb") as fh:
                return fh.read()
