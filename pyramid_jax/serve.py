"""`python -m pyramid_jax.serve`: the program is `pyramid_jax.cli.serve`."""

import sys

from pyramid_jax.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
