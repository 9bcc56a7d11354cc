"""The prompts of a batch: a .txt (one per line) or .jsonl file read into jobs, each checked
(a bad line is kept as a job with its error, not raised)."""

from __future__ import annotations

import dataclasses
import json
import os
import re

from pyramid_jax import init_frames, pipeline
from pyramid_jax.batch import records
from pyramid_jax.errors import UserError


@dataclasses.dataclass
class Job:
    index: int
    name: str
    prompt: str
    seed: int
    num_frames: int
    error: str = ""
    init: tuple[str, str] | None = None  # ("init_video" | "init_image", path): frames to continue
    init_key: str = ""  # the content of that file (part of the resume key)
    given_frames: int = 0  # latent frames continued (known once they are read)

    def config(self, spec):
        """The run spec with this prompt's given frames (the line's, else the config's) and no others."""
        if self.init is None:
            return spec
        return spec.but(inputs={"init_video": "", "init_image": "", self.init[0]: self.init[1]})


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:100] or "prompt"


def read_jobs(path: str, spec) -> list[Job]:
    """All prompts of the file, each validated (errors are kept on the job, not raised)."""
    if not os.path.isfile(path):
        raise UserError(f"prompts file {path!r}: no such file")
    jobs = []
    with open(path) as fh:
        lines = fh.read().splitlines()
    jsonl = path.endswith(".jsonl")
    here = os.path.dirname(os.path.abspath(path))
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        entry, error = {"prompt": line}, ""
        if jsonl:
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                entry, error = {}, f"line {i + 1}: not a JSON object ({e})"
        idx = len(jobs)
        job = Job(idx, _safe_name(str(entry.get("name") or f"{idx:05d}")), str(entry.get("prompt", "")),
                  spec.inputs.seed + idx, spec.inputs.num_frames, error)
        if not job.error:
            job.error = _check_entry(entry, job, spec)
        if not job.error:
            job.error = _check_init(entry, job, spec, here)
        jobs.append(job)
    names = [j.name for j in jobs]
    for j in jobs:
        if names.count(j.name) > 1:
            j.name = f"{j.index:05d}_{j.name}"
    return jobs


def _check_entry(entry, job: Job, spec) -> str:
    seed = entry.get("seed", job.seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        return f"bad seed {seed!r}: an integer in [0, 2**32)"
    job.seed = seed
    frames = entry.get("num_frames", job.num_frames)
    if not isinstance(frames, int) or frames <= 0 or frames % spec.sampler.frames_per_chunk:
        return f"bad num_frames {frames!r}: a positive multiple of {spec.sampler.frames_per_chunk}"
    job.num_frames = frames
    if not job.prompt.strip():
        return "empty prompt"
    limit = spec.model.shape.text_len if not spec.model.checkpoint else None
    if spec.text.kind == "placeholder" and limit and len(job.prompt.split()) > limit:
        return f"prompt too long: {len(job.prompt.split())} tokens, the text encoder takes {limit}"
    return ""


def _check_init(entry, job: Job, spec, here: str) -> str:
    """The line's init_video / init_image (or the config's), read and checked as generate does."""
    given = [(f, entry[f]) for f in ("init_video", "init_image") if entry.get(f)]
    if len(given) > 1:
        return "init_video and init_image are both set: give one"
    if given:
        field, path = given[0]
        if not isinstance(path, str):
            return f"bad {field} {path!r}: a path"
        job.init = (field, path if os.path.isabs(path) else os.path.join(here, path))
    elif init_frames.field_of(spec) is not None:
        job.init = init_frames.field_of(spec)
    if job.init is None:
        return ""
    try:
        cfg = pipeline.model_config(spec)
        init_frames.check(job.config(spec), cfg, pipeline.latent_size(spec, cfg))
    except UserError as e:
        return str(e)
    job.init_key = f"{job.init[0]}:{records.fingerprint(job.init[1])}"
    return ""
