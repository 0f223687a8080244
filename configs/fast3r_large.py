"""The released Fast3R_ViT_Large_512 model: the config of a PyTorch checkpoint that comes without its config.json.

    fast3r-jax convert path/to/Fast3R_ViT_Large_512/model.safetensors ckpt/fast3r_large --config configs/fast3r_large.py
    fast3r-jax evaluate --checkpoint ckpt/fast3r_large --dataset co3d --data-root data/co3d

(A Hugging Face snapshot folder carries its own config.json: convert it without --config.)
"""

from fast3r_jax import config


def get_config() -> config.Fast3RConfig:
    return config.large()
