"""JAX's persistent compilation cache for the command-line tools: a second run of a CLI with
the same shapes loads the compiled step instead of compiling it again.

Where: $PYRAMID_JAX_COMPILE_CACHE (a directory), else ~/.cache/pyramid_jax/xla. Off:
PYRAMID_JAX_COMPILE_CACHE=off (or 0, none). A cache that cannot be created is skipped
with a log line: it only ever saves time.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("pyramid_jax")
ENV = "PYRAMID_JAX_COMPILE_CACHE"


def enable() -> str | None:
    """Turn the cache on (once per process); returns its directory, or None when off."""
    where = os.environ.get(ENV, "").strip()
    if where.lower() in ("off", "0", "none", "false"):
        return None
    path = os.path.abspath(os.path.expanduser(where or os.path.join("~", ".cache", "pyramid_jax", "xla")))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        log.info("compilation cache off: cannot create %s (%s)", path, e.strerror or e)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # every compile that takes a moment is worth keeping: the chunk step, the VAE, the encoder
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
