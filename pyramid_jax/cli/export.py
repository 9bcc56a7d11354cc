"""Lower a config's whole chunk step for a TPU or a GPU, from any host, and save it.

  python -m pyramid_jax.export --config=CONFIG --platform=tpu|cuda|cpu --out=FILE [--batch 1] [--config.F=V ...]
  pyramid-export --config=CONFIG --platform=... --out=FILE

The step is one device's (mesh.data and mesh.model must be 0 or 1); the file loads with
`jax.export.deserialize` on the target. What it holds: `pyramid_jax.lowering`. Exit 1 when the
step does not lower for the target (the reason in one line), 2 for bad input.
"""

from __future__ import annotations

import logging
import sys
import time

from pyramid_jax import media
from pyramid_jax.cli import harness
from pyramid_jax.errors import UserError, first_line, os_reason
from pyramid_jax.lowering import KERNEL_CALL, PLATFORMS, export_step
from pyramid_jax.video import check_writable

NAME = "export"
log = logging.getLogger("pyramid_jax")


def body(argv: list[str]) -> int:
    p = harness.parser(NAME, __doc__)
    p.add_argument("--platform", required=True, choices=PLATFORMS)
    p.add_argument("--out", required=True, help="the serialized step (jax.export bytes)")
    p.add_argument("--batch", type=int, default=1)
    args, rest = p.parse_known_args(argv)
    spec = harness.run_spec(NAME, rest)
    harness.one_device(spec, NAME)
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    check_writable(args.out, "--out")
    t0 = time.perf_counter()
    try:
        exported = export_step(spec, args.platform, args.batch)
        text, data = exported.mlir_module(), exported.serialize()
    except UserError:
        raise
    except Exception as e:  # a lowering the target refuses: one line, the reason
        print(f"{NAME}: error: the step does not lower for {args.platform}: {first_line(e, 300)}", file=sys.stderr)
        return harness.FAILED
    call = KERNEL_CALL[args.platform]
    kernel = call is not None and call in text
    try:
        media.write_bytes(args.out, bytes(data))
    except OSError as e:
        raise UserError(f"writing {args.out} failed: {os_reason(e)}") from None
    log.info("exported the chunk step for %s in %.1f s: %s (%.1f MB)%s", args.platform, time.perf_counter() - t0,
             args.out, len(data) / 2**20, f"; Pallas kernel ({call}) inside: {'yes' if kernel else 'no'}" if call else "")
    if spec.model.attention == "pallas" and call and not kernel:
        print(f"{NAME}: error: attention.backend=pallas but no {call} in the lowered step", file=sys.stderr)
        return harness.FAILED
    return harness.OK


def main(argv=None) -> int:
    """argv: the arguments after the program name (sys.argv[1:] when None)."""
    return harness.run(NAME, body, argv, compile_cache_on=False)


if __name__ == "__main__":
    sys.exit(main())
