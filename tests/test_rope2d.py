"""2D RoPE (precomputed tables + one fused apply) against a direct numpy transcription of CroCo's RoPE2D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast3r_jax.model.rope2d import apply_rope, rope_tables


def apply_rope2d(x: jax.Array, positions: jax.Array, base: float = 100.0) -> jax.Array:
    """x (B, N, H, D) rotated by the 2D RoPE of integer (row, column) positions (B, N, 2), in one call."""
    return apply_rope(x, rope_tables(positions, x.shape[-1], base))


def _reference(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """CroCo RoPE2D: first half of each head rotated by the row, second half by the column.

    Within a half of size d, element i pairs with i + d/2 (rotate-half [-x2, x1]) at angle pos * base**(-2i/d).
    The angles are float32 products as in the reference model (near |angle| = 50 a float32 ulp is ~4e-6, so float64
    angles would differ by that much); everything after them is float64.
    """
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    inv_freq = np.float32(1) / np.float32(base) ** (np.arange(0, half, 2, dtype=np.float32) / np.float32(half))
    out = []
    for part, pos in ((x[..., :half], positions[..., 0]), (x[..., half:], positions[..., 1])):
        angles = (pos[..., None].astype(np.float32) * inv_freq).astype(np.float64)  # (B, N, d/2)
        angles = np.concatenate([angles, angles], -1)[:, :, None]  # (B, N, 1, d)
        x1, x2 = part[..., :half // 2], part[..., half // 2:]
        out.append(part * np.cos(angles) + np.concatenate([-x2, x1], -1) * np.sin(angles))
    return np.concatenate(out, -1)


def _inputs(seed: int, batch: int = 3, tokens: int = 40, heads: int = 2, head_dim: int = 32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, tokens, heads, head_dim)).astype(np.float32)
    positions = rng.integers(0, 48, size=(batch, tokens, 2)).astype(np.int32)  # rows and columns differ per token
    return x, positions


@pytest.mark.parametrize("head_dim", [8, 32, 64])
def test_matches_reference_formula(head_dim):
    x, positions = _inputs(0, head_dim=head_dim)
    out = jax.jit(apply_rope2d, static_argnums=2)(jnp.asarray(x), jnp.asarray(positions), 100.0)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert np.abs(np.asarray(out) - _reference(x, positions, 100.0)).max() < 2e-6


def test_tables_of_one_sample_broadcast_over_the_batch():
    x, positions = _inputs(1)
    shared = np.broadcast_to(positions[:1], positions.shape)
    tables = rope_tables(jnp.asarray(shared[:1]), x.shape[-1], 100.0)
    assert all(t.shape == (1, x.shape[1], 1, x.shape[-1]) and t.dtype == jnp.float32 for t in tables)
    out = apply_rope(jnp.asarray(x), tables)
    np.testing.assert_array_equal(out, apply_rope2d(jnp.asarray(x), jnp.asarray(shared), 100.0))
    assert np.abs(np.asarray(out) - _reference(x, shared, 100.0)).max() < 2e-6


def test_bfloat16_in_bfloat16_out_computed_in_float32():
    x, positions = _inputs(2)
    x16 = jnp.asarray(x, jnp.bfloat16)
    out = apply_rope2d(x16, jnp.asarray(positions), 100.0)
    assert out.dtype == jnp.bfloat16
    in_float32 = apply_rope2d(x16.astype(jnp.float32), jnp.asarray(positions), 100.0)
    np.testing.assert_array_equal(out, in_float32.astype(jnp.bfloat16))  # one rounding, at the end
    ref = _reference(np.asarray(x16, np.float32), positions, 100.0)
    assert np.abs(np.asarray(out, np.float32) - ref).max() <= 2 ** -8 * np.abs(ref).max()


def test_apply_has_no_concatenate_or_trigonometry():
    """The per-block part is a single elementwise pass: no concatenate, and cos/sin stay in the tables."""
    x, positions = _inputs(3)
    tables = rope_tables(jnp.asarray(positions), x.shape[-1], 100.0)
    hlo = jax.jit(apply_rope).lower(jnp.asarray(x, jnp.bfloat16), tables).as_text()
    assert not any(op in hlo for op in ("concatenate", "cosine", "sine", "slice"))


def test_head_dim_must_be_a_multiple_of_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_tables(jnp.zeros((1, 3, 2), jnp.int32), 6, 100.0)
