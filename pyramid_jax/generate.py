"""Generate one video (or one batch) from a config file.

  python -m pyramid_jax.generate --config=configs/demo.py [--config.FIELD=VALUE ...]

Bad input (unknown field, missing file, wrong shapes, an output that cannot be written) gets
one line on stderr and exit code 2 before any model loads; outputs are written to temporary
names and renamed when complete. The work is `pyramid_jax.pipeline.run`.
"""

from __future__ import annotations

import sys

from pyramid_jax import compile_cache, logs, pipeline
from pyramid_jax.config import parse_config
from pyramid_jax.errors import UserError, os_reason


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logs.setup()
    compile_cache.enable()
    try:
        pipeline.run(parse_config(argv))
    except UserError as e:
        print(f"generate: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that vanished or could not be read midway
        print(f"generate: error: {os_reason(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
