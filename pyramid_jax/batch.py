"""Pod-scale batch generation, resumable.

  python -m pyramid_jax.batch --config=configs/NAME.py --prompts=FILE --out=DIR [--config.F=V ...]

Prompts: .txt (one per line) or .jsonl ({"prompt", optional "seed", "name", "num_frames"}).
Per prompt: NAME.npz (latents; an mp4 once a VAE is configured) and NAME.json (prompt, seed,
config hash, status, error, timings); one DIR/manifest.json for the run. A rerun skips
prompts whose outputs are complete and match the config hash, and redoes the rest. Writes
are atomic. A failing prompt is recorded with its error and the run goes on; the exit code
is 0 only if every prompt of this process succeeded.

Multi-host: jax.distributed (--coordinator/--num-processes/--process-id, the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables, or --distributed
alone where JAX finds them itself, as on TPU pods). Prompts are split by process index; each
host writes only its own, batching over its local devices (mesh.data x mesh.model).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import time

import numpy as np

from pyramid_jax import generate, logs, media
from pyramid_jax.generate import UserError

log = logging.getLogger("batch")

_NO_HASH_FIELDS = ("prompt", "prompts_file", "prompt_embeds", "seed", "num_frames", "output",
                   "save_latents", "save_replay", "replay", "batch_size")


@dataclasses.dataclass
class Job:
    index: int
    name: str
    prompt: str
    seed: int
    num_frames: int
    error: str = ""


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
    for i, line in enumerate(lines):
        if not jsonl and not line.strip():
            continue
        entry, error = {"prompt": line}, ""
        if jsonl:
            if not line.strip():
                continue
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
    if not isinstance(frames, int) or frames <= 0 or frames % c.num_frame_per_block:
        return f"bad num_frames {frames!r}: a positive multiple of {c.num_frame_per_block}"
    job.num_frames = frames
    if not job.prompt.strip():
        return "empty prompt"
    limit = c.model.text_len if not c.checkpoint else None
    if c.text_encoder.kind == "placeholder" and limit and len(job.prompt.split()) > limit:
        return f"prompt too long: {len(job.prompt.split())} tokens, the text encoder takes {limit}"
    return ""


# ---- records -----------------------------------------------------------------------
def config_hash(c) -> str:
    d = {k: v for k, v in c.to_dict().items() if k not in _NO_HASH_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_path(out, job):
    return os.path.join(out, job.name + ".json")


def output_path(out, job):
    return os.path.join(out, job.name + ".npz")


def is_complete(out, job, chash) -> bool:
    try:
        with open(record_path(out, job)) as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return False
    return (rec.get("status") == "ok" and rec.get("config_hash") == chash and rec.get("seed") == job.seed
            and rec.get("prompt") == job.prompt and os.path.exists(output_path(out, job)))


def write_record(out, job, chash, status, **extra):
    rec = dict(name=job.name, index=job.index, prompt=job.prompt, seed=job.seed, num_frames=job.num_frames,
               config_hash=chash, status=status, **extra)
    media.write_text(record_path(out, job), json.dumps(rec, indent=1) + "\n")


def remove_partials(out, jobs):
    """Temporary files this process's prompts left behind (a killed run)."""
    mine = {j.name for j in jobs}
    for f in os.listdir(out):
        if f.startswith(media.PARTIAL) and any(f.startswith(f"{media.PARTIAL}{n}.") for n in mine):
            os.remove(os.path.join(out, f))


def write_manifest(out, jobs, chash):
    """DIR/manifest.json from every prompt's record on disk (rebuilt under a lock by each host)."""
    with open(os.path.join(out, ".manifest.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
                         json.dumps(dict(config_hash=chash, counts=counts, prompts=entries), indent=1) + "\n")
    return counts


# ---- generation --------------------------------------------------------------------
def _batches(jobs, size):
    """Consecutive jobs of equal num_frames, `size` at a time."""
    group = []
    for j in jobs:
        if group and (len(group) == size or group[-1].num_frames != j.num_frames):
            yield group
            group = []
        group.append(j)
    if group:
        yield group


def run_jobs(c, jobs, out, chash, mesh, progress):
    import jax

    from pyramid_jax.parallel import check_fit, sharded_rollout
    from pyramid_jax.sampling.rollout import RandomNoise, rollout

    model = generate.load_dit(c)
    cfg = model.cfg
    sampler = generate.make_sampler(c)
    lh, lw = generate.latent_size(c, cfg)
    bs = c.batch_size or mesh.shape["data"]
    try:
        check_fit(mesh, bs, cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    text_kv_fn = jax.jit(lambda m, ctx: m.text_kv(ctx))
    encoder = generate.TextEncoder(c, cfg)
    failed = 0
    for group in _batches(jobs, bs):
        padded = group + [group[-1]] * (bs - len(group))  # a full batch; extras are dropped
        t0 = time.perf_counter()
        try:
            context = encoder([j.prompt for j in padded])
            frames = group[0].num_frames
            policy = generate.build_policy(c, cfg, (lh, lw), frames)
            noise = RandomNoise([j.seed for j in padded], (bs, frames, cfg.in_channels, lh, lw), sampler)
            chunks = frames // c.num_frame_per_block
            if mesh.size > 1:
                lat = sharded_rollout(model, policy, sampler, context, noise, chunks, mesh)
            else:
                lat = rollout(model, policy, sampler, text_kv_fn(model, context), noise, chunks)
            seconds = time.perf_counter() - t0
            for j, x in zip(group, lat):
                media.save_npz(output_path(out, j), latents=x[None])
                write_record(out, j, chash, "ok", output=os.path.basename(output_path(out, j)),
                             seconds=round(seconds / len(group), 3),
                             video_frames_per_s=round(len(group) * (4 * frames - 3) / seconds, 2),
                             host=jax.process_index())
        except Exception as e:  # one bad batch must not stop the run
            failed += len(group)
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            for j in group:
                write_record(out, j, chash, "error", error=msg[:500], host=jax.process_index())
            log.error("prompts %s failed: %s", [j.name for j in group], msg)
        progress(len(group), time.perf_counter() - t0)
    return failed


def init_distributed(args):
    import jax

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
    return jax.process_index(), jax.process_count()


def wait_for_peers(pidx, pcount):
    """Hold this host until every host has finished its prompts.

    Hosts finish at different times, and JAX's shutdown barrier (--shutdown-timeout) aborts a host
    still working when another leaves that much earlier; process 0 also runs the coordination
    service. A dead peer still ends the wait: its missed heartbeats fail the barrier.
    """
    if pcount <= 1:
        return
    from jax._src import distributed  # the runtime client's barrier has no public wrapper

    client = distributed.global_state.client
    if client is None:
        return
    log.info("[host %d] done; waiting for the other hosts", pidx)
    client.wait_at_barrier("pyramid_jax.batch.done", timeout_in_ms=7 * 24 * 3600 * 1000)


def parse_args(argv):
    cfg_args = [a for a in argv if a.startswith("--config")]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = p.parse_args([a for a in argv if not a.startswith("--config")])
    return args, cfg_args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logs.setup()
    args, cfg_args = parse_args(argv)
    try:
        c = generate.parse_config(["batch"] + cfg_args)
        pidx, pcount = init_distributed(args)  # before anything touches a JAX backend
        generate.check_config(c)
        from pyramid_jax.parallel import ParallelError, make_mesh

        try:
            mesh = make_mesh(c.mesh.data, c.mesh.model)
        except ParallelError as e:
            raise UserError(str(e)) from None
        os.makedirs(args.out, exist_ok=True)
        jobs = read_jobs(args.prompts, c)
        chash = config_hash(c)
        mine = jobs[pidx::pcount]
        remove_partials(args.out, mine)
        todo = [j for j in mine if not j.error and not is_complete(args.out, j, chash)]
        for j in mine:
            if j.error:
                write_record(args.out, j, chash, "error", error=j.error, host=pidx)
        log.info("[host %d/%d] %d prompts: %d done already, %d invalid, %d to generate; mesh %s",
                 pidx, pcount, len(mine), sum(is_complete(args.out, j, chash) for j in mine),
                 sum(bool(j.error) for j in mine), len(todo), dict(mesh.shape))
        done, start = [0], time.perf_counter()

        def progress(n, seconds):
            done[0] += n
            elapsed = time.perf_counter() - start
            eta = elapsed / done[0] * (len(todo) - done[0])
            log.info("[host %d] %d/%d prompts, %.1f s for the last %d, ETA %.0f s", pidx, done[0], len(todo),
                     seconds, n, eta)

        failed = run_jobs(c, todo, args.out, chash, mesh, progress) if todo else 0
        counts = write_manifest(args.out, jobs, chash)
        log.info("[host %d] manifest: %s", pidx, counts)
        wait_for_peers(pidx, pcount)
        bad = failed + sum(bool(j.error) for j in mine)
        return 1 if bad else 0
    except UserError as e:
        print(f"batch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
