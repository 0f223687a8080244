"""Evaluate a Fast3R checkpoint on its benchmarks: the same as `fast3r-jax evaluate` (fast3r_jax/cli/evaluate.py).

    python evaluate.py                                  # built-in model, 16 held-out synthetic scenes
    python evaluate.py --dataset co3d --data-root data/co3d --checkpoint checkpoints/fast3r_large
    python evaluate.py --dataset 7scenes --data-root data/7scenes --checkpoint checkpoints/fast3r_large
"""

import sys

from fast3r_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
