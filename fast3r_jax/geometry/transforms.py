"""Rigid-transform helpers for batched 4x4 camera poses and point maps."""

import jax
import jax.numpy as jnp

# Full float32 products: the default GPU precision (TF32) moves points by ~1e-3 relative.
_EXACT = jax.lax.Precision.HIGHEST


def safe_norm(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Euclidean norm over the last axis whose gradient at x == 0 is 0 (as PyTorch's) instead of NaN."""
    sq = jnp.sum(x * x, axis=-1, keepdims=keepdims)
    nonzero = sq != 0  # True for NaN, so NaN propagates
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _check_pose(T: jax.Array, name: str) -> None:
    if T.ndim < 2 or T.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must have shape (..., 4, 4), got {T.shape}")


def inverse_rigid(T: jax.Array) -> jax.Array:
    """Inverts rigid 4x4 transforms [R | t] as [R^T | -R^T t] (exact for rotations).

    Args:
        T: (..., 4, 4) rigid transforms, e.g. camera-to-world poses.

    Returns:
        (..., 4, 4) inverse transforms, e.g. world-to-camera.
    """
    _check_pose(T, "T")
    rot_inv = jnp.swapaxes(T[..., :3, :3], -1, -2)  # (..., 3, 3)
    trans_inv = -jnp.einsum("...ij,...j->...i", rot_inv, T[..., :3, 3], precision=_EXACT)  # (..., 3)
    return rigid_from_rotation_translation(rot_inv, trans_inv)


def apply_transform(T: jax.Array, pts: jax.Array) -> jax.Array:
    """Applies per-sample affine transforms to points: R @ p + t.

    Args:
        T: (*batch, 4, 4) transforms; the last row is ignored.
        pts: (*batch, ..., 3) points; all points of one sample share its transform.

    Returns:
        Transformed points with the shape of `pts`.
    """
    _check_pose(T, "T")
    batch = T.shape[:-2]
    if pts.shape[-1] != 3 or pts.shape[:len(batch)] != batch:
        raise ValueError(
            f"pts must have shape {batch} + (..., 3) to match T {T.shape}, "
            f"got {pts.shape}")
    extra = (1,) * (pts.ndim - len(batch) - 1)
    rot = T[..., :3, :3].reshape(batch + extra + (3, 3))
    trans = T[..., :3, 3].reshape(batch + extra + (3,))
    return jnp.einsum("...ij,...j->...i", rot, pts, precision=_EXACT) + trans


def rigid_from_rotation_translation(rot: jax.Array, trans: jax.Array) -> jax.Array:
    """Assembles 4x4 transforms [rot | trans; 0 0 0 1] (rot may carry a scale).

    Args:
        rot: (..., 3, 3) rotation (or scaled rotation) matrices.
        trans: (..., 3) translations.

    Returns:
        (..., 4, 4) homogeneous transforms in the dtype of `rot`.
    """
    if rot.shape[-2:] != (3, 3) or trans.shape != rot.shape[:-1]:
        raise ValueError(
            f"rot must be (..., 3, 3) and trans (..., 3) with the same batch, "
            f"got {rot.shape} and {trans.shape}")
    top = jnp.concatenate([rot, trans[..., None].astype(rot.dtype)], axis=-1)  # (..., 3, 4)
    bottom = jnp.broadcast_to(
        jnp.asarray([0.0, 0.0, 0.0, 1.0], rot.dtype), rot.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)
