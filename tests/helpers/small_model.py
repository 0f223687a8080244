"""A tiny Fast3R with narrow DPT heads and deterministic random weights, quick to compile on CPU, a random
training batch for it, and copies of a checkpoint folder that claim another training size.

The weights follow the reference goldens' drawing rule (fast3r_jax.convert.reference), so activations have
sensible scales.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import numpy as np

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


def random_batch(batch: int = 8, views: int = 2, height: int = 32, width: int = 48, seed: int = 0) -> list[dict]:
    """A training batch of `views` dicts: uniform images, noisy points in front of each camera, 90% valid pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(views):
        pose = np.eye(4, dtype=np.float32)
        pose[:3, 3] = rng.normal(size=3)
        out.append(dict(img=rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32),
                        true_shape=np.tile(np.array([[height, width]], np.int32), (batch, 1)),
                        pts3d=(rng.normal(size=(batch, height, width, 3)) + [0, 0, 3]).astype(np.float32),
                        valid_mask=rng.uniform(size=(batch, height, width)) > 0.1,
                        camera_pose=np.tile(pose, (batch, 1, 1))))
    return out


def with_image_size(src: pathlib.Path, dst: pathlib.Path, size: int) -> pathlib.Path:
    """A copy of checkpoint folder `src` whose config says it was trained at `size` pixels (long side)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(cfg | {"image_size": size}))
    return dst
