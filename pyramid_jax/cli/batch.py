"""Pod-scale batch generation, resumably.

  python -m pyramid_jax.batch --config=configs/NAME.py --prompts=FILE --out=DIR [--config.F=V ...]
  pyramid-batch --config=configs/NAME.py --prompts=FILE --out=DIR [...]

Prompts: .txt (one per line) or .jsonl ({"prompt", optional "seed", "name", "num_frames",
"init_video" or "init_image": frames to continue, a path relative to the prompts file).
Per prompt: NAME.npz (latents), NAME.mp4 and NAME.json (its record); one DIR/manifest.json.
A rerun keeps what matches this run's key and redoes the rest; writes are atomic; a failing
prompt is recorded and the run goes on. Each host batches over its own devices on the config's
mesh (mesh.data x mesh.model; batch_size 0 = mesh.data).

Exit codes: 0 every prompt of this host done; 1 some failed (see their records); 2 bad input or
an output that cannot be written; 3 this host lost the other hosts (what it finished is kept;
rerunning every host finishes the rest exactly once).

Multi-host: jax.distributed (--coordinator/--num-processes/--process-id, the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables, or --distributed
alone where JAX finds them itself, as on TPU pods). Prompts are split by process index.
"""

from __future__ import annotations

import logging
import os
import sys

from pyramid_jax import pipeline, video
from pyramid_jax.batch import hosts
from pyramid_jax.batch.jobs import read_jobs
from pyramid_jax.batch.records import (expected_outputs, is_complete, record_error, remove_partials, run_key,
                                       write_manifest)
from pyramid_jax.batch.runner import Progress, run_jobs
from pyramid_jax.cli import harness
from pyramid_jax.errors import UserError
from pyramid_jax.spec import from_config
from pyramid_jax.sharding import ParallelError, make_mesh

NAME = "batch"
log = logging.getLogger(NAME)


def parse_args(argv):
    """(the batch's own flags, the --config ones)."""
    own, cfg_args = harness.split_config(argv)
    p = harness.parser(NAME, __doc__)
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
    return p.parse_args(own), cfg_args


def check_out_dir(out: str) -> None:
    """The output directory exists (made if missing) and takes files: before any compute."""
    video.check_writable(os.path.join(out, "manifest.json"), "--out")


def body(argv: list[str]) -> int:
    args, cfg_args = parse_args(argv)
    check_out_dir(args.out)
    if hosts.distributed_requested(args) and not os.environ.get(hosts.SUPERVISED):
        host = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID", "")
        return hosts.supervise(argv, args.out, host)
    try:
        return run(args, cfg_args)
    except hosts.PeersLost as e:
        print(f"{NAME}: error: {e}; finished prompts are kept: rerun every host to finish the rest", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(hosts.LOST_PEERS)  # JAX's exit-time barrier would wait for the lost hosts again


def run(args, cfg_args) -> int:
    c = harness.config(NAME, cfg_args)
    spec = from_config(c)
    pidx, pcount = hosts.init_distributed(args)  # before anything touches a JAX backend
    pipeline.check_config(spec)
    try:
        mesh = make_mesh(spec.mesh.data, spec.mesh.model)
    except ParallelError as e:
        raise UserError(str(e)) from None
    jobs = read_jobs(args.prompts, spec)
    key = run_key(c)  # of the config as written: resume keys stay what they were
    expect = expected_outputs(spec)
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
    failed = run_jobs(spec, todo, args.out, key, mesh, progress, expect) if todo else 0
    counts = write_manifest(args.out, jobs, key)
    progress.summary(len(done), sum(bool(j.error) for j in mine))
    log.info("[host %d] manifest: %s", pidx, counts)
    if pcount > 1:
        log.info("[host %d] done; waiting for the other hosts", pidx)
        hosts.barrier("pyramid_jax.batch.done", args.barrier_timeout)
    return harness.FAILED if failed or any(j.error for j in mine) else harness.OK


def main(argv=None) -> int:
    """argv: the arguments after the program name (sys.argv[1:] when None)."""
    return harness.run(NAME, body, argv)


if __name__ == "__main__":
    sys.exit(main())
