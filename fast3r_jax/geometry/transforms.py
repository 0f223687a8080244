"""Rigid and similarity transforms: the one rigid inverse, the one similarity (Umeyama) fit, and their apply helpers.

`inverse_rigid` serves host and device callers alike: numpy arrays are inverted with numpy in their own dtype
(float64 poses of the data loaders and exporters stay float64, no jax on the host path), anything else with
jax.numpy. Either way -R^T t is summed in a fixed order with each product rounded on its own (`matmul_in_order`),
which is the rounding of the reference evaluation that the pose-metric goldens check, on every backend.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Full float32 products: the default GPU precision (TF32) moves points by ~1e-3 relative.
_EXACT = jax.lax.Precision.HIGHEST


def _xp(*arrays):
    """numpy when every array is a numpy array (host path), else jax.numpy."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def safe_norm(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Euclidean norm over the last axis whose gradient at x == 0 is 0 (as PyTorch's) instead of NaN."""
    sq = jnp.sum(x * x, axis=-1, keepdims=keepdims)
    nonzero = sq != 0  # True for NaN, so NaN propagates
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Products in a fixed rounding order
# ---------------------------------------------------------------------------------------------------------------------


def rounded(x):
    """x, rounded on its own before it is added to anything.

    Under jit, XLA contracts a multiply that feeds an add into one FMA with a single rounding (its CPU backend always
    allows this), which the reference does not do. A select in between (that keeps NaN as NaN) blocks it. numpy
    rounds every operation on its own already.
    """
    if isinstance(x, np.ndarray):
        return x
    return jnp.where(jnp.isnan(x), jnp.nan, x)


def dot_in_order(a, b):
    """sum(a * b, axis=-1) accumulated left to right: the order of the reference's small float32 kernels."""
    products = rounded(a * b)
    total = products[..., 0]
    for k in range(1, products.shape[-1]):
        total = total + products[..., k]
    return total


def matmul_in_order(a, b):
    """a @ b for (..., n, k) @ (..., k, m), each entry summed like `dot_in_order`."""
    xp = _xp(a, b)
    return dot_in_order(a[..., :, None, :], xp.swapaxes(b, -1, -2)[..., None, :, :])  # (..., n, m)


# ---------------------------------------------------------------------------------------------------------------------
# Rigid transforms
# ---------------------------------------------------------------------------------------------------------------------


def _check_pose(T, name: str) -> None:
    if T.ndim < 2 or T.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must have shape (..., 4, 4), got {T.shape}")


def rigid_from_rotation_translation(rot, trans):
    """Assembles 4x4 transforms [rot | trans; 0 0 0 1] (rot may carry a scale).

    Args:
        rot: (..., 3, 3) rotation (or scaled rotation) matrices.
        trans: (..., 3) translations.

    Returns:
        (..., 4, 4) homogeneous transforms in the dtype of `rot`; numpy when both inputs are numpy arrays.
    """
    if rot.shape[-2:] != (3, 3) or trans.shape != rot.shape[:-1]:
        raise ValueError(
            f"rot must be (..., 3, 3) and trans (..., 3) with the same batch, "
            f"got {rot.shape} and {trans.shape}")
    xp = _xp(rot, trans)
    top = xp.concatenate([rot, trans[..., None].astype(rot.dtype)], axis=-1)  # (..., 3, 4)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], rot.dtype), rot.shape[:-2] + (1, 4))
    return xp.concatenate([top, bottom], axis=-2)


def inverse_rigid(T):
    """Inverts rigid 4x4 transforms [R | t] as [R^T | -R^T t] (exact for rotations).

    numpy in, numpy out (computed in the input's dtype); jax arrays (and tracers) go through jax.numpy. The last row
    of the result is exactly (0, 0, 0, 1).

    Args:
        T: (..., 4, 4) rigid transforms, e.g. camera-to-world poses.

    Returns:
        (..., 4, 4) inverse transforms, e.g. world-to-camera.
    """
    _check_pose(T, "T")
    xp = _xp(T)
    rot_inv = xp.swapaxes(T[..., :3, :3], -1, -2)  # (..., 3, 3)
    trans_inv = -matmul_in_order(rot_inv, T[..., :3, 3:])[..., 0]  # (..., 3)
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


# ---------------------------------------------------------------------------------------------------------------------
# Similarity transforms
# ---------------------------------------------------------------------------------------------------------------------


class SimilarityMoments(NamedTuple):
    """The weighted statistics a least-squares similarity needs: means (..., 3), the cross-covariance of dst and
    src (..., 3, 3) and the variance of src (...)."""

    src_mean: jax.Array
    dst_mean: jax.Array
    cov: jax.Array
    src_var: jax.Array


def similarity_moments(src: jax.Array, dst: jax.Array, weights: jax.Array | None = None) -> SimilarityMoments:
    """`fit_similarity`'s statistics of (N, 3) correspondences under (N,) weights (see there): the pass over the
    points, kept apart from the solve so that many fits can share one batched `similarity_from_moments`."""
    src, dst = jnp.asarray(src), jnp.asarray(dst)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape[0] == 0 or dst.shape != src.shape:
        raise ValueError(
            f"src and dst must both have shape (N, 3) with N > 0, got {tuple(src.shape)} and {tuple(dst.shape)}")
    weights = jnp.ones(src.shape[0], src.dtype) if weights is None else jnp.asarray(weights, src.dtype)
    if weights.shape != src.shape[:1]:
        raise ValueError(f"weights must have shape ({src.shape[0]},), got {tuple(weights.shape)}")
    keep = (weights > 0)[:, None]
    src = jnp.where(keep, src, 0.0)
    dst = jnp.where(keep, dst, 0.0)
    w = weights / jnp.sum(weights)  # (N,)
    src_mean = jnp.einsum("n,ni->i", w, src, precision=_EXACT)  # (3,)
    dst_mean = jnp.einsum("n,ni->i", w, dst, precision=_EXACT)  # (3,)
    src_c, dst_c = src - src_mean, dst - dst_mean  # (N, 3)
    cov = jnp.einsum("n,ni,nj->ij", w, dst_c, src_c, precision=_EXACT)  # (3, 3)
    src_var = jnp.sum(w * jnp.sum(src_c * src_c, axis=-1))
    return SimilarityMoments(src_mean, dst_mean, cov, src_var)


def similarity_from_moments(moments: SimilarityMoments) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(scale (...), rotation (..., 3, 3), translation (..., 3)) of the best similarity, for any leading axes."""
    u, sing, vt = jnp.linalg.svd(moments.cov)
    sign = jnp.where(jnp.linalg.det(u) * jnp.linalg.det(vt) < 0, -1.0, 1.0).astype(moments.cov.dtype)  # (...)
    flip = jnp.stack([jnp.ones_like(sign), jnp.ones_like(sign), sign], axis=-1)  # (..., 3)
    rot = jnp.matmul(u * flip[..., None, :], vt, precision=_EXACT)  # (..., 3, 3)
    scale = jnp.sum(sing * flip, axis=-1) / moments.src_var
    trans = moments.dst_mean - scale[..., None] * jnp.einsum("...ij,...j->...i", rot, moments.src_mean,
                                                             precision=_EXACT)
    return scale, rot, trans


@jax.jit
def fit_similarity(src: jax.Array, dst: jax.Array,
                   weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Least-squares similarity (s, R, t) with dst ~ s * R @ src + t (Umeyama, weights normalised to sum to 1).

    R is a proper rotation (a reflection flips the last singular direction). This is the registration of the
    reference evaluation (local pointmaps onto global ones, predicted points onto ground truth), and the pose of a
    camera whose local pointmap is fitted onto its global pointmap. Works under vmap.

    Args:
        src: (N, 3) points to move.
        dst: (N, 3) corresponding target points. Points with zero weight may hold any value (even NaN).
        weights: optional (N,) non-negative weights, not all zero (uniform when None).

    Returns:
        (scale (), rotation (3, 3), translation (3,)).
    """
    return similarity_from_moments(similarity_moments(src, dst, weights))


def similarity_matrix(scale: jax.Array, rot: jax.Array, trans: jax.Array) -> jax.Array:
    """(..., 4, 4) transform [scale * rot | trans] of a similarity as `fit_similarity` returns it."""
    return rigid_from_rotation_translation(scale[..., None, None] * rot, trans)


def align_points(src, dst, weights=None) -> np.ndarray:
    """src (..., 3) moved by the similarity that best maps it onto dst (..., 3) under per-point weights (...).

    Host helper (numpy in, numpy out; the fit itself runs in jax, in the inputs' float dtype).
    """
    src = np.asarray(src)
    weights = None if weights is None else np.asarray(weights).reshape(-1)
    scale, rot, trans = fit_similarity(src.reshape(-1, 3), np.asarray(dst).reshape(-1, 3), weights)
    return np.asarray(apply_transform(similarity_matrix(scale, rot, trans), jnp.asarray(src).reshape(-1, 3))
                      ).reshape(src.shape)
