"""A tiny Fast3R with narrow DPT heads and deterministic random weights, quick to compile on CPU.

The weights follow the reference goldens' drawing rule (fast3r_jax.convert.reference), so activations have
sensible scales.
"""

from __future__ import annotations

import dataclasses

from fast3r_jax import config as config_lib
from fast3r_jax.convert.reference import draw
from fast3r_jax.convert.table import params_from_torch, upstream_shapes


def small_config(**fusion: object) -> config_lib.Fast3RConfig:
    """config_lib.tiny() with 32-wide DPT heads; keyword arguments replace fusion settings (e.g. num_image_ids)."""
    cfg = config_lib.tiny()
    head = config_lib.HeadConfig(feature_dim=32, last_dim=16, layer_dims=(16, 16, 32, 32))
    return cfg.replace(head=head, fusion=dataclasses.replace(cfg.fusion, **fusion))


def small_params(cfg: config_lib.Fast3RConfig, seed: int = 0) -> dict:
    shapes = sorted(upstream_shapes(cfg).items())
    return params_from_torch({key: draw(key, shape, seed, i) for i, (key, shape) in enumerate(shapes)}, cfg)
