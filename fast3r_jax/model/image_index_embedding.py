"""Sinusoidal image-index embedding: every token of view i gets row `id_i` of a 1-D sin-cos table.

Rows are computed from the formula (float64, cast to float32), so the table has as many rows as asked for. Integer
ids gather from the table; fractional ids (position interpolation for more views than trained ids) are evaluated
from the same formula in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _omega(dim: int, dtype) -> np.ndarray:
    if dim % 2:
        raise ValueError(f"image-index embedding needs an even width, got {dim}")
    return 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)).astype(dtype)


@functools.lru_cache(maxsize=8)
def sincos_table(num_rows: int, dim: int) -> np.ndarray:
    """(num_rows, dim) float32: row p = [sin(p * omega), cos(p * omega)], omega_j = 10000**(-2j/dim)."""
    angles = np.arange(num_rows, dtype=np.float64)[:, None] * _omega(dim, np.float64)[None]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)
    table.setflags(write=False)
    return table


def image_index_embedding(image_ids: jax.Array, dim: int, num_rows: int) -> jax.Array:
    """(..., dim) float32 embedding of image ids (...,).

    Integer ids must lie in [0, num_rows) (checked when concrete); floating ids use the formula directly.
    """
    if jnp.issubdtype(image_ids.dtype, jnp.floating):
        angles = image_ids.astype(jnp.float32)[..., None] * jnp.asarray(_omega(dim, np.float32))
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if not isinstance(image_ids, jax.core.Tracer):
        ids = np.asarray(image_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= num_rows):
            raise ValueError(f"image ids must lie in [0, {num_rows}), got range [{ids.min()}, {ids.max()}]")
    return jnp.asarray(sincos_table(num_rows, dim))[image_ids]


def sample_image_ids(key: jax.Array, batch: int, num_views: int, num_ids: int = 1000) -> jax.Array:
    """(batch, num_views) int32 ids as upstream draws them: view 0 gets 0, the others distinct ids in 1..num_ids-1."""
    if num_views > num_ids:
        raise ValueError(f"cannot draw {num_views} distinct image ids from {num_ids}; "
                         "use fractional ids (position interpolation) for more views")

    def one(k):
        return jax.random.permutation(k, num_ids - 1)[: num_views - 1] + 1

    rest = jax.vmap(one)(jax.random.split(key, batch)).astype(jnp.int32)  # (batch, V-1)
    return jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), rest], axis=1)


def check_image_ids(ids, num_views: int, num_ids: int) -> np.ndarray:
    """(N,) int32 table rows in [0, num_ids) or float32 interpolated positions; raises on anything else."""
    ids = np.asarray(ids)
    if ids.shape != (num_views,):
        raise ValueError(f"image_ids must hold one id per view ({num_views}), got shape {ids.shape}")
    if np.issubdtype(ids.dtype, np.integer):
        if ids.min() < 0 or ids.max() >= num_ids:
            raise ValueError(f"integer image ids must lie in [0, {num_ids}), got range [{ids.min()}, {ids.max()}]")
        return ids.astype(np.int32)
    if not np.issubdtype(ids.dtype, np.floating) or not np.isfinite(ids).all():
        raise ValueError(f"image ids must be integers or finite floats, got dtype {ids.dtype}")
    return ids.astype(np.float32)
