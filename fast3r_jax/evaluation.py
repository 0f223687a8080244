"""Evaluation on scenes with known geometry: relative camera-pose accuracy and point-map error.

Poses: each scene's predicted cameras (from the pointmaps, with the Procrustes or PnP solver) are compared with the
ground truth pair by pair (metrics.relative_pose_errors); errors of all pairs of all scenes are pooled before
RRA/RTA@tau and mAA(30) are taken, as upstream pools its evaluation sequences. Points: the global pointmap is
aligned to the ground-truth points in view 0's frame by a confidence-weighted similarity, and the mean distance is
divided by the mean distance of the ground-truth points to their centroid (scale-free).
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fast3r_jax import cameras, metrics
from fast3r_jax.config import Fast3RConfig
from fast3r_jax.image_index_embedding import sample_image_ids
from fast3r_jax.images import normalize
from fast3r_jax.model import View
from fast3r_jax.params import build_model
from fast3r_jax.predict import DTYPES

POSE_SOLVERS = ("procrustes", "pnp")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(graphdef, state, imgs, true_shape, ids):
    views = [View(imgs[i][None], true_shape[i][None]) for i in range(imgs.shape[0])]
    outs = nnx.merge(graphdef, state)(views, ids)
    return {k: jnp.concatenate([o[k] for o in outs]) for k in outs[0]}  # each (V, H, W, ...)


def _gt_in_first_camera(views: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth c2w (V, 4, 4) and points (V, H, W, 3) expressed in view 0's camera frame."""
    to_first = np.linalg.inv(views[0]["camera_pose"].astype(np.float64))
    c2w = np.stack([to_first @ v["camera_pose"] for v in views]).astype(np.float32)
    pts = np.stack([v["pts3d"] @ to_first[:3, :3].T + to_first[:3, 3] for v in views]).astype(np.float32)
    return c2w, pts


def estimate_poses(out: Mapping[str, np.ndarray], solver: str) -> np.ndarray:
    """c2w (V, 4, 4) in view 0's frame from one scene's outputs."""
    if solver == "procrustes":
        c2w, _ = cameras.procrustes_poses(out["pts3d_local"], out["pts3d_in_other_view"], out["conf"])
        return np.asarray(c2w)
    if solver == "pnp":
        c2w, _ = cameras.estimate_camera_poses_pnp(np.asarray(out["pts3d_in_other_view"]), np.asarray(out["conf"]))
        return np.asarray(c2w)
    raise ValueError(f"pose solver must be one of {POSE_SOLVERS}, got {solver!r}")


def point_error(pred: np.ndarray, conf: np.ndarray, gt: np.ndarray) -> float:
    """Mean distance after a confidence-weighted similarity alignment, over the GT spread (scale-free)."""
    src, dst = pred.reshape(-1, 3), gt.reshape(-1, 3)
    s, rot, t = metrics.align_similarity(src, dst, weights=conf.reshape(-1))
    aligned = np.asarray(s) * src @ np.asarray(rot).T + np.asarray(t)
    spread = np.linalg.norm(dst - dst.mean(0), axis=-1).mean()
    return float(np.linalg.norm(aligned - dst, axis=-1).mean() / spread)


def evaluate_scenes(config: Fast3RConfig, params: Mapping, scenes, *, dtype: str = "float32",
                    pose_solver: str = "procrustes", seed: int = 0) -> dict[str, float]:
    """Runs the model on every scene of `scenes` (a sequence of sample-format view lists, all landscape)."""
    if pose_solver not in POSE_SOLVERS:
        raise ValueError(f"pose solver must be one of {POSE_SOLVERS}, got {pose_solver!r}")
    graphdef, state = nnx.split(build_model(config, params, DTYPES[dtype]))
    r_errs, t_errs, point_errs = [], [], []
    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        for index in range(len(scenes)):
            views = scenes[index]
            imgs = jnp.stack([normalize(v["img"]) for v in views])  # (V, 3, H, W)
            true_shape = jnp.asarray(np.stack([v["true_shape"] for v in views]), jnp.int32)
            ids = sample_image_ids(jax.random.key(seed + index), 1, len(views), config.fusion.num_image_ids)
            out = jax.device_get(_forward(graphdef, state, imgs, true_shape, ids))
            gt_c2w, gt_pts = _gt_in_first_camera(views)
            r, t = metrics.relative_pose_errors(estimate_poses(out, pose_solver), gt_c2w)
            r_errs.append(np.asarray(r))
            t_errs.append(np.asarray(t))
            point_errs.append(point_error(out["pts3d_in_other_view"], out["conf"], gt_pts))
    r_all, t_all = jnp.asarray(np.concatenate(r_errs)), jnp.asarray(np.concatenate(t_errs))
    rra = metrics.accuracy_at(r_all, metrics.POSE_THRESHOLDS_DEG)
    rta = metrics.accuracy_at(t_all, metrics.POSE_THRESHOLDS_DEG)
    result = {f"RRA@{tau}": float(v) for tau, v in zip(metrics.POSE_THRESHOLDS_DEG, rra)}
    result |= {f"RTA@{tau}": float(v) for tau, v in zip(metrics.POSE_THRESHOLDS_DEG, rta)}
    result["mAA(30)"] = float(metrics.mean_average_accuracy(r_all, t_all))
    result["rot_err_deg_median"] = float(np.median(r_all))
    result["point_err_rel_mean"] = float(np.mean(point_errs))
    result["scenes"] = len(scenes)
    return result
