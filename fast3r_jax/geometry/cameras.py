"""Camera focal lengths and poses recovered from predicted pointmaps.

Fast3R predicts, per view, a global pointmap (in the frame of view 0) and a local pointmap (in the view's own
camera frame). Cameras follow from them in two ways:

* reference evaluation path: focal by Weiszfeld on view 0's global pointmap, then RANSAC-PnP per view with
  OpenCV (host-side numpy; needs ``opencv-python-headless``);
* on-device path: focal by Weiszfeld on each local pointmap and the pose of each camera as the similarity
  that maps its local pointmap onto its global pointmap (confidence-weighted Umeyama), all views in one
  jitted, vmapped call.

Pixel conventions: integer pixel coordinates (x, y) = (column, row), principal point (W/2, H/2), square pixels.
Poses are camera-to-world 4x4 matrices in the frame of the global pointmaps.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fast3r_jax.geometry.transforms import apply_transform, inverse_rigid, rigid_from_rotation_translation

WEISZFELD_ITERS = 100
PNP_REPROJ_ERROR_PX = 5.0
PNP_MIN_CONF = 1.0  # PnP uses pixels with conf strictly above this (all of them for conf = 1 + exp(.)).
NUM_GUESSED_FOCALS = 100
FOCAL_MODES = ("first_view_from_global_head", "individual")
_MIN_PNP_POINTS = 4
_MIN_ALIGN_POINTS = 3
_EXACT = jax.lax.Precision.HIGHEST


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


def _umeyama(src: jax.Array, dst: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted similarity (rot, trans, scale) minimising sum_i w_i |scale * rot @ src_i + trans - dst_i|^2.

    Args:
        src, dst: (N, 3) corresponding points. Points with zero weight may hold any value (even NaN).
        weights: (N,) non-negative weights, not all zero.

    Returns:
        rot (3, 3) with det +1 (the reflection sign is folded into the last singular vector), trans (3,), scale ().
    """
    keep = (weights > 0)[:, None]
    src = jnp.where(keep, src, 0.0)
    dst = jnp.where(keep, dst, 0.0)
    w = weights / jnp.sum(weights)  # (N,)
    src_mean = jnp.einsum("n,ni->i", w, src, precision=_EXACT)  # (3,)
    dst_mean = jnp.einsum("n,ni->i", w, dst, precision=_EXACT)  # (3,)
    src_c, dst_c = src - src_mean, dst - dst_mean  # (N, 3)
    cov = jnp.einsum("n,ni,nj->ij", w, dst_c, src_c, precision=_EXACT)  # (3, 3)
    u, sing, vt = jnp.linalg.svd(cov)
    sign = jnp.where(jnp.linalg.det(u) * jnp.linalg.det(vt) < 0, -1.0, 1.0).astype(cov.dtype)
    flip = jnp.stack([jnp.ones_like(sign), jnp.ones_like(sign), sign])  # (3,)
    rot = jnp.matmul(u * flip, vt, precision=_EXACT)  # (3, 3)
    src_var = jnp.sum(w * jnp.sum(src_c * src_c, axis=-1))
    scale = jnp.sum(sing * flip) / src_var
    trans = dst_mean - scale * jnp.matmul(rot, src_mean, precision=_EXACT)  # (3,)
    return rot, trans, scale


def _check_pair(pts3d_local, pts3d_global, conf) -> None:
    _check_pointmaps(pts3d_global, conf, batched=True, name="pts3d_global")
    if pts3d_local.shape != pts3d_global.shape:
        raise ValueError(
            f"pts3d_local {tuple(pts3d_local.shape)} and pts3d_global {tuple(pts3d_global.shape)} must match")
    if pts3d_local.shape[1] * pts3d_local.shape[2] < _MIN_ALIGN_POINTS:
        raise ValueError(f"need at least {_MIN_ALIGN_POINTS} pixels per view, got {tuple(pts3d_local.shape)}")


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
    rot, trans, scale = jax.vmap(_umeyama)(
        pts3d_local.reshape(num_views, -1, 3), pts3d_global.reshape(num_views, -1, 3),
        conf.reshape(num_views, -1))  # (V, 3, 3), (V, 3), (V,)
    return rigid_from_rotation_translation(rot, trans), scale


@jax.jit
def align_local_to_global(pts3d_local: jax.Array, pts3d_global: jax.Array, conf: jax.Array,
                          min_conf_percentile: float = 0.0) -> jax.Array:
    """Maps every local pointmap into the global frame by its best unweighted similarity.

    The similarity is fitted on the pixels whose confidence is at least the `min_conf_percentile` percentile
    (all pixels if fewer than 3 qualify), then applied to all pixels, as the reference evaluation does
    before computing reconstruction metrics.

    Args:
        pts3d_local: (V, H, W, 3) local-head points.
        pts3d_global: (V, H, W, 3) global-head points.
        conf: (V, H, W) global-head confidences (only used for the percentile mask).
        min_conf_percentile: percentile in [0, 100].

    Returns:
        (V, H, W, 3) local points in the global frame.
    """
    _check_pair(pts3d_local, pts3d_global, conf)

    def align_view(local, glob, view_conf):
        mask = view_conf >= conf_quantile(view_conf, min_conf_percentile / 100.0)  # (H, W)
        mask = jnp.where(jnp.sum(mask) >= _MIN_ALIGN_POINTS, mask, True)
        rot, trans, scale = _umeyama(local.reshape(-1, 3), glob.reshape(-1, 3),
                                     mask.reshape(-1).astype(local.dtype))
        return apply_transform(rigid_from_rotation_translation(scale * rot, trans), local)

    return jax.vmap(align_view)(pts3d_local, pts3d_global, conf)


def _pnp_ransac(cv2, pts3d: np.ndarray, mask: np.ndarray, focals: Sequence[float],
                niter: int) -> tuple[float, np.ndarray, np.ndarray] | None:
    """Best (focal, rvec, tvec) over candidate focals by RANSAC-PnP inlier count, or None if all fail."""
    if mask.sum() < _MIN_PNP_POINTS:
        return None
    height, width = mask.shape
    xs, ys = np.meshgrid(np.arange(width), np.arange(height), indexing="xy")
    pixels = np.stack([xs, ys], axis=-1).astype(np.float32)  # (H, W, 2)
    best_inliers, best = 0, None
    for focal in focals:
        intrinsics = np.float32([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(
                pts3d[mask], pixels[mask], intrinsics, None, iterationsCount=niter,
                reprojectionError=PNP_REPROJ_ERROR_PX, flags=cv2.SOLVEPNP_SQPNP)
        except cv2.error:  # degenerate inputs (e.g. zero focal) make the solver throw
            continue
        if ok and len(inliers) > best_inliers:
            best_inliers, best = len(inliers), (focal, rvec, tvec)
    return best


def estimate_camera_poses_pnp(
    pts3d_global: Sequence[np.ndarray] | np.ndarray,
    conf: Sequence[np.ndarray] | np.ndarray,
    focal_mode: str = "first_view_from_global_head",
    niter: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference-evaluation cameras: Weiszfeld focal and OpenCV RANSAC-PnP (SQPnP) per view, on the host.

    Each view's global points are matched to their pixels (conf > 1, principal point (W/2, H/2),
    5 px inlier threshold, `niter` RANSAC iterations). With 'first_view_from_global_head' every view uses
    the focal estimated on view 0's global pointmap (10th confidence percentile); with 'individual' each
    view keeps the focal among 100 geometric steps in [max(H, W) / 2, 3 max(H, W)] with the most inliers.
    A view whose PnP fails gets the identity pose and a NaN focal.

    Args:
        pts3d_global: V arrays (H_i, W_i, 3) (or one (V, H, W, 3) array) of points in the global frame.
        conf: V matching (H_i, W_i) confidence arrays (or one (V, H, W) array).
        focal_mode: one of FOCAL_MODES.
        niter: RANSAC iterations.

    Returns:
        c2w (V, 4, 4) float32 and focals (V,) float32.
    """
    try:
        import cv2  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError("estimate_camera_poses_pnp needs OpenCV: pip install opencv-python-headless") from err
    if focal_mode not in FOCAL_MODES:
        raise ValueError(f"focal_mode must be one of {FOCAL_MODES}, got {focal_mode!r}")
    views = [np.asarray(p, np.float32) for p in pts3d_global]
    confs = [np.asarray(c, np.float32) for c in conf]
    if not views or len(views) != len(confs):
        raise ValueError(f"need the same non-zero number of pointmaps and confidences, got {len(views)} and {len(confs)}")
    for i, (pts, view_conf) in enumerate(zip(views, confs)):
        _check_pointmaps(pts, view_conf, batched=False, name=f"pts3d_global[{i}]")

    shared_focal = None
    if focal_mode == "first_view_from_global_head":
        shared_focal = float(estimate_focal(views[0], confs[0], 10.0))

    poses, focals = [], []
    for pts, view_conf in zip(views, confs):
        size = max(view_conf.shape)
        candidates = ([shared_focal] if shared_focal is not None
                      else np.geomspace(size / 2, size * 3, num=NUM_GUESSED_FOCALS))
        found = _pnp_ransac(cv2, pts, view_conf > PNP_MIN_CONF, candidates, niter)
        if found is None:
            poses.append(np.eye(4, dtype=np.float32))
            focals.append(np.nan)
            continue
        focal, rvec, tvec = found
        w2c = rigid_from_rotation_translation(jnp.asarray(cv2.Rodrigues(rvec)[0], jnp.float32),
                                              jnp.asarray(tvec.reshape(3), jnp.float32))
        poses.append(np.asarray(inverse_rigid(w2c)))
        focals.append(focal)
    return np.stack(poses).astype(np.float32), np.asarray(focals, np.float32)
