"""`python -m fast3r_jax.convert SRC OUT ...`: the same as `fast3r-jax convert SRC OUT ...`."""

import sys

from fast3r_jax.cli import main

sys.exit(main(["convert", *sys.argv[1:]]))
