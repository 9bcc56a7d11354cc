"""Many hosts: jax.distributed, barriers that notice a lost host, and the supervising parent
that turns a JAX runtime abort into one line and exit code 3."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading

import jax
from jax.experimental import multihost_utils

from pyramid_jax.errors import UserError, first_line

LOST_PEERS = 3


class PeersLost(Exception):
    """The other hosts are gone (or did not arrive in time); the message says what happened."""


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
SUPERVISED = "PYRAMID_JAX_BATCH_HOST"
_RUNTIME_LINE = re.compile(r"^([FEWI]\d{4} \d\d:\d\d:\d\d|\s*@\s+0x|\*\*\* |PC: @|\[Gloo\] )")


def supervise(argv, out: str, host) -> int:
    """Run this host's batch in a child process; a crash of the JAX runtime (a lost peer)
    becomes one line and exit code 3. Returns the exit code."""
    env = dict(os.environ, **{SUPERVISED: "1"})
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
