"""`python -m pyramid_jax.batch`: the program is `pyramid_jax.cli.batch`."""

import sys

from pyramid_jax.cli.batch import main

if __name__ == "__main__":
    sys.exit(main())
