"""Fast3R's benchmarks: relative camera-pose accuracy and point-cloud reconstruction quality, per sample.

A sample is a list of views in the shared sample format (`fast3r_jax.data.readers.make_view`); a prediction is one
dict per view with the model's four maps (`pts3d_in_other_view` (H, W, 3), `conf` (H, W), `pts3d_local`,
`conf_local`), in the view's true orientation. Scores are computed per sample and averaged over samples, as the
reference evaluation does.

Camera poses: cameras are recovered from the prediction by `cameras.estimate_cameras` (PnP on the global pointmap
with the focal of view 0, 100 RANSAC iterations, as the reference; or the Procrustes alignment of each local
pointmap onto its global pointmap, every pixel weighted by its confidence) and compared with the ground truth pair
by pair: RRA/RTA at 5/15/30 degrees and mAA(30) (`metrics`).

Reconstruction, for two point sources as the reference reports them:
  global         the global head's pointmaps (the reference's ablation 'without local head');
  local_aligned  each local-head pointmap moved into the global frame by the similarity that fits it to the global
                 pointmap on its valid pixels of at least the 85th confidence percentile (the reference's default).
The valid pixels of all views form one predicted cloud, aligned to the ground-truth cloud by a similarity weighted
by the same 85th-percentile mask; normals come from a PCA of the 30 nearest neighbours (Open3D's default) and
accuracy / completion / normal consistency from nearest neighbours (`metrics.accuracy`, `metrics.completion`). No
point is subsampled: every valid pixel counts, in the ground truth's units (metres; DTU: millimetres).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from scipy.spatial import cKDTree
from tqdm import tqdm

from fast3r_jax import distributed
from fast3r_jax.config import Fast3RConfig
from fast3r_jax.geometry import cameras, metrics
from fast3r_jax.geometry.cameras import POSE_SOLVERS
from fast3r_jax.geometry.transforms import align_points
from fast3r_jax.inference.engine import Engine
from fast3r_jax.inference.sharded import ShardedEngine
from fast3r_jax.io.images import normalize

TASKS = ("pose", "recon")
HEADS = ("global", "local_aligned")
RECON_METRICS = ("acc", "acc_med", "comp", "comp_med", "nc1", "nc1_med", "nc2", "nc2_med")
POSE_METRICS = tuple(f"{p}_at_{tau}" for p in ("RRA", "RTA") for tau in metrics.POSE_THRESHOLDS_DEG) + (
    f"mAA_{metrics.MAA_MAX_THRESHOLD_DEG}",)
CONFIDENT_PERCENTILE = 85.0  # pixels used to fit the local->global and prediction->GT similarities
PROCRUSTES_CONF_PERCENTILE = 0.0  # Procrustes poses weight every pixel by its confidence
NORMAL_NEIGHBOURS = 30
_NORMAL_CHUNK = 1 << 16

Prediction = list[dict[str, np.ndarray]]
Predictor = Callable[[Sequence[Mapping], int], Prediction]  # (views, sample index) -> per-view maps

_quantile = jax.jit(cameras.conf_quantile)


@dataclasses.dataclass
class SampleResult:
    """Scores of one sample; the pose fields are set when poses were evaluated."""

    name: str
    num_views: int
    scores: dict[str, float]  # POSE_METRICS and f"{head}/{metric}" for RECON_METRICS
    rot_err: np.ndarray | None = None  # (P,) degrees, pairs i < j
    trans_err: np.ndarray | None = None  # (P,) degrees
    pred_c2w: np.ndarray | None = None  # (V, 4, 4)
    gt_c2w: np.ndarray | None = None  # (V, 4, 4)


# ----------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------


def model_predictor(config: Fast3RConfig, params: Mapping, dtype: str = "float32", seed: int = 0,
                    mesh: Mesh | None = None, seq_attention: str = "allgather") -> Predictor:
    """Predictions of the model through `Engine` (compiled once per view shape set, reused across samples), or
    through `ShardedEngine` over `mesh` (several devices or processes; every process gets the predictions).

    Sample i draws its image ids from `seed + i`.
    """
    engine = (Engine(config, params, dtype) if mesh is None else
              ShardedEngine(config, params, mesh, dtype, seq_attention=seq_attention))

    def predict(views: Sequence[Mapping], index: int) -> Prediction:
        inputs = [{"img": normalize(v["img"])[None]} for v in views]  # (1, 3, H, W) each
        return distributed.host_copy(engine(inputs, seed=seed + index))

    return predict


def scene_name(views: Sequence[Mapping]) -> str:
    """The '/'-separated prefix shared by the labels of all views (e.g. 'chess/seq-01' of 'chess/seq-01/000020')."""
    parts = [str(v["label"]).split("/") for v in views]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return "/".join(common) or str(views[0]["label"])


# ----------------------------------------------------------------------------
# Camera poses.
# ----------------------------------------------------------------------------


def aligned_camera_centres(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted camera centres moved onto the ground-truth ones by their best similarity, and the latter: (V, 3) each.

    The prediction's frame and scale are arbitrary; the similarity makes the two trajectories comparable.
    """
    src, dst = pred_c2w[:, :3, 3].astype(np.float32), gt_c2w[:, :3, 3].astype(np.float32)
    return align_points(src, dst), dst


# ----------------------------------------------------------------------------
# Reconstruction.
# ----------------------------------------------------------------------------


def estimate_normals(points: np.ndarray, neighbours: int = NORMAL_NEIGHBOURS) -> np.ndarray:
    """Unit normals (N, 3) of an (N, 3) cloud: the least-variance direction of each point's nearest neighbours
    (itself included). Their sign is arbitrary; normal consistency takes |n_a . n_b|."""
    tree = cKDTree(points)
    k = min(neighbours, len(points))
    normals = np.empty_like(points, dtype=np.float64)
    for start in range(0, len(points), _NORMAL_CHUNK):
        _, index = tree.query(points[start:start + _NORMAL_CHUNK], k=k, workers=-1)
        near = points[index.reshape(len(index), k)]  # (C, k, 3)
        centred = near - near.mean(axis=1, keepdims=True)
        covariance = centred.transpose(0, 2, 1) @ centred  # (C, 3, 3)
        normals[start:start + _NORMAL_CHUNK] = np.linalg.eigh(covariance)[1][:, :, 0]  # smallest eigenvalue first
    return normals


def _confident(conf: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W) valid pixels whose confidence is at least the view's CONFIDENT_PERCENTILE percentile."""
    return (conf >= np.asarray(_quantile(conf, CONFIDENT_PERCENTILE / 100.0))) & valid


def local_in_global_frame(pred: Prediction, views: Sequence[Mapping]) -> list[np.ndarray]:
    """Each view's local pointmap (H, W, 3) moved into the global frame by `cameras.align_local_to_global`, fitted
    on its valid pixels of at least the CONFIDENT_PERCENTILE confidence percentile (views may differ in shape)."""
    return [np.asarray(cameras.align_local_to_global(p["pts3d_local"][None], p["pts3d_in_other_view"][None],
                                                     p["conf"][None], CONFIDENT_PERCENTILE, v["valid_mask"][None])[0])
            for p, v in zip(pred, views)]


class GroundTruthCloud(NamedTuple):
    """A sample's ground-truth points over all pixels of all views, and the normals of the valid ones."""

    points: np.ndarray  # (N, 3) float32, N = sum of H * W
    valid: np.ndarray  # (N,) bool
    normals: np.ndarray  # (M, 3), M = valid.sum()


def ground_truth_cloud(views: Sequence[Mapping]) -> GroundTruthCloud:
    """The sample's GT cloud, computed once and shared by both heads' scores."""
    valid = np.concatenate([v["valid_mask"].reshape(-1) for v in views])
    if not valid.any():
        raise ValueError(f"sample {scene_name(views)} has no valid ground-truth point")
    points = np.concatenate([v["pts3d"].reshape(-1, 3) for v in views]).astype(np.float32)
    return GroundTruthCloud(points, valid, estimate_normals(points[valid]))


def reconstruction_scores(points: Sequence[np.ndarray], conf: Sequence[np.ndarray], views: Sequence[Mapping],
                          gt: GroundTruthCloud) -> dict[str, float]:
    """RECON_METRICS of per-view predicted points (H, W, 3) with confidences (H, W) against the views' GT cloud."""
    weights = np.concatenate([_confident(c, v["valid_mask"]).reshape(-1) for c, v in zip(conf, views)])  # (N,)
    src = np.concatenate([p.reshape(-1, 3) for p in points]).astype(np.float32)  # (N, 3)
    rec = align_points(src, gt.points, (weights if weights.any() else gt.valid).astype(np.float32))[gt.valid]
    ref = gt.points[gt.valid]
    rec_normals = estimate_normals(rec)
    acc = metrics.accuracy(ref, rec, gt.normals, rec_normals)  # (mean, median, nc mean, nc median)
    comp = metrics.completion(ref, rec, gt.normals, rec_normals)
    return dict(zip(RECON_METRICS, (acc[0], acc[1], comp[0], comp[1], acc[2], acc[3], comp[2], comp[3])))


# ----------------------------------------------------------------------------
# Samples.
# ----------------------------------------------------------------------------


def evaluate_sample(views: Sequence[Mapping], pred: Prediction, tasks: Sequence[str],
                    pose_solver: str | None = "pnp") -> SampleResult:
    """Scores of one sample's prediction for the given TASKS."""
    result = SampleResult(scene_name(views), len(views), {})
    if "pose" in tasks:
        gt_c2w = np.stack([v["camera_pose"] for v in views]).astype(np.float32)  # (V, 4, 4)
        pred_c2w = cameras.estimate_cameras(pred, pose_solver,
                                            min_conf_percentile=PROCRUSTES_CONF_PERCENTILE).c2w.astype(np.float32)
        result.scores |= metrics.camera_pose_metrics(pred_c2w, gt_c2w)
        rot_err, trans_err = metrics.relative_pose_errors(pred_c2w, gt_c2w)
        result.rot_err, result.trans_err = np.asarray(rot_err), np.asarray(trans_err)
        result.pred_c2w, result.gt_c2w = pred_c2w, gt_c2w
    if "recon" in tasks:
        sources = {"global": ([p["pts3d_in_other_view"] for p in pred], [p["conf"] for p in pred]),
                   "local_aligned": (local_in_global_frame(pred, views), [p["conf_local"] for p in pred])}
        gt = ground_truth_cloud(views)
        for head in HEADS:
            result.scores |= {f"{head}/{k}": v for k, v in reconstruction_scores(*sources[head], views, gt).items()}
    return result


def evaluate(predict: Predictor, data: Sequence[Sequence[Mapping]], tasks: Sequence[str],
             pose_solver: str | None = "pnp", num_samples: int | None = None,
             progress: bool | None = None) -> list[SampleResult]:
    """Scores of the first `num_samples` samples of `data` (all when None); pose_solver is used by the pose task.
    progress: None shows a bar on a terminal."""
    unknown = set(tasks) - set(TASKS)
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tuple(tasks)}")
    if "pose" in tasks and pose_solver not in POSE_SOLVERS:
        raise ValueError(f"pose solver must be one of {POSE_SOLVERS}, got {pose_solver!r}")
    count = len(data) if num_samples is None else min(num_samples, len(data))
    results = []
    bar = tqdm(range(count), desc="evaluation", unit="sample", disable=None if progress is None else not progress)
    for index in bar:
        views = data[index]
        results.append(evaluate_sample(views, predict(views, index), tasks, pose_solver))
    return results


def mean_scores(results: Sequence[SampleResult]) -> dict[str, float]:
    """Each score averaged over the samples (the reference's aggregation, medians included)."""
    return {k: float(np.mean([r.scores[k] for r in results])) for k in results[0].scores}


def evaluate_scenes(config: Fast3RConfig, params: Mapping, scenes, *, dtype: str = "float32",
                    pose_solver: str = "procrustes", seed: int = 0) -> dict[str, float]:
    """Pose and reconstruction scores of the model averaged over the samples of `scenes`, plus the median rotation
    error over all pairs and the sample count (the summary `benchmarks/builtin_model.py` records)."""
    results = evaluate(model_predictor(config, params, dtype, seed), scenes, TASKS, pose_solver, progress=False)
    summary = mean_scores(results)
    summary["rot_err_deg_median"] = float(np.median(np.concatenate([r.rot_err for r in results])))
    summary["scenes"] = len(results)
    return summary
