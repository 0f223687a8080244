"""2D rotary position embedding (CroCo's RoPE2D): half of each head rotated by the token row, half by its column."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _inverse_frequencies(dim: int, base: float) -> np.ndarray:
    """(dim/2,) float32 frequencies for one half of the head, computed in float32 as the reference does."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (np.float32(1.0) / np.power(np.float32(base), exponents)).astype(np.float32)


def _rotate_1d(x: jax.Array, pos: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x (B, N, H, d) by integer positions pos (B, N) with frequencies inv_freq (d/2,)."""
    angles = pos.astype(jnp.float32)[..., None] * inv_freq  # (B, N, d/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, N, 1, d)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * jnp.cos(angles) + rotated * jnp.sin(angles)


def apply_rope2d(x: jax.Array, positions: jax.Array, base: float = 100.0) -> jax.Array:
    """Applies 2D RoPE in float32 and returns x's dtype.

    x: (B, N, H, D) queries or keys, D a multiple of 4. positions: (B, N, 2) integer (row, column) of each token.
    """
    head_dim = x.shape[-1]
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    inv_freq = _inverse_frequencies(head_dim // 2, base)
    x32 = x.astype(jnp.float32)
    rows, cols = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([_rotate_1d(rows, positions[..., 0], inv_freq),
                           _rotate_1d(cols, positions[..., 1], inv_freq)], axis=-1)
    return out.astype(x.dtype)
