"""`python -m pyramid_jax.export`: the program is `pyramid_jax.cli.export`."""

import sys

from pyramid_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
