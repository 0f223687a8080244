"""2D rotary position embedding (CroCo's RoPE2D): half of each head rotated by the token row, half by its column.

The rotation is split in two so the encoder pays for the trigonometry once per forward rather than once per block:
`rope_tables` turns integer positions into float32 cos/sin tables with the head layout baked in, and `apply_rope`
is one elementwise pass per q or k. Head layout (D = head dim): [row half | column half]; within each half, element
i is paired with element i + D/4 (CroCo's rotate-half), and both are turned by the same angle pos * inv_freq[i].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

RopeTables = tuple[jax.Array, jax.Array]  # cos, sin: (..., N, 1, D) float32


def _inverse_frequencies(dim: int, base: float) -> np.ndarray:
    """(dim/2,) float32 frequencies for one half of the head, computed in float32 as the reference does."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (np.float32(1.0) / np.power(np.float32(base), exponents)).astype(np.float32)


def rope_tables(positions: jax.Array, head_dim: int, base: float = 100.0) -> RopeTables:
    """cos and sin tables (..., N, 1, D) float32 for integer (row, column) positions (..., N, 2).

    sin carries rotate-half's sign (negative on the first quarter of each half), so that applying the rotation needs
    only a swap of the two quarters. The singleton axis broadcasts over heads.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    inv_freq = _inverse_frequencies(head_dim // 2, base)  # (D/4,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (..., N, 2, D/4): row half, column half
    angles = jnp.broadcast_to(angles[..., None, :], angles.shape[:-1] + (2, quarter))  # (..., N, 2, 2, D/4)
    sign = np.array([[-1.0], [1.0]], np.float32)  # (2, 1) per quarter: rotate-half of [x1, x2] is [-x2, x1]
    shape = positions.shape[:-1] + (1, head_dim)  # (..., N, 1, D)
    return jnp.cos(angles).reshape(shape), (jnp.sin(angles) * sign).reshape(shape)


def _swap_quarters(x: jax.Array) -> jax.Array:
    """Exchanges the two quarters of each half of the last axis: [a, b | c, d] -> [b, a | d, c]."""
    *lead, dim = x.shape
    return jnp.flip(x.reshape(*lead, 2, 2, dim // 4), axis=-2).reshape(x.shape)  # (..., row/col, quarter, D/4)


def apply_rope(x: jax.Array, tables: RopeTables) -> jax.Array:
    """Rotates x (B, N, H, D) by precomputed tables; float32 arithmetic, returned in x's dtype.

    A reshape, a flip of a size-2 axis and two multiply-adds: XLA fuses it into one elementwise pass.
    """
    cos, sin = tables  # (B or 1, N, 1, D)
    x32 = x.astype(jnp.float32)
    return (x32 * cos + _swap_quarters(x32) * sin).astype(x.dtype)

