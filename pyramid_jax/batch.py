"""Pod-scale batch generation, resumable.

  python -m pyramid_jax.batch --config=configs/NAME.py --prompts=FILE --out=DIR [--config.F=V ...]

Prompts: .txt (one per line) or .jsonl ({"prompt", optional "seed", "name", "num_frames",
"init_video" or "init_image": frames to continue, a path relative to the prompts file; the
content of that file is part of the prompt's resume key; such prompts run one at a time).
Per prompt: NAME.npz (latents), NAME.mp4 (decoded by the configured Wan VAE, or the pixels of
a pixel model) and NAME.json (prompt, seed, frames, key, status, error, timings); one
DIR/manifest.json for the run. A rerun keeps a prompt only if its record matches this run's
key (the config and the content of every file it names) and its files open with the shapes
the config implies; the rest is redone. Writes are atomic. A failing prompt is recorded with
its error and the run goes on.

Exit codes: 0 every prompt of this host done; 1 some failed (see their records); 2 bad input or
an output that cannot be written; 3 this host lost the other hosts (one died, was preempted or
stopped): what it finished is kept, and rerunning every host finishes the rest exactly once.

Multi-host: jax.distributed (--coordinator/--num-processes/--process-id, the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables, or --distributed
alone where JAX finds them itself, as on TPU pods). Prompts are split by process index; each
host restores the checkpoint itself and batches over its own devices (mesh.data x mesh.model).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from pyramid_jax import compile_cache, init_frames, logs, media, pipeline, video
from pyramid_jax.config import parse_config
from pyramid_jax.errors import UserError, first_line, os_reason
from pyramid_jax.models.wan import WanConfig
from pyramid_jax.parallel import ParallelError, check_fit, make_mesh
from pyramid_jax.weights.checkpoint import CheckpointError, read_config

log = logging.getLogger("batch")

# Fields that do not change a prompt's output (or are checked per prompt, as seed, prompt
# and num_frames are).
_NOT_IN_KEY = ("prompt", "prompts_file", "prompt_embeds", "seed", "num_frames", "output", "save_latents",
               "save_replay", "replay", "batch_size", "init_video", "init_image")
# Fields that name files: their content is part of the key, not just their path.
_FILE_FIELDS = ("checkpoint", "text_encoder.checkpoint", "text_encoder.tokenizer", "vae.checkpoint",
                "cache.head_map")
LOST_PEERS = 3


class PeersLost(Exception):
    """The other hosts are gone (or did not arrive in time); the message says what happened."""


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

    def config(self, c):
        """c with this prompt's given frames (the line's, else the config's) and no others."""
        if self.init is None:
            return c
        c = c.copy_and_resolve_references()
        c.init_video, c.init_image = "", ""
        c[self.init[0]] = self.init[1]
        return c


# ---- prompts -----------------------------------------------------------------------
def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:100] or "prompt"


def read_jobs(path: str, c) -> list[Job]:
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
                  c.seed + idx, c.num_frames, error)
        if not job.error:
            job.error = _check_entry(entry, job, c)
        if not job.error:
            job.error = _check_init(entry, job, c, here)
        jobs.append(job)
    names = [j.name for j in jobs]
    for j in jobs:
        if names.count(j.name) > 1:
            j.name = f"{j.index:05d}_{j.name}"
    return jobs


def _check_entry(entry, job: Job, c) -> str:
    seed = entry.get("seed", job.seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        return f"bad seed {seed!r}: an integer in [0, 2**32)"
    job.seed = seed
    frames = entry.get("num_frames", job.num_frames)
    if not isinstance(frames, int) or frames <= 0 or frames % c.frames_per_chunk:
        return f"bad num_frames {frames!r}: a positive multiple of {c.frames_per_chunk}"
    job.num_frames = frames
    if not job.prompt.strip():
        return "empty prompt"
    limit = c.model.text_len if not c.checkpoint else None
    if c.text_encoder.kind == "placeholder" and limit and len(job.prompt.split()) > limit:
        return f"prompt too long: {len(job.prompt.split())} tokens, the text encoder takes {limit}"
    return ""


def _check_init(entry, job: Job, c, here: str) -> str:
    """The line's init_video / init_image (or the config's), read and checked as generate does."""
    given = [(f, entry[f]) for f in ("init_video", "init_image") if entry.get(f)]
    if len(given) > 1:
        return "init_video and init_image are both set: give one"
    if given:
        field, path = given[0]
        if not isinstance(path, str):
            return f"bad {field} {path!r}: a path"
        job.init = (field, path if os.path.isabs(path) else os.path.join(here, path))
    elif init_frames.field_of(c) is not None:
        job.init = init_frames.field_of(c)
    if job.init is None:
        return ""
    try:
        cfg = pipeline.model_config(c)
        init_frames.check(job.config(c), cfg, pipeline.latent_size(c, cfg))
    except UserError as e:
        return str(e)
    job.init_key = f"{job.init[0]}:{_fingerprint(job.init[1])}"
    return ""


# ---- keys and records --------------------------------------------------------------
def _fingerprint(path: str) -> str:
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
    d["files"] = {f: _fingerprint(functools.reduce(lambda node, k: node[k], f.split("."), c)) for f in _FILE_FIELDS}
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
    with _manifest_lock(out):
        for f in os.listdir(out):
            if f.startswith(media.PARTIAL) and (f.startswith(f"{media.PARTIAL}manifest.json")
                                                or any(f.startswith(f"{media.PARTIAL}{n}.") for n in mine)):
                os.remove(os.path.join(out, f))


class _manifest_lock:
    def __init__(self, out):
        self.path = os.path.join(out, ".manifest.lock")

    def __enter__(self):
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)

    def __exit__(self, *_):
        self.fh.close()


def write_manifest(out, jobs, key):
    """DIR/manifest.json from every prompt's record on disk (rebuilt under a lock by each host)."""
    with _manifest_lock(out):
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


# ---- generation --------------------------------------------------------------------
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


def generate_batch(c, models: pipeline.Models, group, bs, latent_hw, mesh, out, expect) -> float:
    """One batch of prompts: roll out, stream the videos, then write latents. Returns seconds."""
    padded = group + [group[-1]] * (bs - len(group))  # a full batch; the extras are dropped
    frames = group[0].num_frames
    c = group[0].config(c)  # given frames: a group of one
    job = pipeline.with_initial(c, models, pipeline.scheduled_inputs(
        c, models, [j.prompt for j in padded], [j.seed for j in padded], latent_hw, frames))
    group[0].given_frames = job.given_frames
    decoder = video.video_decoder(c, bs, latent_hw, models.vae) if expect.video else None
    sink = video.VideoSink(c, [video_path(out, j) for j in group], decoder) if decoder else None
    t0 = time.perf_counter()
    try:
        lat = pipeline.generate(c, models, job, sink, mesh=mesh if mesh.size > 1 else None).latents
        for j, x in zip(group, lat):
            media.save_npz(latents_path(out, j), latents=x[None])
        if sink is not None:
            sink.close(lat)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return time.perf_counter() - t0


def run_jobs(c, jobs, out, key, mesh, progress: Progress, expect: Expected) -> int:
    """Generate `jobs`; returns how many failed. A bad batch is recorded and the run goes on;
    an output that cannot be written stops it (UserError)."""
    host = jax.process_index()
    models = pipeline.load(c, decoder=expect.video)
    if models.text is None:
        raise UserError("batch generates from prompts: unset prompt_embeds and replay")
    latent_hw = pipeline.latent_size(c, models.dit.cfg)
    bs = c.batch_size or mesh.shape["data"]
    try:
        check_fit(mesh, bs, models.dit.cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    failed = 0
    for group in _batches(jobs, bs):
        try:
            seconds = generate_batch(c, models, group, bs, latent_hw, mesh, out, expect)
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


# ---- hosts -------------------------------------------------------------------------
def distributed_requested(args) -> bool:
    return bool(args.distributed or args.coordinator or args.num_processes
                or os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("JAX_NUM_PROCESSES"))


def init_distributed(args):
    addr = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    nproc = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    pid = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if addr or nproc:
        if not (addr and nproc and pid is not None):
            raise UserError("multi-host needs a coordinator address, the process count and this "
                            "process's id (flags or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
        jax.distributed.initialize(coordinator_address=addr, num_processes=int(nproc), process_id=int(pid),
                                   heartbeat_timeout_seconds=args.heartbeat_timeout,
                                   shutdown_timeout_seconds=args.shutdown_timeout)
    elif args.distributed:
        jax.distributed.initialize()  # TPU pods and other managed clusters find their peers
    if jax.process_count() > 1:
        # Set up the hosts' collective channel while they all start together, so the end
        # barrier can wait as long as hosts take to finish.
        barrier("pyramid_jax.batch.start", args.barrier_timeout)
    return jax.process_index(), jax.process_count()


def barrier(name: str, timeout_s: float) -> None:
    """Wait until every host reaches `name` (jax.experimental.multihost_utils), at most
    timeout_s seconds. Raises PeersLost when a host is gone or late."""
    outcome = []

    def wait():
        try:
            multihost_utils.sync_global_devices(name)
            outcome.append(None)
        except Exception as e:  # a collective with a dead peer fails
            outcome.append(e)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise PeersLost(f"the other hosts did not reach {name!r} within --barrier-timeout={timeout_s:g} s")
    if outcome[0] is not None:
        raise PeersLost(f"a host is gone ({first_line(outcome[0], 160)})")


# JAX ends a process whose peer died (a missed heartbeat, the coordinator gone) from C++: an
# abort with a stack trace on stderr. A supervising process runs each host's work and turns
# that into one line; the runtime's own lines go to a log file instead of the console.
_SUPERVISED = "PYRAMID_JAX_BATCH_HOST"
_RUNTIME_LINE = re.compile(r"^([FEWI]\d{4} \d\d:\d\d:\d\d|\s*@\s+0x|\*\*\* |PC: @|\[Gloo\] )")


def supervise(argv, out: str, host) -> int:
    """Run this host's batch in a child process; a crash of the JAX runtime (a lost peer)
    becomes one line and exit code 3. Returns the exit code."""
    env = dict(os.environ, **{_SUPERVISED: "1"})
    child = subprocess.Popen([sys.executable, "-m", "pyramid_jax.batch", *argv], env=env,
                             stderr=subprocess.PIPE, text=True, errors="replace", preexec_fn=_die_with_parent)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _: child.send_signal(s))
    runtime, fatal, in_runtime = [], False, False
    for line in child.stderr:
        if _RUNTIME_LINE.match(line):
            in_runtime, fatal = True, fatal or line.startswith("F")
        elif line.startswith(("batch: ", "Traceback")) and not fatal:
            in_runtime = False  # our own lines again (a runtime message may span lines)
        if in_runtime:
            runtime.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    code = child.wait()
    if code >= 0 and not fatal:
        return code
    detail = _save_runtime_log(os.path.join(out, f"runtime-host{host}.log"), runtime)
    print(f"batch: error: this host lost the other hosts (one died, was preempted or stopped; the JAX runtime "
          f"ended it{', see ' + detail if detail else ''}); finished prompts are kept: rerun every host to finish "
          "the rest", file=sys.stderr)
    return LOST_PEERS


def _die_with_parent():
    """(In the child, Linux) be killed when the supervisor is, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _save_runtime_log(path: str, lines) -> str:
    """What the JAX runtime said before it ended the host, for whoever debugs it."""
    try:
        with open(path, "w") as fh:
            fh.writelines(lines)
        return path
    except OSError:
        return ""


# ---- CLI ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        print(f"batch: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv):
    cfg_args = [a for a in argv if a.startswith("--config")]
    p = _Parser(prog="batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help=".txt (a prompt per line) or .jsonl")
    p.add_argument("--out", required=True, help="output directory (created; reruns resume)")
    p.add_argument("--coordinator", help="host:port of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int, default=0)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() with no arguments")
    p.add_argument("--heartbeat-timeout", type=int, default=100,
                   help="seconds without heartbeats before a peer counts as dead (a killed host)")
    p.add_argument("--shutdown-timeout", type=int, default=300,
                   help="seconds of JAX's shutdown barrier (hosts first wait for each other to finish)")
    p.add_argument("--barrier-timeout", type=float, default=6 * 3600,
                   help="seconds a host that has finished waits for the others")
    args = p.parse_args([a for a in argv if not a.startswith("--config")])
    return args, cfg_args


def check_out_dir(out: str) -> None:
    """The output directory exists (made if missing) and takes files: before any compute."""
    video.check_writable(os.path.join(out, "manifest.json"), "--out")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logs.setup()
    compile_cache.enable()
    args, cfg_args = parse_args(argv)
    try:
        check_out_dir(args.out)
        if distributed_requested(args) and not os.environ.get(_SUPERVISED):
            host = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID", "")
            return supervise(argv, args.out, host)
        return run(args, cfg_args)
    except UserError as e:
        print(f"batch: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the manifest on a disk that filled up
        print(f"batch: error: {os_reason(e)}", file=sys.stderr)
        return 2
    except PeersLost as e:
        print(f"batch: error: {e}; finished prompts are kept: rerun every host to finish the rest",
              file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(LOST_PEERS)  # JAX's exit-time barrier would wait for the lost hosts again


def run(args, cfg_args) -> int:
    c = parse_config(["batch"] + cfg_args)
    pidx, pcount = init_distributed(args)  # before anything touches a JAX backend
    pipeline.check_config(c)
    try:
        mesh = make_mesh(c.mesh.data, c.mesh.model)
    except ParallelError as e:
        raise UserError(str(e)) from None
    jobs = read_jobs(args.prompts, c)
    key = run_key(c)
    expect = expected_outputs(c)
    mine = jobs[pidx::pcount]
    remove_partials(args.out, mine)
    done = {j.name for j in mine if not j.error and is_complete(args.out, j, key, expect)}
    todo = [j for j in mine if not j.error and j.name not in done]
    for j in mine:
        if j.error:
            record_error(args.out, j, key, j.error, pidx)
    log.info("[host %d/%d] %d prompts: %d done already, %d invalid, %d to generate; mesh %s%s", pidx, pcount,
             len(mine), len(done), sum(bool(j.error) for j in mine), len(todo), dict(mesh.shape),
             "" if expect.video else "; latents only (no VAE configured)")
    progress = Progress(pidx, len(todo), expect.video_frames)
    failed = run_jobs(c, todo, args.out, key, mesh, progress, expect) if todo else 0
    counts = write_manifest(args.out, jobs, key)
    progress.summary(len(done), sum(bool(j.error) for j in mine))
    log.info("[host %d] manifest: %s", pidx, counts)
    if pcount > 1:
        log.info("[host %d] done; waiting for the other hosts", pidx)
        barrier("pyramid_jax.batch.done", args.barrier_timeout)
    return 1 if failed or any(j.error for j in mine) else 0


def expected_outputs(c) -> Expected:
    """Latent shape and video frames per latent frame under this config (and whether an mp4 is written)."""
    if c.checkpoint:
        try:
            _, cfg = read_config(c.checkpoint)
        except CheckpointError as e:
            raise UserError(str(e)) from None
    else:
        cfg = WanConfig.from_dict(dict(c.model.to_dict(), dtype=c.dtype))
    writes_video = c.vae.kind == "pixel" or c.vae.kind in video.decoder_checkpoints(c) or bool(c.vae.random)
    return Expected(cfg.in_channels, pipeline.latent_size(c, cfg), video.strides(c)[0], writes_video,
                    bool(c.init_in_output))


if __name__ == "__main__":
    sys.exit(main())
