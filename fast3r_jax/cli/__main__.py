"""`python -m fast3r_jax.cli`: the `fast3r-jax` command."""

import sys

from fast3r_jax.cli import main

sys.exit(main())
