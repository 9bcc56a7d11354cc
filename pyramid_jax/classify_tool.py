"""Head typing's program moved to `pyramid_jax.cli.classify` (tools/classify_heads.py runs it)."""

import sys

from pyramid_jax.cli.classify import main

if __name__ == "__main__":
    sys.exit(main())
