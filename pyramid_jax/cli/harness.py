"""What every program shares, written once: console logging, JAX's compilation cache, flags
(its own beside --config=FILE and --config.FIELD=VALUE), the device mesh, and errors as one
line with an exit code.

Exit codes: 0 done; 1 the work failed (a batch's prompt, a lowering the target refuses);
2 bad input or an output that cannot be written, said in one line before any model loads.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from pyramid_jax import compile_cache, logs
from pyramid_jax.config import parse_config
from pyramid_jax.errors import UserError, os_reason
from pyramid_jax.spec import RunSpec, from_config
from pyramid_jax.sharding import ParallelError, batch_mesh

OK, FAILED, BAD_INPUT = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """argparse whose refusals are one line (not the usage block) and exit 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(BAD_INPUT)


def parser(name: str, doc: str | None) -> Parser:
    return Parser(prog=name, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def split_config(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the program's own flags, the --config=FILE / --config.FIELD=VALUE ones)."""
    return [a for a in argv if not a.startswith("--config")], [a for a in argv if a.startswith("--config")]


def config(name: str, config_args: list[str]):
    """The config those flags make (UserError in one line for a bad file or field)."""
    return parse_config([name, *config_args])


def run_spec(name: str, config_args: list[str]) -> RunSpec:
    """The run spec those flags make: the config read once, here at the edge."""
    return from_config(config(name, config_args))


def run(name: str, body: Callable[[list[str]], int | None], argv=None, *, compile_cache_on: bool = True) -> int:
    """body(argv) under the shared prologue; returns the exit code. argv: the arguments after
    the program name (sys.argv[1:] when None). UserError and OSError become `NAME: error: ...`
    and exit 2; an error's `detail`, when it has one, follows on the next lines."""
    argv = sys.argv[1:] if argv is None else list(argv)
    logs.setup()
    if compile_cache_on:
        compile_cache.enable()
    try:
        return int(body(argv) or OK)
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        if getattr(e, "detail", ""):
            print(e.detail, file=sys.stderr)
        return BAD_INPUT
    except OSError as e:  # a file that vanished or could not be read or written midway
        print(f"{name}: error: {os_reason(e)}", file=sys.stderr)
        return BAD_INPUT


def one_device(spec, name: str) -> None:
    """Refuse, in one line, a mesh asked of a program that runs on one device."""
    if spec.mesh.data > 1 or spec.mesh.model > 1:
        raise UserError(f"{name} runs on one device: mesh.data and mesh.model must be 0 or 1, "
                        f"got {spec.mesh.data}x{spec.mesh.model}")


def mesh(spec, batch: int, cfg):
    """The config's mesh for a batch of `batch` on this host's devices (None: one device),
    checked against the batch and the model (UserError in one line)."""
    try:
        return batch_mesh(spec.mesh.data, spec.mesh.model, batch, cfg)
    except ParallelError as e:
        raise UserError(str(e)) from None
