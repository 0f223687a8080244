"""Evaluation metrics of Fast3R: relative camera-pose accuracy and point-cloud reconstruction quality.

Camera poses (camera-to-world, 4x4) are compared pairwise: for every pair i < j the relative motion inv(P_i) @ P_j
of the prediction is compared with that of the ground truth, giving a rotation error and a translation-direction
error in degrees. From those come RRA/RTA@tau (fraction of pairs with error below tau) and mAA(30) (area under the
accuracy curve of max(rotation, translation) error).

`pose_errors` adds absolute errors after aligning the predicted cameras onto the ground truth (`align_cameras`).

Point clouds are compared through nearest neighbours: accuracy (reconstruction -> GT), completion (GT ->
reconstruction) and normal consistency |n_a . n_b| of the matched points.

The pose functions are jitted jax.numpy that follow the reference's float32 operation order and rounding (no FMA
contraction; `transforms.matmul_in_order`), reproducing its angles to an ulp or two. This matters: the acos of a
cosine near 1 amplifies rounding, and a one-ulp cosine difference moves a near-zero translation angle by ~0.02
degrees. The point-cloud
functions are float64 numpy with a scipy KD-tree, as in the reference.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

from fast3r_jax.geometry.transforms import dot_in_order, inverse_rigid, matmul_in_order, rounded

# Rotation cosines beyond +-(1 - _COS_BOUND) use the tangent line of acos instead of acos.
_COS_BOUND = 1e-4
# Slack on the trace of a relative rotation: valid traces lie in [-1 - eps, 3 + eps].
_TRACE_EPS = 1e-4
# Added to translation norms, and the floor of 1 - cos^2 of the translation angle.
_TRANSLATION_EPS = 1e-15
# Radians reported for a translation angle that is not finite (e.g. from NaN poses).
_INVALID_TRANSLATION_ANGLE = 1e6

POSE_THRESHOLDS_DEG = (5, 15, 30)
MAA_MAX_THRESHOLD_DEG = 30


# ---------------------------------------------------------------------------------------------------------------------
# Camera poses
# ---------------------------------------------------------------------------------------------------------------------


def _check_pose_pair(pred_c2w: jax.Array, gt_c2w: jax.Array) -> None:
    for name, poses in (("pred_c2w", pred_c2w), ("gt_c2w", gt_c2w)):
        if poses.ndim != 3 or poses.shape[1:] != (4, 4):
            raise ValueError(f"{name} must have shape (N, 4, 4), got {tuple(poses.shape)}")
    if pred_c2w.shape[0] != gt_c2w.shape[0]:
        raise ValueError(
            f"pred_c2w and gt_c2w have different numbers of cameras: {pred_c2w.shape[0]} vs {gt_c2w.shape[0]}")
    if pred_c2w.shape[0] < 2:
        raise ValueError(f"need at least 2 cameras for pairwise pose errors, got {pred_c2w.shape[0]}")


def pair_indices(num_cameras: int) -> tuple[np.ndarray, np.ndarray]:
    """First and second indices of all pairs i < j, ordered (0,1), (0,2), ..., (1,2), ... (torch.combinations)."""
    return np.triu_indices(num_cameras, k=1)


def _true_divide(num: jax.Array, den: jax.Array | float) -> jax.Array:
    """num / den with one IEEE division per element (den broadcasts to num).

    XLA rewrites a division by a constant or broadcast divisor into a multiplication by its reciprocal, which can be
    an ulp off; the barrier hides the divisor so the division stays exact, as in the reference.
    """
    return num / jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(den, num.dtype), num.shape))


def _pairwise_relative(c2w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Relative motions inv(P_i) @ P_j over pairs i < j: rotations (P, 3, 3) and translations (P, 3)."""
    first, second = pair_indices(c2w.shape[0])
    rel = matmul_in_order(inverse_rigid(c2w[first]), c2w[second])  # (P, 4, 4)
    return rel[:, :3, :3], rel[:, :3, 3]


def rotation_cosine(rot_a: jax.Array, rot_b: jax.Array) -> jax.Array:
    """Cosine (trace(rot_a @ rot_b^T) - 1) / 2 of the angle between (..., 3, 3) rotations."""
    rel = matmul_in_order(rot_a, jnp.swapaxes(rot_b, -1, -2))  # (..., 3, 3)
    trace = rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2]
    return (trace - 1.0) * 0.5


def _acos_linear_extension(cos: jax.Array, bound: float) -> jax.Array:
    """acos on [-bound, bound] and its tangent lines at +-bound outside (finite for any cosine)."""
    slope = -1.0 / math.sqrt(1.0 - bound * bound)
    upper = rounded((cos - bound) * slope) + math.acos(bound)
    lower = rounded((cos + bound) * slope) + math.acos(-bound)
    inside = jnp.arccos(jnp.clip(cos, -bound, bound))
    return jnp.where(cos >= bound, upper, jnp.where(cos <= -bound, lower, inside))


@jax.jit
def rotation_angle_deg(rot_a: jax.Array, rot_b: jax.Array) -> jax.Array:
    """Angle in degrees between (..., 3, 3) rotations.

    The cosine is bounded at 1 - 1e-4 with a linear extension of acos beyond it, so identical rotations give a floor
    of about 0.405 degrees rather than 0, as in the reference evaluation.
    """
    rot_a, rot_b = jnp.asarray(rot_a), jnp.asarray(rot_b)
    if rot_a.shape[-2:] != (3, 3) or rot_b.shape != rot_a.shape:
        raise ValueError(
            f"rotations must both have shape (..., 3, 3), got {tuple(rot_a.shape)} and {tuple(rot_b.shape)}")
    angle = _acos_linear_extension(rotation_cosine(rot_a, rot_b), 1.0 - _COS_BOUND)
    return _true_divide(angle * 180, math.pi)


def _unit_directions(t: jax.Array) -> jax.Array:
    """t / (|t| + 1e-15) for (..., 3) vectors."""
    norm = jnp.sqrt(dot_in_order(t, t)) + _TRANSLATION_EPS  # (...,)
    return _true_divide(t, norm[..., None])


@jax.jit
def translation_angle_deg(t_a: jax.Array, t_b: jax.Array) -> jax.Array:
    """Angle in degrees between the directions of (..., 3) translations, blind to their sign.

    Computed as acos(sqrt(1 - max(1 - cos^2, 1e-15))), so opposite directions give 0 and identical ones give 0 up to
    rounding (in float32 a one-ulp cosine error alone is ~0.03 degrees); non-finite results become 1e6 radians, as in
    the reference.
    """
    t_a, t_b = jnp.asarray(t_a), jnp.asarray(t_b)
    if t_a.shape[-1:] != (3,) or t_b.shape != t_a.shape:
        raise ValueError(
            f"translations must both have shape (..., 3), got {tuple(t_a.shape)} and {tuple(t_b.shape)}")
    unit_a, unit_b = _unit_directions(t_a), _unit_directions(t_b)
    sin_sq = jnp.maximum(1.0 - rounded(dot_in_order(unit_b, unit_a) ** 2), _TRANSLATION_EPS)
    angle = jnp.arccos(jnp.sqrt(1.0 - sin_sq))
    angle = jnp.where(jnp.isfinite(angle), angle, _INVALID_TRANSLATION_ANGLE)
    return _true_divide(angle * 180.0, math.pi)


@jax.jit
def relative_pose_errors(pred_c2w: jax.Array, gt_c2w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rotation and translation-direction errors in degrees of the relative poses of all camera pairs i < j.

    Args:
        pred_c2w: (N, 4, 4) predicted camera-to-world poses.
        gt_c2w: (N, 4, 4) ground-truth camera-to-world poses of the same cameras.

    Returns:
        (rotation errors (P,), translation errors (P,)) with P = N (N - 1) / 2, pairs in `pair_indices` order.
    """
    pred_c2w, gt_c2w = jnp.asarray(pred_c2w), jnp.asarray(gt_c2w)
    _check_pose_pair(pred_c2w, gt_c2w)
    rot_gt, trans_gt = _pairwise_relative(gt_c2w)
    rot_pred, trans_pred = _pairwise_relative(pred_c2w)
    return rotation_angle_deg(rot_gt, rot_pred), translation_angle_deg(trans_gt, trans_pred)


def accuracy_at(errors: jax.Array, thresholds: Sequence[float]) -> jax.Array:
    """Fraction of errors strictly below each threshold, (T,): RRA / RTA when given rotation / translation errors."""
    errors = jnp.asarray(errors)
    if errors.ndim != 1 or errors.shape[0] == 0:
        raise ValueError(f"errors must be a non-empty 1-D array, got shape {tuple(errors.shape)}")
    taus = jnp.asarray(thresholds, errors.dtype)  # (T,)
    below = jnp.sum(errors[None, :] < taus[:, None], axis=1, dtype=errors.dtype)  # (T,)
    return _true_divide(below, errors.shape[0])


def _histc(values: jax.Array, bins: int, low: float, high: float) -> jax.Array:
    """Counts of `values` in `bins` equal bins over [low, high], with torch.histc's rules.

    Bin floor((v - low) * bins / (high - low)); v == high falls in the last bin; values outside [low, high] and NaN
    are not counted.
    """
    inside = (values >= low) & (values <= high)
    index = jnp.floor(_true_divide((values - low) * bins, high - low)).astype(jnp.int32)
    index = jnp.where(inside, jnp.minimum(index, bins - 1), bins)  # extra bin `bins` takes the rejects
    return jnp.zeros(bins + 1, values.dtype).at[index].add(1)[:bins]


@functools.partial(jax.jit, static_argnames="max_threshold")
def mean_average_accuracy(r_err: jax.Array, t_err: jax.Array, max_threshold: int = MAA_MAX_THRESHOLD_DEG) -> jax.Array:
    """mAA(max_threshold): accuracy of max(r_err, t_err) averaged over a grid of thresholds.

    As in the reference: a histogram of max(r, t) with max_threshold + 1 bins over [0, max_threshold] (bin width
    30/31 degrees by default), divided by the number of pairs, cumulated, then averaged over the bins.
    """
    r_err, t_err = jnp.asarray(r_err), jnp.asarray(t_err)
    if r_err.ndim != 1 or r_err.shape[0] == 0 or r_err.shape != t_err.shape:
        raise ValueError(
            f"r_err and t_err must be non-empty 1-D arrays of equal length, got {tuple(r_err.shape)} and "
            f"{tuple(t_err.shape)}")
    max_errors = jnp.maximum(r_err, t_err)  # (P,)
    histogram = _histc(max_errors, max_threshold + 1, 0.0, float(max_threshold))
    accuracies = jnp.cumsum(_true_divide(histogram, max_errors.shape[0]))  # (max_threshold + 1,)
    return _true_divide(jnp.sum(accuracies), accuracies.shape[0])


@jax.jit
def _relative_rotation_traces(pred_c2w: jax.Array, gt_c2w: jax.Array) -> jax.Array:
    """Traces of the (P,) rotations compared by `relative_pose_errors`."""
    return 2.0 * rotation_cosine(_pairwise_relative(gt_c2w)[0], _pairwise_relative(pred_c2w)[0]) + 1.0


def _check_relative_traces(pred_c2w: jax.Array, gt_c2w: jax.Array) -> None:
    """Rejects poses whose relative rotations have a trace outside [-1 - eps, 3 + eps] (not rotations)."""
    trace = np.asarray(_relative_rotation_traces(pred_c2w, gt_c2w))  # (P,)
    bad = np.flatnonzero((trace < -1.0 - _TRACE_EPS) | (trace > 3.0 + _TRACE_EPS))  # NaN passes, as in the reference
    if bad.size:
        first, second = pair_indices(pred_c2w.shape[0])
        pairs = [(int(first[p]), int(second[p])) for p in bad]
        raise ValueError(f"pose rotation blocks are not rotations: relative rotation trace out of range for pairs "
                         f"{pairs}")


def camera_pose_metrics(pred_c2w: jax.Array, gt_c2w: jax.Array) -> dict[str, float]:
    """RRA and RTA at 5/15/30 degrees and mAA(30) of one scene's (N, 4, 4) camera-to-world poses."""
    pred_c2w, gt_c2w = jnp.asarray(pred_c2w), jnp.asarray(gt_c2w)
    _check_pose_pair(pred_c2w, gt_c2w)
    _check_relative_traces(pred_c2w, gt_c2w)
    r_err, t_err = relative_pose_errors(pred_c2w, gt_c2w)
    metrics = {}
    for prefix, errors in (("RRA", r_err), ("RTA", t_err)):
        for tau, value in zip(POSE_THRESHOLDS_DEG, accuracy_at(errors, POSE_THRESHOLDS_DEG)):
            metrics[f"{prefix}_at_{tau}"] = float(value)
    metrics[f"mAA_{MAA_MAX_THRESHOLD_DEG}"] = float(mean_average_accuracy(r_err, t_err))
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Camera poses after aligning the prediction onto the ground truth
# ---------------------------------------------------------------------------------------------------------------------


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    return u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt


def align_cameras(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> np.ndarray:
    """Predicted c2w (V, 4, 4) moved onto the ground truth by one similarity x -> s R x + t (float64, host).

    R is the chordal mean of the per-view rotation offsets R_gt R_pred^T; s and t are then the least-squares fit of
    the camera centres (s = 1 for a single view). Unlike a point fit (`transforms.fit_similarity` on the centres),
    the rotation comes from the camera orientations, so it is defined for two cameras or collinear centres too.
    Rotation columns of the result stay orthonormal.
    """
    pred_c2w, gt_c2w = np.asarray(pred_c2w, np.float64), np.asarray(gt_c2w, np.float64)
    rot = _nearest_rotation(np.einsum("vij,vkj->ik", gt_c2w[:, :3, :3], pred_c2w[:, :3, :3]))
    src = pred_c2w[:, :3, 3] @ rot.T  # (V, 3)
    dst = gt_c2w[:, :3, 3]
    src_c, dst_c = src - src.mean(0), dst - dst.mean(0)
    var = float(np.sum(src_c * src_c))
    scale = float(np.sum(src_c * dst_c)) / var if var > 0 else 1.0
    out = np.tile(np.eye(4), (len(pred_c2w), 1, 1))
    out[:, :3, :3] = rot @ pred_c2w[:, :3, :3]
    out[:, :3, 3] = scale * src + (dst.mean(0) - scale * src.mean(0))
    return out


def rotation_errors_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """Geodesic angles (...) between rotations, from |Ra - Rb|_F = 2 sqrt(2) sin(angle / 2) (accurate near 0)."""
    diff = np.linalg.norm(np.asarray(rot_a, np.float64) - np.asarray(rot_b, np.float64), axis=(-2, -1))
    return np.rad2deg(2 * np.arcsin(np.minimum(diff / (2 * np.sqrt(2)), 1.0)))


def pose_errors(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> dict[str, float]:
    """RRA/RTA at 5/15/30 degrees and mAA(30) of the relative poses (the reference evaluation), plus the mean
    rotation error (degrees) and camera-centre error (ground-truth units, and relative to the mean distance of the
    ground-truth cameras from their centroid) after `align_cameras`."""
    pred_c2w, gt_c2w = np.asarray(pred_c2w, np.float64), np.asarray(gt_c2w, np.float64)
    if pred_c2w.shape != gt_c2w.shape or pred_c2w.shape[1:] != (4, 4) or len(pred_c2w) < 2:
        raise ValueError(f"need matching (V >= 2, 4, 4) poses, got {pred_c2w.shape} and {gt_c2w.shape}")
    out = camera_pose_metrics(jnp.asarray(pred_c2w, jnp.float32), jnp.asarray(gt_c2w, jnp.float32))
    aligned = align_cameras(pred_c2w, gt_c2w)
    centre_err = np.linalg.norm(aligned[:, :3, 3] - gt_c2w[:, :3, 3], axis=-1)  # (V,)
    spread = np.linalg.norm(gt_c2w[:, :3, 3] - gt_c2w[:, :3, 3].mean(0), axis=-1).mean()
    out["rotation_error_deg"] = float(rotation_errors_deg(aligned[:, :3, :3], gt_c2w[:, :3, :3]).mean())
    out["translation_error"] = float(centre_err.mean())
    out["translation_error_rel"] = float(centre_err.mean() / spread) if spread > 0 else float("nan")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Reconstruction quality
# ---------------------------------------------------------------------------------------------------------------------


def _as_cloud(name: str, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 3) with N > 0, got {points.shape}")
    return points


def _checked_clouds(
    gt_points: np.ndarray, rec_points: np.ndarray, gt_normals: Optional[np.ndarray], rec_normals: Optional[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """Validated float64 copies; normals are kept only when both are given (as in the reference)."""
    gt_points, rec_points = _as_cloud("gt_points", gt_points), _as_cloud("rec_points", rec_points)
    if gt_normals is None or rec_normals is None:
        return gt_points, rec_points, None, None
    gt_normals, rec_normals = _as_cloud("gt_normals", gt_normals), _as_cloud("rec_normals", rec_normals)
    if gt_normals.shape != gt_points.shape:
        raise ValueError(f"gt_normals shape {gt_normals.shape} does not match gt_points shape {gt_points.shape}")
    if rec_normals.shape != rec_points.shape:
        raise ValueError(f"rec_normals shape {rec_normals.shape} does not match rec_points shape {rec_points.shape}")
    return gt_points, rec_points, gt_normals, rec_normals


def _nearest_neighbour_stats(
    query: np.ndarray,
    reference: np.ndarray,
    query_normals: Optional[np.ndarray],
    reference_normals: Optional[np.ndarray],
) -> tuple[float, ...]:
    """Mean and median distance from each query point to its nearest reference point, then (with normals) mean and
    median |n_query . n_nearest|."""
    distances, nearest = cKDTree(reference).query(query, workers=-1)  # (Q,), (Q,)
    stats = (float(np.mean(distances)), float(np.median(distances)))
    if query_normals is None:
        return stats
    consistency = np.abs(np.sum(reference_normals[nearest] * query_normals, axis=-1))  # (Q,)
    return stats + (float(np.mean(consistency)), float(np.median(consistency)))


def accuracy(
    gt_points: np.ndarray,
    rec_points: np.ndarray,
    gt_normals: Optional[np.ndarray] = None,
    rec_normals: Optional[np.ndarray] = None,
) -> tuple[float, ...]:
    """Reconstruction -> GT: (mean, median) nearest-neighbour distance of the (M, 3) rec_points to the (N, 3)
    gt_points, plus (mean, median) normal consistency when both normal sets are given."""
    gt_points, rec_points, gt_normals, rec_normals = _checked_clouds(gt_points, rec_points, gt_normals, rec_normals)
    return _nearest_neighbour_stats(rec_points, gt_points, rec_normals, gt_normals)


def completion(
    gt_points: np.ndarray,
    rec_points: np.ndarray,
    gt_normals: Optional[np.ndarray] = None,
    rec_normals: Optional[np.ndarray] = None,
) -> tuple[float, ...]:
    """GT -> reconstruction: (mean, median) nearest-neighbour distance of the (N, 3) gt_points to the (M, 3)
    rec_points, plus (mean, median) normal consistency when both normal sets are given."""
    gt_points, rec_points, gt_normals, rec_normals = _checked_clouds(gt_points, rec_points, gt_normals, rec_normals)
    return _nearest_neighbour_stats(gt_points, rec_points, gt_normals, rec_normals)

