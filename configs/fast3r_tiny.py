"""The reference tiny model (encoder 96 wide x 2 blocks, fusion 64 wide x 10 blocks), used for parity tests.

    fast3r-jax convert tiny.safetensors ckpt/tiny --config configs/fast3r_tiny.py   # a tiny model's state dict
    fast3r-jax evaluate --checkpoint ckpt/tiny
"""

from fast3r_jax import config


def get_config() -> config.Fast3RConfig:
    return config.tiny()
