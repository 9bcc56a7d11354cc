"""A host's share of the prompts, generated a batch at a time, with progress lines; a failing
batch is recorded and the run goes on."""

from __future__ import annotations

import logging
import os
import time

import jax

from pyramid_jax import media, pipeline, video
from pyramid_jax.batch.records import Expected, latents_path, record_error, video_path, write_record
from pyramid_jax.errors import UserError, first_line, os_reason
from pyramid_jax.sharding import check_fit

log = logging.getLogger("batch")


def _batches(jobs, size):
    """Consecutive jobs of equal num_frames, `size` at a time; a job continuing given frames
    alone (their lengths may differ)."""
    group = []
    for j in jobs:
        if group and (len(group) == size or group[-1].num_frames != j.num_frames or j.init or group[-1].init):
            yield group
            group = []
        group.append(j)
    if group:
        yield group


class Progress:
    """Per-host progress lines (prompts done / left, video frames/s, ETA) and the summary."""

    def __init__(self, host: int, todo: int, video_frames):
        self.host, self.todo, self.video_frames = host, todo, video_frames
        self.done = self.failed = self.frames = 0
        self.start = time.perf_counter()

    def batch(self, jobs, ok: bool):
        self.done += len(jobs)
        self.failed += 0 if ok else len(jobs)
        self.frames += sum(self.video_frames(j.num_frames) for j in jobs) if ok else 0
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.todo - self.done)
        log.info("[host %d] %d/%d prompts (%d left), %.1f video frames/s, ETA %s", self.host, self.done,
                 self.todo, self.todo - self.done, self.frames / elapsed, _duration(eta))

    def summary(self, skipped: int, invalid: int):
        elapsed = time.perf_counter() - self.start
        log.info("[host %d] summary: %d generated, %d failed, %d already done, %d invalid; %s, %.1f video "
                 "frames/s", self.host, self.done - self.failed, self.failed, skipped, invalid, _duration(elapsed),
                 self.frames / max(elapsed, 1e-9))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def generate_batch(spec, models: pipeline.LoadedModels, group, bs, latent_hw, mesh, out, expect) -> float:
    """One batch of prompts: roll out, stream the videos, then write latents. Returns seconds."""
    padded = group + [group[-1]] * (bs - len(group))  # a full batch; the extras are dropped
    frames = group[0].num_frames
    spec = group[0].config(spec)  # given frames: a group of one
    job = pipeline.with_initial(spec, models, pipeline.scheduled_inputs(
        spec, models, [j.prompt for j in padded], [j.seed for j in padded], latent_hw, frames))
    group[0].given_frames = job.given_frames
    decoder = video.video_decoder(spec, bs, latent_hw, models.vae) if expect.video else None
    sink = video.VideoSink(spec, [video_path(out, j) for j in group], decoder) if decoder else None
    t0 = time.perf_counter()
    try:
        lat = pipeline.generate(spec, models, job, sink, mesh=mesh if mesh.size > 1 else None).latents
        for j, x in zip(group, lat):
            media.save_npz(latents_path(out, j), latents=x[None])
        if sink is not None:
            sink.close(lat)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return time.perf_counter() - t0


def run_jobs(spec, jobs, out, key, mesh, progress: Progress, expect: Expected) -> int:
    """Generate `jobs`; returns how many failed. A bad batch is recorded and the run goes on;
    an output that cannot be written stops it (UserError)."""
    host = jax.process_index()
    models = pipeline.load_models(spec, decoder=expect.video)
    if models.text is None:
        raise UserError("batch generates from prompts: unset prompt_embeds and replay")
    latent_hw = pipeline.latent_size(spec, models.dit.cfg)
    bs = spec.mesh.batch_size or mesh.shape["data"]
    try:
        check_fit(mesh, bs, models.dit.cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    failed = 0
    for group in _batches(jobs, bs):
        try:
            seconds = generate_batch(spec, models, group, bs, latent_hw, mesh, out, expect)
            for j in group:
                write_record(out, j, key, "ok", seconds=round(seconds / len(group), 3), host=host,
                             **({"given_frames": j.given_frames} if j.init else {}),
                             files=[os.path.basename(p(out, j)) for p in (latents_path, video_path)
                                    if os.path.exists(p(out, j))])
            progress.batch(group, ok=True)
        except OSError as e:  # the disk, not the prompt: every later prompt would fail too
            for j in group:
                record_error(out, j, key, f"cannot write: {os_reason(e)}", host)
            raise UserError(f"writing to {out!r} failed: {os_reason(e)}") from None
        except Exception as e:  # one bad batch must not stop the run
            failed += len(group)
            for j in group:
                record_error(out, j, key, first_line(e, 500), host)
            log.error("[host %d] prompts %s failed: %s", host, [j.name for j in group], first_line(e))
            progress.batch(group, ok=False)
    return failed
