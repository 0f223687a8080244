"""The default run: a tiny model on synthetic scenes (4 views, 64x48), CPU-friendly, a few minutes.

    python train.py

The model is the reference tiny encoder/fusion transformer with slimmer DPT heads (64 features instead of 256):
the heads dominate the cost at this size.
"""

from fast3r_jax import config
from fast3r_jax.config import TrainConfig


def get_config() -> TrainConfig:
    model = config.tiny().replace(head=config.HeadConfig(feature_dim=64, last_dim=32, layer_dims=(24, 48, 96, 192)),
                                  image_size=64)  # the long side of its 64x48 training images
    return TrainConfig(model=model)
