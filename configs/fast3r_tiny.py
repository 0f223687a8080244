"""The reference tiny model (encoder 96 wide x 2 blocks, fusion 64 wide x 10 blocks), used for parity tests.

    python evaluate.py --config configs/fast3r_tiny.py
"""

from fast3r_jax import config


def get_config() -> config.Fast3RConfig:
    return config.tiny()
