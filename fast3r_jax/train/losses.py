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

Views are lists of dicts so that views may have different image sizes; the views of one size are stacked and
computed together (one program per image size rather than per view: 192 views trace and compile in a fraction of
the time, and run faster on a GPU). Invalid pixels are handled with masks only, so every function is jit-able and
gives zero gradient there.
NaN handling follows the reference implementation: a NaN at an invalid pixel is ignored;
a NaN at a valid pixel is left out of the normalisation factor (like `nanmean`) but makes
that view's distance, its confidence loss and the total loss NaN.
"""

import itertools
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


def _masked_mean(x: jax.Array, valid: jax.Array, axis: tuple[int, ...] | None = None) -> jax.Array:
    """Mean of x over the True entries of valid along `axis` (None: all, pooled over the batch); 0 if none."""
    count = jnp.sum(valid, axis=axis)
    return jnp.sum(jnp.where(valid, x, 0.0), axis=axis) / jnp.maximum(count, 1)


def _normalise(stacks: Sequence[jax.Array], valid: Sequence[jax.Array]) -> tuple[list[jax.Array], jax.Array]:
    """Divides stacks of views (G, B, H, W, 3) by one factor per sample: the mean distance to the origin of the
    valid (G, B, H, W) points of every view of every stack, NaN distances skipped; a sample without any keeps
    factor 1. Returns the normalised stacks and the (B,) factor."""
    total = count = 0
    for pts, v in zip(stacks, valid, strict=True):
        dist = geometry.safe_norm(pts)  # (G, B, H, W)
        use = v & ~jnp.isnan(dist)
        total = total + jnp.sum(jnp.where(use, dist, 0.0), axis=(0, 2, 3))  # (B,)
        count = count + jnp.sum(use, axis=(0, 2, 3))  # (B,)
    factor = jnp.maximum(jnp.where(count > 0, total / jnp.maximum(count, 1), 1.0), _NORM_EPS)  # (B,)
    return [pts / factor[:, None, None, None] for pts in stacks], factor


def _normalise_each_view(stack: jax.Array, valid: jax.Array) -> jax.Array:
    """`_normalise` with one factor per view and sample of a (G, B, H, W, 3) stack: each taken as a sample."""
    (out,), _ = _normalise([stack.reshape((1, -1) + stack.shape[2:])], [valid.reshape((1, -1) + valid.shape[2:])])
    return out.reshape(stack.shape)


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
    stacks, _ = _normalise([p[None] for p in pts_list], [v[None] for v in valid_list])
    return [pts[0] for pts in stacks]


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


class Group(NamedTuple):
    """The views of one image size, stacked (G views) and normalised as the criterion compares them; invalid pixels
    hold 0.

    index: the views' positions in the input. valid: (G, B, H, W) bool; conf: (G, B, H, W). global_maps:
    (prediction, GT), (G, B, H, W, 3) each, in the anchor frame (one factor per sample and source over all views).
    conf_local and local_maps: the same in each view's camera frame (one factor per view and sample); None without
    the local head. gt_cameras: the true (G, B, 4, 4) camera-to-anchor poses, their centres in the GT global maps'
    normalised units.
    """

    index: tuple[int, ...]
    valid: jax.Array
    conf: jax.Array
    global_maps: tuple[jax.Array, jax.Array]
    conf_local: jax.Array | None
    local_maps: tuple[jax.Array, jax.Array] | None
    gt_cameras: jax.Array


def normalised_groups(gts: Sequence[View], preds: Sequence[View]) -> list[Group]:
    """What the criterion compares, stacked by image size (groups in the order of each size's first view).

    Args:
        gts: per view dicts with `pts3d` (B, H, W, 3) world points, `valid_mask` (B, H, W)
            bool and `camera_pose` (B, 4, 4) rigid camera-to-world.
        preds: per view dicts with `pts3d_in_other_view` (B, H, W, 3), `conf` (B, H, W)
            and optionally `pts3d_local` (B, H, W, 3), `conf_local` (B, H, W).
    """
    with_local = _check_views(gts, preds)
    shapes = [jnp.shape(gt["pts3d"]) for gt in gts]
    indices = [tuple(i for i, s in enumerate(shapes) if s == shape) for shape in dict.fromkeys(shapes)]
    stack = lambda views, key, idx: jnp.stack([jnp.asarray(views[i][key]) for i in idx])  # noqa: E731
    world_to_anchor = geometry.inverse_rigid(jnp.asarray(gts[0]["camera_pose"], jnp.float32))  # (B, 4, 4)

    valid, gt_global, pr_global, cameras, local = [], [], [], [], []
    for idx in indices:
        v = stack(gts, "valid_mask", idx).astype(bool)  # (G, B, H, W)
        world = stack(gts, "pts3d", idx)  # (G, B, H, W, 3)
        cam_to_world = stack(gts, "camera_pose", idx).astype(jnp.float32)  # (G, B, 4, 4)
        valid.append(v)
        cameras.append(world_to_anchor @ cam_to_world)
        to_anchor = jnp.broadcast_to(world_to_anchor, cam_to_world.shape)
        gt_global.append(_masked_points(geometry.apply_transform(to_anchor, world), v))
        pr_global.append(_masked_points(stack(preds, "pts3d_in_other_view", idx), v))
        if with_local:
            gt_local = _masked_points(geometry.apply_transform(geometry.inverse_rigid(cam_to_world), world), v)
            pr_local = _masked_points(stack(preds, "pts3d_local", idx), v)
            local.append((_normalise_each_view(pr_local, v), _normalise_each_view(gt_local, v)))
    gt_global, gt_factor = _normalise(gt_global, valid)
    pr_global, _ = _normalise(pr_global, valid)
    return [Group(idx, v, stack(preds, "conf", idx), (pr, gt),
                  stack(preds, "conf_local", idx) if with_local else None, local[k] if with_local else None,
                  cam.at[..., :3, 3].divide(gt_factor[:, None]))
            for k, (idx, v, pr, gt, cam) in enumerate(zip(indices, valid, pr_global, gt_global, cameras))]


def _per_view(groups: Sequence[Group], values: Sequence[jax.Array]) -> list[jax.Array]:
    """Per-group (G, ...) values -> a list in the input's view order."""
    out = [None] * sum(len(g.index) for g in groups)
    for group, value in zip(groups, values):
        for k, i in enumerate(group.index):
            out[i] = value[k]
    return out


def camera_pose_losses(gts: Sequence[View], preds: Sequence[View]) -> list[jax.Array]:
    """Per view (B,) error of the camera implied by the predicted pointmaps.

    The similarity fitted from the normalised local pointmap onto the normalised global one over the valid pixels
    is the view's camera in the anchor frame; the true camera is the ground truth's, its centre in the normalised
    units of the ground-truth global maps. Error: Frobenius norm of the rotation difference (2 sqrt(2)
    sin(angle / 2)) plus the distance between the camera centres. A sample with fewer than 3 valid pixels in the
    view gets 0. The fits of all views are solved in one batched call.

    Args:
        gts, preds: as in `normalised_groups`; preds must carry the local head.
    """
    groups = normalised_groups(gts, preds)
    return _per_view(groups, _pose_errors(groups))


def _pose_errors(groups: Sequence[Group]) -> list[jax.Array]:
    """`camera_pose_losses` per group, (G, B) each."""
    if groups[0].local_maps is None:
        raise ValueError("the camera term needs the local head's pts3d_local and conf_local")
    flat = lambda x: x.reshape(x.shape[0] * x.shape[1], -1, *x.shape[4:])  # noqa: E731  (G * B, H * W, ...)
    enough, moments = [], []  # per group (G * B,) and statistics with fields (G * B, ...)
    for g in groups:
        enough.append(jnp.sum(flat(g.valid), axis=1) >= 3)
        weights = jnp.where(enough[-1][:, None], flat(g.valid), True).astype(jnp.float32)  # (G * B, H * W)
        moments.append(jax.vmap(similarity_moments)(flat(g.local_maps[0]), flat(g.global_maps[0]), weights))
    # one batched solve for every view and sample: N = the sum of G * B
    _, rot, trans = similarity_from_moments(jax.tree.map(lambda *f: jnp.concatenate(f), *moments))
    gt = jnp.concatenate([g.gt_cameras.reshape(-1, 4, 4) for g in groups])  # (N, 4, 4)
    errors = geometry.safe_norm((rot - gt[:, :3, :3]).reshape(-1, 9)) + geometry.safe_norm(trans - gt[:, :3, 3])
    errors = jnp.where(jnp.concatenate(enough), errors, 0.0)  # (N,)
    ends = list(itertools.accumulate(g.valid.shape[0] * g.valid.shape[1] for g in groups))
    return [e.reshape(g.valid.shape[:2]) for e, g in zip(jnp.split(errors, ends[:-1]), groups)]


def confidence_weighted_loss(
    dist: jax.Array, conf: jax.Array, valid: jax.Array, alpha: float
) -> jax.Array:
    """Mean of `dist * conf - alpha * log(conf)` over the valid pixels of the batch; 0 if none.

    Args:
        dist: (B, H, W) per-pixel regression distances, or (G, B, H, W) for G views: then one mean per view, (G,).
        conf: predicted confidences (> 0 at valid pixels), shaped as dist.
        valid: bool mask, shaped as dist.
        alpha: weight of the log-confidence regulariser.
    """
    conf = jnp.where(valid, jnp.asarray(conf, jnp.float32), 1.0)
    return _masked_mean(dist * conf - alpha * jnp.log(conf), valid, axis=(-3, -2, -1))


def multiview_loss(
    gts: Sequence[View], preds: Sequence[View], alpha: float = 0.2, pose_weight: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Fast3R training loss: mean of the per-view global and local confidence losses, plus `pose_weight` times the
    mean camera error (`camera_pose_losses`) when pose_weight > 0.

    Args:
        gts, preds: as in `normalised_groups`.
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
    groups = normalised_groups(gts, preds)
    kinds = [("global", "global_maps", "conf")]
    if groups[0].local_maps is not None:
        kinds.append(("local", "local_maps", "conf_local"))
    details, conf_losses = {}, []
    for kind, maps, conf in kinds:
        dists = [l21_distance(*getattr(g, maps)) for g in groups]  # (G, B, H, W) each
        means = _per_view(groups, [_masked_mean(d, g.valid, axis=(1, 2, 3)) for d, g in zip(dists, groups)])
        terms = _per_view(groups, [confidence_weighted_loss(d, getattr(g, conf), g.valid, alpha)
                                   for d, g in zip(dists, groups)])
        details |= {f"pts3d_loss_{kind}/{i:02d}": m for i, m in enumerate(means)}
        details |= {f"conf_loss_{kind}/{i:02d}": t for i, t in enumerate(terms)}
        conf_losses += terms
    loss = jnp.mean(jnp.stack(conf_losses))
    if pose_weight > 0:
        pose = _per_view(groups, [jnp.mean(e, axis=1) for e in _pose_errors(groups)])
        details |= {f"pose_loss/{i:02d}": err for i, err in enumerate(pose)}
        loss = loss + pose_weight * jnp.mean(jnp.stack(pose))
    return loss, details
