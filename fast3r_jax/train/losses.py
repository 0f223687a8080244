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

An optional camera term (`pose_weight` > 0, not upstream's: 0 by default) adds, per view, the error of the camera
pose that the predicted local and global pointmaps imply (the similarity fitted from one onto the other, as
`geometry.cameras.procrustes_poses` estimates cameras at inference) against the true camera: the chordal rotation
distance plus the camera-centre distance in the normalised global frame. The pointmap terms weigh
every pixel alike, so a small rigid misplacement of a whole view costs them little; this term weighs it directly.

Views are lists of dicts so that views may have different image sizes. Invalid pixels are
handled with masks only, so every function is jit-able and gives zero gradient there.
NaN handling follows the reference implementation: a NaN at an invalid pixel is ignored;
a NaN at a valid pixel is left out of the normalisation factor (like `nanmean`) but makes
that view's distance, its confidence loss and the total loss NaN.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fast3r_jax.geometry import transforms as geometry
from fast3r_jax.geometry.transforms import similarity_from_moments, similarity_moments

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
    factor = normalisation_factor(pts_list, valid_list)[:, None, None, None]  # (B, 1, 1, 1)
    return [pts / factor for pts in pts_list]


def normalisation_factor(pts_list: Sequence[jax.Array], valid_list: Sequence[jax.Array]) -> jax.Array:
    """`normalize_pointmaps`'s divisor (B,): mean distance to the origin of the valid points of all views."""
    total = count = 0
    for pts, valid in zip(pts_list, valid_list, strict=True):
        dist = geometry.safe_norm(pts)  # (B, H, W)
        use = valid & ~jnp.isnan(dist)
        total = total + jnp.sum(jnp.where(use, dist, 0.0), axis=(1, 2))  # (B,)
        count = count + jnp.sum(use, axis=(1, 2))  # (B,)
    factor = jnp.where(count > 0, total / jnp.maximum(count, 1), 1.0)
    return jnp.maximum(factor, _NORM_EPS)


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


class Normalised(NamedTuple):
    """What the criterion compares, per view: the (B, H, W) bool mask `valid`; `global_maps`, (prediction, GT) in
    the anchor frame (one factor per sample and source); `local_maps`, (prediction, GT) in the view's camera frame
    (one factor per view; empty without the local head); `gt_cameras`, the true (B, 4, 4) camera-to-anchor poses
    with their centres in the GT global maps' normalised units."""

    valid: list[jax.Array]
    global_maps: list[tuple[jax.Array, jax.Array]]
    local_maps: list[tuple[jax.Array, jax.Array]]
    gt_cameras: list[jax.Array]


def normalised_pointmaps(gts: Sequence[View], preds: Sequence[View]) -> Normalised:
    """The pointmaps the criterion compares, normalised, with invalid pixels set to 0 (see `Normalised`).

    Args:
        gts: per view dicts with `pts3d` (B, H, W, 3) world points, `valid_mask` (B, H, W)
            bool and `camera_pose` (B, 4, 4) rigid camera-to-world.
        preds: per view dicts with `pts3d_in_other_view` (B, H, W, 3), `conf` (B, H, W)
            and optionally `pts3d_local` (B, H, W, 3), `conf_local` (B, H, W).
    """
    with_local = _check_views(gts, preds)
    valid = [jnp.asarray(gt["valid_mask"], bool) for gt in gts]
    world_to_anchor = geometry.inverse_rigid(jnp.asarray(gts[0]["camera_pose"], jnp.float32))

    gt_global = [
        _masked_points(geometry.apply_transform(world_to_anchor, gt["pts3d"]), v)
        for gt, v in zip(gts, valid)]
    pr_global = [_masked_points(p["pts3d_in_other_view"], v) for p, v in zip(preds, valid)]
    gt_factor = normalisation_factor(gt_global, valid)  # (B,)
    gt_global = [g / gt_factor[:, None, None, None] for g in gt_global]
    global_maps = list(zip(normalize_pointmaps(pr_global, valid), gt_global))
    gt_cameras = []
    for gt in gts:
        camera = world_to_anchor @ jnp.asarray(gt["camera_pose"], jnp.float32)  # (B, 4, 4)
        gt_cameras.append(camera.at[:, :3, 3].divide(gt_factor[:, None]))
    if not with_local:
        return Normalised(valid, global_maps, [], gt_cameras)

    local_maps = []
    for gt, pred, v in zip(gts, preds, valid):
        world_to_cam = geometry.inverse_rigid(jnp.asarray(gt["camera_pose"], jnp.float32))
        gt_local = _masked_points(geometry.apply_transform(world_to_cam, gt["pts3d"]), v)
        (gt_local,) = normalize_pointmaps([gt_local], [v])
        (pr_local,) = normalize_pointmaps([_masked_points(pred["pts3d_local"], v)], [v])
        local_maps.append((pr_local, gt_local))
    return Normalised(valid, global_maps, local_maps, gt_cameras)


def _distances(maps: Sequence[tuple[jax.Array, jax.Array]]) -> list[jax.Array]:
    return [l21_distance(pr, gt) for pr, gt in maps]


def regression_losses(
    gts: Sequence[View], preds: Sequence[View]
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per-pixel L21 distances between normalised predicted and GT pointmaps.

    Args:
        gts, preds: as in `normalised_pointmaps`.

    Returns:
        (global, local): per view (B, H, W) distances, 0 at invalid pixels; `local` is empty
        when the predictions have no `pts3d_local`.
    """
    maps = normalised_pointmaps(gts, preds)
    return _distances(maps.global_maps), _distances(maps.local_maps)


def camera_pose_losses(gts: Sequence[View], preds: Sequence[View]) -> list[jax.Array]:
    """Per view (B,) error of the camera implied by the predicted pointmaps.

    The similarity fitted from the normalised local pointmap onto the normalised global one over the valid pixels
    is the view's camera in the anchor frame; the true camera is the ground truth's, its centre in the normalised
    units of the ground-truth global maps. Error: Frobenius norm of the rotation difference (2 sqrt(2)
    sin(angle / 2)) plus the distance between the camera centres. A sample with fewer than 3 valid pixels in the
    view gets 0. Each view contributes its fit's statistics; the fits of all views are solved in one batched call.

    Args:
        gts, preds: as in `normalised_pointmaps`; preds must carry the local head.
    """
    return _pose_errors(normalised_pointmaps(gts, preds))


def _pose_errors(maps: Normalised) -> list[jax.Array]:
    """`camera_pose_losses` from the output of `normalised_pointmaps`."""
    if not maps.local_maps:
        raise ValueError("the camera term needs the local head's pts3d_local and conf_local")
    fit = jax.vmap(similarity_moments)  # over the batch
    flat = lambda x: x.reshape(x.shape[0], -1, *x.shape[3:])  # noqa: E731  (B, H * W, ...)
    enough, moments = [], []  # per view (B,) and statistics with fields (B, ...)
    for v, (pr_global, _), (pr_local, _) in zip(maps.valid, maps.global_maps, maps.local_maps):
        enough.append(jnp.sum(v, axis=(1, 2)) >= 3)  # (B,)
        weights = jnp.where(enough[-1][:, None], flat(v), True).astype(jnp.float32)  # (B, H * W)
        moments.append(fit(flat(pr_local), flat(pr_global), weights))
    # one batched solve for all views, fields (V, B, ...)
    _, rot, trans = similarity_from_moments(jax.tree.map(lambda *f: jnp.stack(f), *moments))
    gt = jnp.stack(maps.gt_cameras)  # (V, B, 4, 4)
    rot_err = geometry.safe_norm((rot - gt[..., :3, :3]).reshape(*rot.shape[:2], 9))  # (V, B)
    return list(jnp.where(jnp.stack(enough), rot_err + geometry.safe_norm(trans - gt[..., :3, 3]), 0.0))


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
    gts: Sequence[View], preds: Sequence[View], alpha: float = 0.2, pose_weight: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Fast3R training loss: mean of the per-view global and local confidence losses, plus `pose_weight` times the
    mean camera error (`camera_pose_losses`) when pose_weight > 0.

    Args:
        gts, preds: as in `normalised_pointmaps`.
        alpha: log-confidence weight (a Python float > 0).
        pose_weight: weight of the camera term (a Python float >= 0; 0, upstream's criterion, skips it).

    Returns:
        (loss, details): scalar loss and per-view scalars keyed
        `pts3d_loss_{global,local}/{i:02d}` (mean distance over valid pixels) and
        `conf_loss_{global,local}/{i:02d}` (the terms averaged into `loss`), and with the camera
        term `pose_loss/{i:02d}` (its batch mean). A view without
        valid pixels gets 0 for all its entries (the reference logs NaN for its distance
        entry, and 0 for its confidence term as here) and still counts in the mean.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not pose_weight >= 0:
        raise ValueError(f"pose_weight must be >= 0, got {pose_weight}")
    maps = normalised_pointmaps(gts, preds)
    valid = maps.valid
    details = {}
    conf_losses = []
    for kind, pairs, conf_key in (("global", maps.global_maps, "conf"), ("local", maps.local_maps, "conf_local")):
        for i, dist in enumerate(_distances(pairs)):
            details[f"pts3d_loss_{kind}/{i:02d}"] = _masked_mean(dist, valid[i])
            conf_loss = confidence_weighted_loss(dist, preds[i][conf_key], valid[i], alpha)
            details[f"conf_loss_{kind}/{i:02d}"] = conf_loss
            conf_losses.append(conf_loss)
    loss = jnp.mean(jnp.stack(conf_losses))
    if pose_weight > 0:
        pose = [jnp.mean(err) for err in _pose_errors(maps)]
        details |= {f"pose_loss/{i:02d}": err for i, err in enumerate(pose)}
        loss = loss + pose_weight * jnp.mean(jnp.stack(pose))
    return loss, details
