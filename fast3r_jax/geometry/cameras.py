"""Cameras from predicted pointmaps: focal lengths, poses, and the one dispatcher `estimate_cameras`.

Fast3R predicts, per view, a global pointmap (in the frame of view 0) and a local pointmap (in the view's own
camera frame). Cameras follow from them with one of POSE_SOLVERS:

* 'pnp', the reference path: focal by Weiszfeld on view 0's global pointmap, then RANSAC-PnP per view with
  OpenCV (host-side numpy, views solved in a thread pool; needs ``opencv-python-headless``); with
  pnp_focal='per-view' each view uses its own focal, fitted on its local pointmap, instead;
* 'procrustes', on the device: focal by Weiszfeld on each local pointmap and the pose of each camera as the
  similarity that maps its local pointmap onto its global pointmap (confidence-weighted Umeyama), all views of
  one image shape in one jitted, vmapped call.

Known intrinsics (`read_intrinsics`, `resize_crop_intrinsics`) replace the estimated focal: PnP solves with
them and Procrustes reports them.

Pixel conventions: integer pixel coordinates (x, y) = (column, row), principal point (W/2, H/2), square pixels
(given intrinsics may have any principal point and fx != fy). Poses are camera-to-world 4x4 matrices in the frame
of the global pointmaps.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import math
import os
import pathlib
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fast3r_jax.geometry.transforms import (
    apply_transform,
    fit_similarity,
    inverse_rigid,
    rigid_from_rotation_translation,
    similarity_matrix,
)
from fast3r_jax.io import export

POSE_SOLVERS = ("pnp", "procrustes")
# PnP's focal without known intrinsics: view 0's for every view (upstream's: one camera), or each view's own
PNP_FOCALS = ("shared", "per-view")
PNP_ITERATIONS = 100  # RANSAC iterations of upstream's demo and of the reference's pose evaluation
FOCAL_CONF_PERCENTILE = 10.0  # upstream's confidence percentile for the focal fit
WEISZFELD_ITERS = 100
PNP_REPROJ_ERROR_PX = 5.0
PNP_MIN_CONF = 1.0  # PnP uses pixels with conf strictly above this (all of them for conf = 1 + exp(.)).
NUM_GUESSED_FOCALS = 100
FOCAL_MODES = ("first_view_from_global_head", "individual")
MIN_PNP_POINTS = 4
MIN_ALIGN_POINTS = 3

log = logging.getLogger(__name__)


def _check_pointmaps(pts3d, conf, batched: bool, name: str = "pts3d") -> None:
    """Raises ValueError unless pts3d is ([V,] H, W, 3) and conf is ([V,] H, W) with matching sizes."""
    want = "(V, H, W, 3)" if batched else "(H, W, 3)"
    if pts3d.ndim != (4 if batched else 3) or pts3d.shape[-1] != 3:
        raise ValueError(f"{name} must have shape {want}, got {tuple(pts3d.shape)}")
    if tuple(conf.shape) != tuple(pts3d.shape[:-1]):
        raise ValueError(
            f"conf must have shape {tuple(pts3d.shape[:-1])} to match {name} {tuple(pts3d.shape)}, "
            f"got {tuple(conf.shape)}")


def conf_quantile(conf: jax.Array, q: float | jax.Array) -> jax.Array:
    """q-quantile (q in [0, 1]) of all entries, interpolating linearly between order statistics.

    Same rule and float32 rounding as torch.quantile's default: rank = q * (n - 1), then a lerp between the
    neighbouring sorted values that returns them exactly when they are equal (ties keep `>=` masks intact).
    """
    values = jnp.sort(conf.reshape(-1))  # (n,)
    rank = jnp.asarray(q, values.dtype) * (values.shape[0] - 1)
    lo = jnp.floor(rank).astype(jnp.int32)
    hi = jnp.ceil(rank).astype(jnp.int32)
    frac = rank - lo.astype(values.dtype)
    below, above = values[lo], values[hi]
    return jnp.where(frac < 0.5, below + frac * (above - below), above - (above - below) * (1 - frac))


def _centered_pixels(height: int, width: int, dtype) -> jax.Array:
    """Integer pixel grid (x, y) minus the principal point (W/2, H/2)."""
    xs, ys = jnp.meshgrid(jnp.arange(width), jnp.arange(height), indexing="xy")
    grid = jnp.stack([xs, ys], axis=-1).astype(dtype)  # (H, W, 2)
    return grid - jnp.asarray([width / 2, height / 2], dtype)


def _weiszfeld_focal(pts3d: jax.Array, mask: jax.Array) -> jax.Array:
    """Focal f minimising sum over masked pixels of |pixel - f * (x, y) / z| (L1 reprojection, IRLS)."""
    height, width = mask.shape
    pixels = _centered_pixels(height, width, pts3d.dtype)  # (H, W, 2)
    rays = jnp.nan_to_num(pts3d[..., :2] / pts3d[..., 2:3], nan=0.0, posinf=0.0, neginf=0.0)  # (H, W, 2)
    dot_ray_px = jnp.where(mask, jnp.sum(rays * pixels, axis=-1), 0.0)  # (H, W)
    dot_ray_ray = jnp.where(mask, jnp.sum(rays * rays, axis=-1), 0.0)  # (H, W)

    def reweight(_, focal):
        dist = jnp.linalg.norm(pixels - focal * rays, axis=-1)  # (H, W)
        weight = 1.0 / jnp.maximum(dist, 1e-8)
        return jnp.sum(weight * dot_ray_px) / jnp.sum(weight * dot_ray_ray)

    focal_l2 = jnp.sum(dot_ray_px) / jnp.sum(dot_ray_ray)  # closed-form least squares start
    focal = jax.lax.fori_loop(0, WEISZFELD_ITERS, reweight, focal_l2)
    focal_60deg_fov = max(height, width) / (2 * np.tan(np.deg2rad(30.0)))
    focal = jnp.where(jnp.any(mask), focal, focal_60deg_fov)
    return jnp.maximum(focal, 0.0)  # negative fits (not camera-like pointmaps) become 0


@jax.jit
def estimate_focal(pts3d: jax.Array, conf: jax.Array, min_conf_percentile: float = 10.0) -> jax.Array:
    """Focal length (pixels) of a pointmap expressed in its own camera frame.

    Uses the pixels whose confidence is at least the `min_conf_percentile` percentile, then Weiszfeld
    (init by least squares, then 100 reweighting steps). Returns 0.0 when the best fit is negative.

    Args:
        pts3d: (H, W, 3) points in the camera frame of this view.
        conf: (H, W) confidences.
        min_conf_percentile: percentile in [0, 100] of `conf` below which pixels are ignored.

    Returns:
        Scalar float array.
    """
    _check_pointmaps(pts3d, conf, batched=False)
    mask = conf >= conf_quantile(conf, min_conf_percentile / 100.0)  # (H, W)
    return _weiszfeld_focal(pts3d, mask)


@jax.jit
def estimate_focals(pts3d: jax.Array, conf: jax.Array, min_conf_percentile: float = 10.0) -> jax.Array:
    """`estimate_focal` for a stack of views: (V, H, W, 3), (V, H, W) -> (V,)."""
    _check_pointmaps(pts3d, conf, batched=True)
    return jax.vmap(estimate_focal, in_axes=(0, 0, None))(pts3d, conf, min_conf_percentile)


def focal_from_local(pts3d_local: jax.Array, conf_local: jax.Array,
                     min_conf_percentile: float = 10.0) -> jax.Array:
    """Per-view focal (V,) from the local-head pointmaps (V, H, W, 3) and their confidences (V, H, W).

    Local pointmaps are in each view's own camera frame, which is what the pinhole fit assumes; global
    pointmaps satisfy that only for view 0.
    """
    return estimate_focals(pts3d_local, conf_local, min_conf_percentile)


def _check_pair(pts3d_local, pts3d_global, conf) -> None:
    _check_pointmaps(pts3d_global, conf, batched=True, name="pts3d_global")
    if pts3d_local.shape != pts3d_global.shape:
        raise ValueError(
            f"pts3d_local {tuple(pts3d_local.shape)} and pts3d_global {tuple(pts3d_global.shape)} must match")
    if pts3d_local.shape[1] * pts3d_local.shape[2] < MIN_ALIGN_POINTS:
        raise ValueError(f"need at least {MIN_ALIGN_POINTS} pixels per view, got {tuple(pts3d_local.shape)}")


@jax.jit
def procrustes_poses(pts3d_local: jax.Array, pts3d_global: jax.Array,
                     conf: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Camera-to-world poses from aligning each local pointmap onto its global pointmap.

    Solves global ~= scale * R @ local + t per view (confidence-weighted Umeyama). The camera of view i then
    has c2w = [R | t] in the global frame, and `scale` is the size of the global map relative to the local one.

    Args:
        pts3d_local: (V, H, W, 3) points in each view's camera frame.
        pts3d_global: (V, H, W, 3) the same pixels in the global (view-0) frame.
        conf: (V, H, W) positive per-pixel weights (e.g. the global or the product of both confidences).

    Returns:
        c2w (V, 4, 4) rigid poses and scale (V,).
    """
    _check_pair(pts3d_local, pts3d_global, conf)
    num_views = conf.shape[0]
    scale, rot, trans = jax.vmap(fit_similarity)(
        pts3d_local.reshape(num_views, -1, 3), pts3d_global.reshape(num_views, -1, 3),
        conf.reshape(num_views, -1))  # (V,), (V, 3, 3), (V, 3)
    return rigid_from_rotation_translation(rot, trans), scale


@jax.jit
def align_local_to_global(pts3d_local: jax.Array, pts3d_global: jax.Array, conf: jax.Array,
                          min_conf_percentile: float = 0.0, valid: jax.Array | None = None) -> jax.Array:
    """Maps every local pointmap into the global frame by its best unweighted similarity.

    The similarity is fitted on the valid pixels whose confidence is at least the `min_conf_percentile` percentile
    of the view's confidences (on all valid pixels if fewer than 3 qualify), then applied to all pixels, as the
    reference evaluation does before computing reconstruction metrics. A view with fewer than 3 valid pixels is
    left where it is.

    Args:
        pts3d_local: (V, H, W, 3) local-head points.
        pts3d_global: (V, H, W, 3) global-head points.
        conf: (V, H, W) global-head confidences (only used for the percentile mask).
        min_conf_percentile: percentile in [0, 100].
        valid: optional (V, H, W) bool pixels that may take part in the fit (all when None).

    Returns:
        (V, H, W, 3) local points in the global frame.
    """
    _check_pair(pts3d_local, pts3d_global, conf)
    valid = jnp.ones(conf.shape, bool) if valid is None else jnp.asarray(valid, bool)
    if valid.shape != conf.shape:
        raise ValueError(f"valid must have shape {tuple(conf.shape)} to match conf, got {tuple(valid.shape)}")

    def align_view(local, glob, view_conf, view_valid):
        mask = (view_conf >= conf_quantile(view_conf, min_conf_percentile / 100.0)) & view_valid  # (H, W)
        mask = jnp.where(jnp.sum(mask) >= MIN_ALIGN_POINTS, mask, view_valid)
        scale, rot, trans = fit_similarity(local.reshape(-1, 3), glob.reshape(-1, 3),
                                           mask.reshape(-1).astype(local.dtype))
        moved = apply_transform(similarity_matrix(scale, rot, trans), local)  # (H, W, 3)
        return jnp.where(jnp.sum(mask) >= MIN_ALIGN_POINTS, moved, local)

    return jax.vmap(align_view)(pts3d_local, pts3d_global, conf, valid)


# ---------------------------------------------------------------------------------------------------------------------
# PnP (reference path, host)
# ---------------------------------------------------------------------------------------------------------------------


def _pinhole(focal: float, height: int, width: int) -> np.ndarray:
    """(3, 3) float32 K with square pixels and the principal point at (W/2, H/2)."""
    return np.float32([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])


def pnp_correspondences(pts3d: np.ndarray, conf: np.ndarray,
                        max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3), pixels (N, 2) (x, y)) float32 of the pixels with conf > PNP_MIN_CONF, in row-major order.

    max_points: keep at most this many, evenly spaced along that order (deterministic, spread over the whole
    image); None keeps all of them (upstream's input).
    """
    flat = np.flatnonzero(conf.reshape(-1) > PNP_MIN_CONF)  # (N,) row-major pixel indices
    if max_points is not None and len(flat) > max_points:
        flat = flat[np.round(np.linspace(0, len(flat) - 1, max_points)).astype(np.int64)]
    width = conf.shape[1]
    pixels = np.stack([flat % width, flat // width], axis=-1).astype(np.float32)
    return pts3d.reshape(-1, 3)[flat], pixels


def _pnp_ransac(cv2, points: np.ndarray, pixels: np.ndarray, candidates: Sequence[np.ndarray],
                niter: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(index of the best candidate K, rvec, tvec) by RANSAC-PnP inlier count on the correspondences points
    (N, 3) <-> pixels (N, 2), or None if all fail.

    Safe to call from several threads: OpenCV releases the GIL and seeds the RANSAC generator of every call the
    same way, so a view's result does not depend on what else runs.
    """
    if len(points) < MIN_PNP_POINTS:
        return None
    best_inliers, best = 0, None
    for index, intrinsics in enumerate(candidates):
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(
                points, pixels, intrinsics, None, iterationsCount=niter,
                reprojectionError=PNP_REPROJ_ERROR_PX, flags=cv2.SOLVEPNP_SQPNP)
        except cv2.error:  # degenerate inputs (e.g. zero focal) make the solver throw
            continue
        if ok and len(inliers) > best_inliers:
            best_inliers, best = len(inliers), (index, rvec, tvec)
    return best


def estimate_camera_poses_pnp(
    pts3d_global: Sequence[np.ndarray] | np.ndarray,
    conf: Sequence[np.ndarray] | np.ndarray,
    focal_mode: str = "first_view_from_global_head",
    niter: int = 10,
    *,
    intrinsics: np.ndarray | None = None,
    workers: int | None = None,
    max_points: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference-evaluation cameras: Weiszfeld focal and OpenCV RANSAC-PnP (SQPnP) per view, on the host.

    Each view's global points are matched to their pixels (conf > 1, principal point (W/2, H/2),
    5 px inlier threshold, `niter` RANSAC iterations). With 'first_view_from_global_head' every view uses
    the focal estimated on view 0's global pointmap (10th confidence percentile); with 'individual' each
    view keeps the focal among 100 geometric steps in [max(H, W) / 2, 3 max(H, W)] with the most inliers.
    Given `intrinsics`, each view is solved with its own K instead (focal_mode is then unused).
    A view whose PnP fails gets the identity pose and a NaN focal. Views are solved in a pool of `workers`
    threads (default: one per CPU, at most one per view); the result does not depend on it. `max_points` caps
    the correspondences per view (`pnp_correspondences`; None, the default, keeps all of them, as upstream).

    Args:
        pts3d_global: V arrays (H_i, W_i, 3) (or one (V, H, W, 3) array) of points in the global frame.
        conf: V matching (H_i, W_i) confidence arrays (or one (V, H, W) array).
        focal_mode: one of FOCAL_MODES.
        niter: RANSAC iterations.
        intrinsics: optional known (V, 3, 3) pinhole matrices at the pointmaps' resolution.
        workers: threads solving views concurrently.
        max_points: correspondences per view at most (an evenly spaced subset), or None for all.

    Returns:
        c2w (V, 4, 4) float32 and focals (V,) float32 (fx of the K used).
    """
    try:
        import cv2  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError("estimate_camera_poses_pnp needs OpenCV: pip install opencv-python-headless") from err
    if focal_mode not in FOCAL_MODES:
        raise ValueError(f"focal_mode must be one of {FOCAL_MODES}, got {focal_mode!r}")
    if max_points is not None and max_points < MIN_PNP_POINTS:
        raise ValueError(f"max_points must be at least {MIN_PNP_POINTS} or None, got {max_points}")
    views = [np.asarray(p, np.float32) for p in pts3d_global]
    confs = [np.asarray(c, np.float32) for c in conf]
    if not views or len(views) != len(confs):
        raise ValueError(f"need the same non-zero number of pointmaps and confidences, got {len(views)} and {len(confs)}")
    for i, (pts, view_conf) in enumerate(zip(views, confs)):
        _check_pointmaps(pts, view_conf, batched=False, name=f"pts3d_global[{i}]")

    if intrinsics is not None:
        known = check_intrinsics(intrinsics, len(confs))
        candidates = [[k.astype(np.float32)] for k in known]
    elif focal_mode == "first_view_from_global_head":
        shared_focal = float(estimate_focal(views[0], confs[0], FOCAL_CONF_PERCENTILE))
        candidates = [[_pinhole(shared_focal, *c.shape)] for c in confs]
    else:
        candidates = [[_pinhole(f, *c.shape) for f in np.geomspace(max(c.shape) / 2, max(c.shape) * 3,
                                                                   num=NUM_GUESSED_FOCALS)] for c in confs]

    def solve(view: int):
        points, pixels = pnp_correspondences(views[view], confs[view], max_points)
        return _pnp_ransac(cv2, points, pixels, candidates[view], niter)

    workers = min(len(views), workers or os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(solve, range(len(views))))

    w2c = np.tile(np.eye(4), (len(views), 1, 1))  # (V, 4, 4) float64
    focals = np.full(len(views), np.nan, np.float32)
    for view, result in enumerate(found):
        if result is not None:
            index, rvec, tvec = result
            w2c[view, :3, :3], w2c[view, :3, 3] = cv2.Rodrigues(rvec)[0], tvec.reshape(3)
            focals[view] = candidates[view][index][0, 0]
    c2w = inverse_rigid(w2c).astype(np.float32)  # (V, 4, 4)
    c2w[np.isnan(focals)] = np.eye(4)
    return c2w, focals


# ---------------------------------------------------------------------------------------------------------------------
# The dispatcher
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cameras:
    """Estimated cameras in the frame of view 0: c2w (V, 4, 4), intrinsics (V, 3, 3), image_sizes (V, 2) (W, H),
    and the views whose estimate failed (identity pose and/or a 60-degree field-of-view focal substituted)."""

    c2w: np.ndarray
    intrinsics: np.ndarray
    image_sizes: np.ndarray
    failed: tuple[int, ...]

    @property
    def focals(self) -> np.ndarray:
        return self.intrinsics[:, 0, 0]


def _fallback_focal(height: int, width: int) -> float:
    return max(height, width) / (2 * math.tan(math.radians(30.0)))


@functools.partial(jax.jit, static_argnames="with_focals")
def _procrustes(pts3d_local: jax.Array, pts3d_global: jax.Array, conf: jax.Array, conf_local: jax.Array,
                min_conf_percentile: float, with_focals: bool) -> tuple[jax.Array, jax.Array | None]:
    """c2w (V, 4, 4) aligning local onto global on confident pixels (weighted by conf), and focals (V,) from the
    local maps (None unless with_focals)."""
    focals = focal_from_local(pts3d_local, conf_local, min_conf_percentile) if with_focals else None
    cut = jax.vmap(conf_quantile, in_axes=(0, None))(conf, min_conf_percentile / 100.0)  # (V,)
    weights = jnp.where(conf >= cut[:, None, None], conf, 0.0)  # (V, H, W)
    c2w, _ = procrustes_poses(pts3d_local, pts3d_global, weights)
    return c2w, focals


def _by_shape(outputs: Sequence[Mapping], keys: Sequence[str]) -> Iterator[tuple[list[int], dict[str, jax.Array]]]:
    """(view indices, their `keys` maps stacked (G, H, W[, 3]) float32) per distinct image shape, in the order
    the shapes first appear."""
    hw = [tuple(np.shape(o["conf"])) for o in outputs]
    for shape in dict.fromkeys(hw):
        idx = [i for i in range(len(outputs)) if hw[i] == shape]
        yield idx, {k: jnp.stack([jnp.asarray(outputs[i][k], jnp.float32) for i in idx]) for k in keys}


def estimate_cameras(outputs: Sequence[Mapping], solver: str = "pnp", *,
                     min_conf_percentile: float = FOCAL_CONF_PERCENTILE,
                     intrinsics: np.ndarray | None = None, max_pnp_points: int | None = None,
                     pnp_focal: str = "shared") -> Cameras:
    """Cameras from per-view predictions (dicts with pts3d_in_other_view, conf, pts3d_local, conf_local; maps
    (H, W, ...) in true orientation, numpy or device arrays, any mix of shapes).

    'pnp': upstream's estimator (view 0's focal for every view, RANSAC-PnP with PNP_ITERATIONS iterations, views
    in parallel threads). 'procrustes': per-view focal from the local pointmap and pose from the similarity between
    local and global pointmaps weighted by the confidences at or above their `min_conf_percentile` percentile (0:
    every pixel, as the reference evaluation weights them), one jitted call per image shape. `min_conf_percentile`
    applies to Procrustes only; PnP keeps upstream's fixed rules. `max_pnp_points` caps PnP's correspondences per
    view (an evenly spaced subset of them; None: all, upstream's rule). `pnp_focal`: PnP's focal without known
    intrinsics, 'shared' (view 0's, from its global pointmap, for every view: one camera, upstream's) or 'per-view'
    (each view's own, from its local pointmap as Procrustes estimates it: zoom, photos from several cameras).

    intrinsics: known (V, 3, 3) pinhole matrices at the pointmaps' resolution (see `read_intrinsics` and
    `resize_crop_intrinsics`): PnP solves with them instead of the estimated focal; Procrustes keeps its poses.
    Either way they are the intrinsics returned. A view whose pose is not finite gets the identity and is listed
    in `failed`, as is one whose estimated focal is unusable (a 60-degree field of view is substituted).
    """
    if solver not in POSE_SOLVERS:
        raise ValueError(f"pose solver must be one of {POSE_SOLVERS}, got {solver!r}")
    if pnp_focal not in PNP_FOCALS:
        raise ValueError(f"pnp_focal must be one of {PNP_FOCALS}, got {pnp_focal!r}")
    num = len(outputs)
    hw = [tuple(np.shape(o["conf"])) for o in outputs]
    known = None if intrinsics is None else check_intrinsics(intrinsics, num)
    if solver == "pnp":
        per_view = known is None and pnp_focal == "per-view"
        if per_view:  # each view's focal from its local pointmap; PnP then solves with it as if known
            local = np.zeros(num)
            for idx, stack in _by_shape(outputs, ("pts3d_local", "conf_local")):
                local[idx] = np.asarray(focal_from_local(stack["pts3d_local"], stack["conf_local"],
                                                         FOCAL_CONF_PERCENTILE))
            unusable = ~(np.isfinite(local) & (local > 0))
            local = np.where(unusable, [_fallback_focal(*s) for s in hw], local)
        c2w, focals = estimate_camera_poses_pnp(
            [np.asarray(o["pts3d_in_other_view"]) for o in outputs], [np.asarray(o["conf"]) for o in outputs],
            focal_mode="first_view_from_global_head", niter=PNP_ITERATIONS, max_points=max_pnp_points,
            intrinsics=known if not per_view else [_pinhole(f, *s) for f, s in zip(local, hw)])
        c2w, focals = c2w.astype(np.float64), focals.astype(np.float64)
        c2w[np.isnan(focals)] = np.nan  # PnP failed: a failed pose, also when the intrinsics are known
        if per_view:
            focals[unusable] = np.nan  # solved with a stand-in focal: listed as failed below
    else:
        c2w, focals = np.zeros((num, 4, 4)), np.zeros(num)
        keys = ("pts3d_local", "pts3d_in_other_view", "conf", "conf_local")
        for idx, stack in _by_shape(outputs, keys):  # (G, H, W[, 3])
            pose, f = _procrustes(stack["pts3d_local"], stack["pts3d_in_other_view"], stack["conf"],
                                  stack["conf_local"], min_conf_percentile, with_focals=known is None)
            c2w[idx] = np.asarray(pose)
            if f is not None:
                focals[idx] = np.asarray(f)
    bad_pose = ~np.isfinite(c2w).all(axis=(1, 2))
    c2w[bad_pose] = np.eye(4)
    sizes = np.asarray([(w, h) for h, w in hw], np.int64)
    if known is not None:
        return Cameras(c2w, known, sizes, tuple(int(i) for i in np.flatnonzero(bad_pose)))
    bad_focal = ~(np.isfinite(focals) & (focals > 0))
    focals = np.where(bad_focal, [_fallback_focal(*s) for s in hw], focals)
    estimated = np.zeros((num, 3, 3))
    estimated[:, 0, 0] = estimated[:, 1, 1] = focals
    estimated[:, 0, 2] = [w / 2 for _, w in hw]
    estimated[:, 1, 2] = [h / 2 for h, _ in hw]
    estimated[:, 2, 2] = 1.0
    return Cameras(c2w, estimated, sizes, tuple(int(i) for i in np.flatnonzero(bad_pose | bad_focal)))


# ---------------------------------------------------------------------------------------------------------------------
# Known intrinsics
# ---------------------------------------------------------------------------------------------------------------------


def check_intrinsics(intrinsics, num_views: int) -> np.ndarray:
    """(V, 3, 3) float64 copy of known intrinsics, one per view; ValueError unless each is a finite zero-skew
    pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0."""
    known = np.asarray(intrinsics, np.float64)
    if known.shape != (num_views, 3, 3):
        raise ValueError(f"intrinsics must have shape ({num_views}, 3, 3), one per view, got {known.shape}")
    zeros = known[:, [0, 1, 2, 2], [1, 0, 0, 1]]  # (V, 4)
    if not np.isfinite(known).all() or (zeros != 0).any() or (known[:, 2, 2] != 1).any():
        raise ValueError("intrinsics must be finite pinhole matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    if (known[:, [0, 1], [0, 1]] <= 0).any():
        raise ValueError(f"intrinsics must have positive focals, got fx {known[:, 0, 0]} and fy {known[:, 1, 1]}")
    return known


def resize_crop_intrinsics(intrinsics, scale, offset) -> np.ndarray:
    """Known intrinsics (..., 3, 3) of original images mapped onto the model's input: resized by `scale` (sx, sy)
    (new size / original size per axis), then cropped at `offset` (left, top) pixels of the resized image.

    Pixel centres sit at integer coordinates, so a resize maps u to (u + 0.5) * sx - 0.5 (as PIL resamples) and a
    crop subtracts its offset. For `io.images.resize_and_crop`: scale = resized_size(...) / (W, H) and offset =
    crop_box(...)[:2].
    """
    mapped = np.array(intrinsics, np.float64)  # (..., 3, 3)
    scale, offset = np.asarray(scale, np.float64), np.asarray(offset, np.float64)  # (..., 2)
    mapped[..., [0, 1], [0, 1]] *= scale
    mapped[..., [0, 1], [2, 2]] = (mapped[..., [0, 1], [2, 2]] + 0.5) * scale - 0.5 - offset
    return mapped


# COLMAP camera models: name -> (model id, parameter names). Pinhole ones are read as they are; the distortion
# terms of the others are ignored (with a note); fisheye and other non-pinhole projections are refused.
_COLMAP_MODELS = {
    "SIMPLE_PINHOLE": (0, ("f", "cx", "cy")),
    "PINHOLE": (1, ("fx", "fy", "cx", "cy")),
    "SIMPLE_RADIAL": (2, ("f", "cx", "cy", "k")),
    "RADIAL": (3, ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": (4, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    "OPENCV_FISHEYE": (5, ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4")),
    "FULL_OPENCV": (6, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
    "FOV": (7, ("fx", "fy", "cx", "cy", "omega")),
    "SIMPLE_RADIAL_FISHEYE": (8, ("f", "cx", "cy", "k")),
    "RADIAL_FISHEYE": (9, ("f", "cx", "cy", "k1", "k2")),
    "THIN_PRISM_FISHEYE": (10, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1")),
}
_COLMAP_NAMES = {model_id: name for name, (model_id, _) in _COLMAP_MODELS.items()}
_COLMAP_PERSPECTIVE = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")


def _colmap_camera(path: pathlib.Path, camera_id: int, model: str, width: int, height: int,
                   params: Sequence[float], notify: Callable[[str], None]) -> tuple[tuple[int, int], np.ndarray]:
    """((W, H), K in our pixel convention) of one COLMAP camera."""
    where = f"{path}: camera {camera_id}"
    if model not in _COLMAP_MODELS:
        raise ValueError(f"{where}: unknown camera model {model!r}")
    if model not in _COLMAP_PERSPECTIVE:
        raise ValueError(f"{where}: camera model {model} is not a pinhole projection; use one of "
                         f"{', '.join(_COLMAP_PERSPECTIVE)}")
    names = _COLMAP_MODELS[model][1]
    if len(params) != len(names):
        raise ValueError(f"{where}: model {model} takes {len(names)} parameters ({' '.join(names)}), "
                         f"got {len(params)}")
    values = dict(zip(names, params))
    if any(name not in ("f", "fx", "fy", "cx", "cy") and values[name] != 0 for name in names):
        notify(f"{where}: ignoring the distortion terms of its {model} model (the model predicts undistorted "
               "pinhole cameras)")
    fx, fy = values.get("fx", values.get("f")), values.get("fy", values.get("f"))
    # COLMAP puts the centre of the top-left pixel at (0.5, 0.5), we put it at (0, 0).
    K = np.array([[fx, 0.0, values["cx"] - 0.5], [0.0, fy, values["cy"] - 0.5], [0.0, 0.0, 1.0]])
    return (width, height), K


def _read_colmap_cameras_txt(path: pathlib.Path, notify) -> dict[int, tuple[tuple[int, int], np.ndarray]]:
    cameras = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            camera_id, model, width, height = int(fields[0]), fields[1], int(fields[2]), int(fields[3])
            params = [float(x) for x in fields[4:]]
        except (ValueError, IndexError) as err:
            raise ValueError(f"{path}: line {number}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[], "
                             f"got {line.strip()!r}") from err
        cameras[camera_id] = _colmap_camera(path, camera_id, model, width, height, params, notify)
    return cameras


def _unpack(path: pathlib.Path, data: bytes, offset: int, fmt: str, what: str) -> tuple[tuple, int]:
    size = struct.calcsize(fmt)
    if offset + size > len(data):
        raise ValueError(f"{path}: file ends inside {what}")
    return struct.unpack_from(fmt, data, offset), offset + size


def _read_colmap_cameras_bin(path: pathlib.Path, notify) -> dict[int, tuple[tuple[int, int], np.ndarray]]:
    data = path.read_bytes()
    (count,), offset = _unpack(path, data, 0, "<Q", "the camera count")
    cameras = {}
    for _ in range(count):
        (camera_id, model_id, width, height), offset = _unpack(path, data, offset, "<iiQQ", "a camera header")
        if model_id not in _COLMAP_NAMES:
            raise ValueError(f"{path}: camera {camera_id}: unknown camera model id {model_id}")
        model = _COLMAP_NAMES[model_id]
        params, offset = _unpack(path, data, offset, f"<{len(_COLMAP_MODELS[model][1])}d",
                                 f"the parameters of camera {camera_id}")
        cameras[camera_id] = _colmap_camera(path, camera_id, model, width, height, params, notify)
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} bytes after the {count} cameras")
    return cameras


def _read_colmap_images(path: pathlib.Path) -> dict[str, int]:
    """Image name -> camera id from the images.txt or images.bin next to a COLMAP cameras file ({} if none)."""
    text, binary = path.with_name("images.txt"), path.with_name("images.bin")
    names = {}
    if path.suffix == ".bin" and binary.is_file():
        data = binary.read_bytes()
        (count,), offset = _unpack(binary, data, 0, "<Q", "the image count")
        for _ in range(count):
            (image_id, *_, camera_id), offset = _unpack(binary, data, offset, "<i7di", "an image header")
            end = data.find(b"\0", offset)
            if end < 0:
                raise ValueError(f"{binary}: file ends inside the name of image {image_id}")
            names[data[offset:end].decode()] = camera_id
            (num_points,), offset = _unpack(binary, data, end + 1, "<Q", f"the point count of image {image_id}")
            offset += 24 * num_points  # (x, y, point3D_id) per observation
    elif text.is_file():
        lines = [line for line in text.read_text().splitlines() if not line.startswith("#")]
        for line in lines[::2]:  # every image line is followed by its observations line
            fields = line.split()
            if len(fields) < 10:
                raise ValueError(f"{text}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {line!r}")
            names[" ".join(fields[9:])] = int(fields[8])
    return names


def read_intrinsics(path: str | os.PathLike, image_sizes: Mapping[str, tuple[int, int]],
                    notify: Callable[[str], None] = log.warning) -> dict[str, np.ndarray]:
    """Known intrinsics of the input images at their original resolution, from a file the user gives.

    Formats: COLMAP `cameras.txt` / `cameras.bin` (or a folder holding one): one camera serves every image, several
    are matched to images by name through the `images.txt` / `images.bin` next to it. SIMPLE_PINHOLE and PINHOLE
    are read as they are; SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV lose their distortion terms (`notify` says
    so). Our own `cameras.json` (io.export.write_cameras_json): matched by image name.

    Args:
        path: the file (or COLMAP model folder).
        image_sizes: image name (file name; folders are ignored) -> original (W, H); every one must be covered by a
            camera of exactly that size.
        notify: receives notes for the user.

    Returns:
        image name -> (3, 3) float64 K, pixel centres at integer coordinates (our convention).

    Raises:
        ValueError naming the file and the field that is wrong, or the image that has no camera.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        found = [path / n for n in ("cameras.bin", "cameras.txt", "cameras.json") if (path / n).is_file()]
        if not found:
            raise ValueError(f"{path}: no cameras.bin, cameras.txt or cameras.json in this folder")
        path = found[0]
    if not path.is_file():
        raise ValueError(f"{path}: intrinsics file not found")
    if path.suffix == ".json":
        by_name = {os.path.basename(c["name"]): ((c["width"], c["height"]), c["intrinsics"])
                   for c in export.read_cameras_json(path, require_c2w=False)}
    else:
        if path.suffix not in (".txt", ".bin"):
            raise ValueError(f"{path}: expected a COLMAP cameras.txt / cameras.bin or a cameras.json")
        read = _read_colmap_cameras_bin if path.suffix == ".bin" else _read_colmap_cameras_txt
        cameras = read(path, notify)
        if not cameras:
            raise ValueError(f"{path}: no cameras in the file")
        images = _read_colmap_images(path)
        if len(cameras) == 1:
            by_name = {os.path.basename(name): next(iter(cameras.values())) for name in image_sizes}
        elif not images:
            raise ValueError(f"{path}: {len(cameras)} cameras but no images.txt / images.bin next to it to say "
                             "which image each belongs to")
        else:
            missing = sorted({cid for cid in images.values() if cid not in cameras})
            if missing:
                raise ValueError(f"{path.with_name('images' + path.suffix)}: camera ids {missing} are not in {path}")
            by_name = {os.path.basename(name): cameras[cid] for name, cid in images.items()}
    out = {}
    for name, size in image_sizes.items():
        key = os.path.basename(name)
        if key not in by_name:
            raise ValueError(f"{path}: no camera for image {key}")
        file_size, K = by_name[key]
        if tuple(file_size) != tuple(size):
            raise ValueError(f"{path}: width/height of the camera of {key} is {file_size[0]}x{file_size[1]}, but "
                             f"the image is {size[0]}x{size[1]}; intrinsics must be given at the images' original "
                             "resolution")
        out[name] = K
    return out
