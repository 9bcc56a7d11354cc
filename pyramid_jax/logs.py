"""Console logging for the command-line tools: our progress lines on stdout, libraries quiet."""

from __future__ import annotations

import logging
import sys

# Libraries that log routine INFO/WARNING lines we do not want in a user's console: orbax
# (through absl) narrates every checkpoint read, JAX warns about each accelerator plugin it
# cannot load (e.g. no libtpu on a CPU or GPU machine).
_QUIET = {"absl": logging.WARNING, "orbax": logging.WARNING, "jax._src.xla_bridge": logging.ERROR}


def setup() -> None:
    """INFO to stdout as bare messages; stderr stays for our one-line errors."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)

