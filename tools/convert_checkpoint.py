"""Convert upstream / diffusers Wan checkpoints to pyramid_jax orbax checkpoints.

python tools/convert_checkpoint.py --src FILE --dst DIR [--kind dit|vae|t5|taehv]
    [--num-heads N] [--no-ema] [--dtype bfloat16|float32]
"""

import sys

from pyramid_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
