"""Generate one video (or one batch) from a config file.

  python -m pyramid_jax.generate --config=configs/demo.py [--config.FIELD=VALUE ...]
  pyramid-generate --config=configs/demo.py [--config.FIELD=VALUE ...]

Bad input (unknown field, missing file, wrong shapes, an output that cannot be written, a mesh
the devices or the batch cannot take) gets one line on stderr and exit code 2; outputs are
written to temporary names and renamed when complete. The batch runs on the config's mesh
(mesh.data splits the prompts, mesh.model the heads). The work is `pyramid_jax.pipeline.generate_and_write`.
"""

from __future__ import annotations

import sys

from pyramid_jax import pipeline
from pyramid_jax.cli import harness

NAME = "generate"


def body(argv: list[str]) -> None:
    spec = harness.run_spec(NAME, argv)
    pipeline.generate_and_write(spec, mesh_for=lambda batch, cfg: harness.mesh(spec, batch, cfg))


def main(argv=None) -> int:
    """argv: the arguments after the program name (sys.argv[1:] when None)."""
    return harness.run(NAME, body, argv)


if __name__ == "__main__":
    sys.exit(main())
