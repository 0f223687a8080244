"""Training entry point.

    python train.py --config configs/fast3r_tiny.py

This version resolves and prints the model config; the training loop is not part of this release yet.
"""

import argparse
import sys

from fast3r_jax import configs


def main() -> int:
    parser = argparse.ArgumentParser(description="Train Fast3R in JAX")
    parser.add_argument("--config", default="tiny", help="preset name or configs/<name>.py")
    args = parser.parse_args()
    print(configs.load(args.config).to_json())
    print("error: the training loop is not available in this version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
