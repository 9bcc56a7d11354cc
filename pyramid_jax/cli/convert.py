"""Convert a Wan / Self Forcing PyTorch or diffusers checkpoint (DiT, VAE, umT5) or TAEHV's
to pyramid_jax (orbax + config).

  python tools/convert_checkpoint.py --src FILE --dst DIR [--kind dit|vae|t5|taehv]
      [--num-heads N] [--no-ema] [--dtype bfloat16|float32] [--verbose]
  pyramid-convert ... (the same flags)

A file that is not such a checkpoint, or a destination that exists, gets one line and exit 2
(--verbose: what the reading library said, after it). The work is `pyramid_jax.weights.convert`.
"""

from __future__ import annotations

import sys

from pyramid_jax.cli import harness
from pyramid_jax.errors import UserError
from pyramid_jax.weights.checkpoint import CheckpointError
from pyramid_jax.weights.convert import DTYPES, FORMATS, convert
from pyramid_jax.models.table import ConversionError

NAME = "convert_checkpoint"


def parse_args(argv):
    p = harness.parser(NAME, __doc__)
    p.add_argument("--src", required=True, help=".pt/.pth, .safetensors, or a diffusers folder")
    p.add_argument("--dst", required=True, help="output directory (must not exist)")
    p.add_argument("--kind", default="dit", choices=list(FORMATS))
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (inferred for the published 1.3B / 14B widths)")
    p.add_argument("--no-ema", action="store_true", help="use `generator` instead of `generator_ema`")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--verbose", action="store_true", help="after an error line, what the reading library said")
    return p.parse_args(argv)


def body(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        convert(args.kind, args.src, args.dst, args.dtype, args.num_heads, not args.no_ema)
    except (ConversionError, CheckpointError) as e:
        error = UserError(str(e))
        error.detail = getattr(e, "detail", "") if args.verbose else ""
        raise error from None
    print(f"wrote {args.dst}")


def main(argv=None) -> int:
    """argv: the arguments after the program name (sys.argv[1:] when None)."""
    return harness.run(NAME, body, argv, compile_cache_on=False)


if __name__ == "__main__":
    sys.exit(main())
