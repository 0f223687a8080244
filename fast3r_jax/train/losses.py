"""Fast3R multi-view training criterion: confidence-weighted L21 pointmap regression.

For every view two regression terms are computed from the ground-truth (GT) world points:
- global: GT points in the camera frame of view 0 (the anchor) vs `pts3d_in_other_view`;
  prediction and GT are each divided by their own per-sample mean distance to the origin over
  the valid pixels of all views ("avg_dis" normalisation);
- local: GT points in the view's own camera frame vs `pts3d_local`, normalised the same way
  but per view.
Each per-pixel distance map is then weighted by the predicted confidence
(`dist * conf - alpha * log(conf)`) and averaged over the valid pixels of the whole batch;
the total loss is the mean of these per-view confidence losses.

Views are lists of dicts so that views may have different image sizes. Invalid pixels are
handled with masks only, so every function is jit-able and gives zero gradient there.
NaN handling follows the reference implementation: a NaN at an invalid pixel is ignored;
a NaN at a valid pixel is left out of the normalisation factor (like `nanmean`) but makes
that view's distance, its confidence loss and the total loss NaN.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from fast3r_jax.geometry import transforms as geometry

View = Mapping[str, jax.Array]

_NORM_EPS = 1e-8  # lower clip of the normalisation factor
_GT_KEYS = ("pts3d", "valid_mask", "camera_pose")
_PRED_GLOBAL_KEYS = ("pts3d_in_other_view", "conf")
_PRED_LOCAL_KEYS = ("pts3d_local", "conf_local")


def l21_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-point Euclidean distance between (..., 3) point arrays -> (...)."""
    if a.shape != b.shape:
        raise ValueError(f"l21_distance needs equal shapes, got {a.shape} and {b.shape}")
    return geometry.safe_norm(a - b)


def _masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of x over all True entries of valid (pooled over the batch); 0 if none."""
    count = jnp.sum(valid)
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(count, 1)


def normalize_pointmaps(
    pts_list: Sequence[jax.Array], valid_list: Sequence[jax.Array]
) -> list[jax.Array]:
    """Divides the views by one per-sample factor: mean distance to the origin of valid points.

    Args:
        pts_list: per view (B, H, W, 3) points (views may differ in H, W).
        valid_list: per view (B, H, W) bool masks; NaN distances are skipped as well.

    Returns:
        The normalised views. A sample without any valid point keeps factor 1.
    """
    total = count = 0
    for pts, valid in zip(pts_list, valid_list, strict=True):
        dist = geometry.safe_norm(pts)  # (B, H, W)
        use = valid & ~jnp.isnan(dist)
        total = total + jnp.sum(jnp.where(use, dist, 0.0), axis=(1, 2))  # (B,)
        count = count + jnp.sum(use, axis=(1, 2))  # (B,)
    factor = jnp.where(count > 0, total / jnp.maximum(count, 1), 1.0)
    factor = jnp.maximum(factor, _NORM_EPS)[:, None, None, None]  # (B, 1, 1, 1)
    return [pts / factor for pts in pts_list]


def _check_views(gts: Sequence[View], preds: Sequence[View]) -> bool:
    """Validates keys and shapes; returns whether the predictions carry the local head."""
    if not gts or len(gts) != len(preds):
        raise ValueError(
            f"need the same non-zero number of GT and predicted views, got {len(gts)} and "
            f"{len(preds)}")
    with_local = _PRED_LOCAL_KEYS[0] in preds[0]
    pred_keys = _PRED_GLOBAL_KEYS + (_PRED_LOCAL_KEYS if with_local else ())
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        for role, view, keys in (("GT", gt, _GT_KEYS), ("prediction", pred, pred_keys)):
            missing = [k for k in keys if k not in view]
            if missing:
                raise ValueError(f"{role} view {i} lacks {missing}")
    batch = jnp.shape(gts[0]["pts3d"])[:1]
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        shape = jnp.shape(gt["pts3d"])
        if len(shape) != 4 or shape[-1] != 3 or shape[:1] != batch:
            raise ValueError(f"GT view {i} pts3d must be {batch} + (H, W, 3), got {shape}")
        expected = {
            "valid_mask": shape[:3], "camera_pose": batch + (4, 4),
            "pts3d_in_other_view": shape, "conf": shape[:3],
            "pts3d_local": shape, "conf_local": shape[:3],
        }
        for view in (gt, pred):
            for key in view.keys() & expected.keys():
                if jnp.shape(view[key]) != expected[key]:
                    raise ValueError(
                        f"view {i} {key} must have shape {expected[key]}, got "
                        f"{jnp.shape(view[key])}")
    return with_local


def _masked_points(pts: jax.Array, valid: jax.Array) -> jax.Array:
    """float32 points with invalid pixels set to 0 (keeps their values and gradients out)."""
    return jnp.where(valid[..., None], jnp.asarray(pts, jnp.float32), 0.0)


def regression_losses(
    gts: Sequence[View], preds: Sequence[View]
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per-pixel L21 distances between normalised predicted and GT pointmaps.

    Args:
        gts: per view dicts with `pts3d` (B, H, W, 3) world points, `valid_mask` (B, H, W)
            bool and `camera_pose` (B, 4, 4) rigid camera-to-world.
        preds: per view dicts with `pts3d_in_other_view` (B, H, W, 3), `conf` (B, H, W)
            and optionally `pts3d_local` (B, H, W, 3), `conf_local` (B, H, W).

    Returns:
        (global, local): per view (B, H, W) distances, 0 at invalid pixels; `local` is empty
        when the predictions have no `pts3d_local`.
    """
    with_local = _check_views(gts, preds)
    valid = [jnp.asarray(gt["valid_mask"], bool) for gt in gts]
    world_to_anchor = geometry.inverse_rigid(jnp.asarray(gts[0]["camera_pose"], jnp.float32))

    gt_global = [
        _masked_points(geometry.apply_transform(world_to_anchor, gt["pts3d"]), v)
        for gt, v in zip(gts, valid)]
    pr_global = [_masked_points(p["pts3d_in_other_view"], v) for p, v in zip(preds, valid)]
    global_dists = [
        l21_distance(pr, gt) for pr, gt in zip(
            normalize_pointmaps(pr_global, valid), normalize_pointmaps(gt_global, valid))]
    if not with_local:
        return global_dists, []

    local_dists = []
    for gt, pred, v in zip(gts, preds, valid):
        world_to_cam = geometry.inverse_rigid(jnp.asarray(gt["camera_pose"], jnp.float32))
        gt_local = _masked_points(geometry.apply_transform(world_to_cam, gt["pts3d"]), v)
        (gt_local,) = normalize_pointmaps([gt_local], [v])
        (pr_local,) = normalize_pointmaps([_masked_points(pred["pts3d_local"], v)], [v])
        local_dists.append(l21_distance(pr_local, gt_local))
    return global_dists, local_dists


def confidence_weighted_loss(
    dist: jax.Array, conf: jax.Array, valid: jax.Array, alpha: float
) -> jax.Array:
    """Mean of `dist * conf - alpha * log(conf)` over the valid pixels of the batch; 0 if none.

    Args:
        dist: (B, H, W) per-pixel regression distances.
        conf: (B, H, W) predicted confidences (> 0 at valid pixels).
        valid: (B, H, W) bool mask.
        alpha: weight of the log-confidence regulariser.
    """
    conf = jnp.where(valid, jnp.asarray(conf, jnp.float32), 1.0)
    return _masked_mean(dist * conf - alpha * jnp.log(conf), valid)


def multiview_loss(
    gts: Sequence[View], preds: Sequence[View], alpha: float = 0.2
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Fast3R training loss: mean of the per-view global and local confidence losses.

    Args:
        gts, preds: as in `regression_losses`.
        alpha: log-confidence weight (a Python float > 0).

    Returns:
        (loss, details): scalar loss and per-view scalars keyed
        `pts3d_loss_{global,local}/{i:02d}` (mean distance over valid pixels) and
        `conf_loss_{global,local}/{i:02d}` (the terms averaged into `loss`). A view without
        valid pixels gets 0 for all its entries (the reference logs NaN for its distance
        entry, and 0 for its confidence term as here) and still counts in the mean.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    global_dists, local_dists = regression_losses(gts, preds)
    details = {}
    conf_losses = []
    for kind, dists, conf_key in (
        ("global", global_dists, "conf"), ("local", local_dists, "conf_local")):
        for i, dist in enumerate(dists):
            valid = jnp.asarray(gts[i]["valid_mask"], bool)
            details[f"pts3d_loss_{kind}/{i:02d}"] = _masked_mean(dist, valid)
            conf_loss = confidence_weighted_loss(dist, preds[i][conf_key], valid, alpha)
            details[f"conf_loss_{kind}/{i:02d}"] = conf_loss
            conf_losses.append(conf_loss)
    return jnp.mean(jnp.stack(conf_losses)), details
