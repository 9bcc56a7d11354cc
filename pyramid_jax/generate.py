"""`python -m pyramid_jax.generate`: the program is `pyramid_jax.cli.generate`."""

import sys

from pyramid_jax.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
