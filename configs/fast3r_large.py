"""The released Fast3R_ViT_Large_512 model.

    python evaluate.py --config configs/fast3r_large.py
"""

from fast3r_jax import config


def get_config() -> config.Fast3RConfig:
    return config.large()
