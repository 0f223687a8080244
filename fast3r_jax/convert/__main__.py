"""`python -m fast3r_jax.convert SRC OUT`: the converter's command line."""

import sys

from fast3r_jax.convert.converter import main

sys.exit(main())
