"""What a batch writes and how a rerun knows what is done: the run key, each prompt's record
(NAME.json beside NAME.npz / NAME.mp4), the shapes a finished prompt's files have, and the
manifest every host rebuilds under a lock. Every write is atomic (media.write_*)."""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os

import numpy as np

from pyramid_jax import media, pipeline, video
from pyramid_jax.errors import UserError, os_reason
from pyramid_jax.weights.checkpoint import CheckpointError, read_config

log = logging.getLogger("batch")

# Fields that do not change a prompt's output (or are checked per prompt, as seed, prompt
# and num_frames are).
_NOT_IN_KEY = ("prompt", "prompts_file", "prompt_embeds", "seed", "num_frames", "output", "save_latents",
               "save_replay", "replay", "batch_size", "init_video", "init_image", "trace_cache")
# Fields that name files: their content is part of the key, not just their path.
_FILE_FIELDS = ("checkpoint", "text_encoder.checkpoint", "text_encoder.tokenizer", "vae.checkpoint",
                "cache.head_map")


def fingerprint(path: str) -> str:
    """Content of a file, or of a directory's files (their names, sizes and mtimes: a
    checkpoint is too large to read for this)."""
    if not path or not os.path.exists(path):
        return ""
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    items = []
    for root, _, names in sorted(os.walk(path)):
        for n in sorted(names):
            st = os.stat(os.path.join(root, n))
            items.append(f"{os.path.relpath(os.path.join(root, n), path)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def run_key(c) -> str:
    """What makes a prompt's output: every config field but the per-prompt ones, and the
    content of the files the config names."""
    d = {k: v for k, v in c.to_dict().items() if k not in _NOT_IN_KEY}
    d["files"] = {f: fingerprint(functools.reduce(lambda node, k: node[k], f.split("."), c)) for f in _FILE_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_path(out, job):
    return os.path.join(out, job.name + ".json")


def latents_path(out, job):
    return os.path.join(out, job.name + ".npz")


def video_path(out, job):
    return os.path.join(out, job.name + ".mp4")


@dataclasses.dataclass(frozen=True)
class Expected:
    """The shapes a finished prompt's files have under this config."""

    channels: int
    latent_hw: tuple[int, int]
    time_stride: int
    video: bool  # an mp4 is written

    init_in_output: bool = True

    def video_frames(self, num_frames: int) -> int:
        return 1 + self.time_stride * (num_frames - 1) if self.time_stride > 1 else num_frames

    def written_frames(self, num_frames: int, given: int = 0) -> int:
        """Frames in the mp4 of num_frames made after `given` given latent frames."""
        total = self.video_frames(given + num_frames)
        return total - self.video_frames(given) if given and not self.init_in_output else total


def is_complete(out, job, key, expect: Expected) -> bool:
    """The record says ok for this key, seed, prompt and length, and the files open with the
    shapes that implies (a truncated or stale file is not done)."""
    try:
        with open(record_path(out, job)) as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return False
    if not (rec.get("status") == "ok" and rec.get("key") == key and rec.get("seed") == job.seed
            and rec.get("prompt") == job.prompt and rec.get("num_frames") == job.num_frames
            and rec.get("init", "") == job.init_key):
        return False
    given = rec.get("given_frames", 0)
    want = (1, given + job.num_frames, expect.channels, *expect.latent_hw)
    try:
        with np.load(latents_path(out, job)) as data:
            if tuple(data["latents"].shape) != want:
                return False
    except Exception:  # missing, truncated, not an npz: redo it
        return False
    return not expect.video or media.count_frames(video_path(out, job)) == expect.written_frames(job.num_frames,
                                                                                                   given)


def write_record(out, job, key, status, **extra):
    rec = dict(name=job.name, index=job.index, prompt=job.prompt, seed=job.seed, num_frames=job.num_frames,
               key=key, status=status, **({"init": job.init_key} if job.init else {}), **extra)
    media.write_text(record_path(out, job), json.dumps(rec, indent=1) + "\n")


def record_error(out, job, key, message, host):
    """An error record, best effort: it must not raise (the disk may be the problem)."""
    try:
        write_record(out, job, key, "error", error=message[:500], host=host)
    except OSError as e:
        log.error("[host %d] could not record the error of %s: %s", host, job.name, os_reason(e))


def remove_partials(out, jobs):
    """Temporary files a killed run left: this host's prompts' and the manifest's."""
    mine = {j.name for j in jobs}
    with manifest_lock(out):
        for f in os.listdir(out):
            if f.startswith(media.PARTIAL) and (f.startswith(f"{media.PARTIAL}manifest.json")
                                                or any(f.startswith(f"{media.PARTIAL}{n}.") for n in mine)):
                os.remove(os.path.join(out, f))


class manifest_lock:
    def __init__(self, out):
        self.path = os.path.join(out, ".manifest.lock")

    def __enter__(self):
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)

    def __exit__(self, *_):
        self.fh.close()


def write_manifest(out, jobs, key):
    """DIR/manifest.json from every prompt's record on disk (rebuilt under a lock by each host)."""
    with manifest_lock(out):
        entries = []
        for j in jobs:
            try:
                with open(record_path(out, j)) as fh:
                    rec = json.load(fh)
            except (OSError, ValueError):
                rec = dict(name=j.name, index=j.index, prompt=j.prompt, status="pending")
            entries.append(rec)
        counts = {s: sum(e.get("status") == s for e in entries) for s in ("ok", "error", "pending")}
        media.write_text(os.path.join(out, "manifest.json"),
                         json.dumps(dict(key=key, counts=counts, prompts=entries), indent=1) + "\n")
    return counts


def expected_outputs(spec) -> Expected:
    """Latent shape and video frames per latent frame under this config (and whether an mp4 is written)."""
    if spec.model.checkpoint:
        try:
            _, cfg = read_config(spec.model.checkpoint)
        except CheckpointError as e:
            raise UserError(str(e)) from None
    else:
        cfg = spec.model.shape
    writes_video = (spec.decoder.kind == "pixel" or spec.decoder.kind in video.decoder_checkpoints(spec)
                    or bool(spec.decoder.random))
    return Expected(cfg.in_channels, pipeline.latent_size(spec, cfg), video.strides(spec)[0], writes_video,
                    bool(spec.output.init_in_output))
