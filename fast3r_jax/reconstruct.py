"""Reconstruction from images: load views, run the model on all of them, recover cameras, write the outputs.

    reconstruct(["photos/"], "out/", ReconstructConfig(size=512), checkpoint="ckpt/")

writes into `out/` (atomically: a temporary folder renamed into place once everything is written)
    points.ply                  coloured point cloud (confident pixels of the global pointmaps)
    colmap/                     cameras.txt, images.txt, points3D.txt (COLMAP text model)
    cameras.json                c2w, intrinsics and image size per view
    scene.glb                   the point cloud and the camera frustums
    depth/NNNN_<name>.png       16-bit depth in each estimated camera (scale in the PNG text chunk)
    confidence/NNNN_<name>.png  8-bit confidence (range in the PNG text chunk)
    preview.png                 a rendering of the points and cameras
    summary.json                inputs, settings, cameras, timings and, with ground truth, pose errors

Cameras come from one of two solvers: 'pnp' (upstream's: focal of view 0 by Weiszfeld, then RANSAC-PnP per view,
on the host) or 'procrustes' (per-view focal from the local pointmap and the similarity aligning it onto the
global pointmap, on the device). Predicted cameras live in the frame of view 0. When the input images sit next to
a ground-truth `cameras.json` (the format of `fast3r_jax.data.synthetic.write_example_scene`), pose errors are
reported after a similarity alignment of the predicted cameras onto the ground truth.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from fast3r_jax import distributed
from fast3r_jax.checkpoint import load_config, load_pretrained
from fast3r_jax.config import Fast3RConfig
from fast3r_jax.data.synthetic import CAMERAS_FILE, read_example_cameras
from fast3r_jax.errors import InputError
from fast3r_jax.geometry import cameras as cameras_lib
from fast3r_jax.geometry import metrics
from fast3r_jax.inference.engine import Engine
from fast3r_jax.inference.sharded import ShardedEngine
from fast3r_jax.io import export, images
from fast3r_jax.io.files import atomic_folder, check_output_folder

DEFAULT_CHECKPOINT = pathlib.Path(__file__).parent / "assets" / "builtin"  # trained by configs/train_builtin.py
BUILTIN_IMAGE_SIZE = 128  # long side of the images the built-in model was trained on (128x96)
UPSTREAM_IMAGE_SIZE = 512  # long side of the released upstream model's inputs
POSE_SOLVERS = ("pnp", "procrustes")
BAD_IMAGE_POLICIES = ("fail", "skip")
FOCAL_CONF_PERCENTILE = 10.0  # upstream's confidence percentile for the focal fit
PNP_ITERATIONS = 100  # RANSAC iterations of upstream's demo
DEFAULT_VIDEO_FPS = 1.0

log = logging.getLogger(__name__)


class ReconstructError(InputError):
    """A problem with the user's inputs, checkpoint or output folder (one message, no traceback needed)."""


# ----------------------------------------------------------------------------
# Checkpoint.
# ----------------------------------------------------------------------------


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> tuple[pathlib.Path, bool]:
    """(checkpoint folder, whether it is the built-in default DEFAULT_CHECKPOINT, used when none is given).

    Checks that the folder holds a readable config, so that a wrong path fails before any image is loaded.
    """
    if checkpoint is not None:
        path = pathlib.Path(checkpoint)
        if not path.is_dir():
            raise ReconstructError(f"checkpoint folder not found: {path}")
        _read_config(path)
        return path, False
    default = DEFAULT_CHECKPOINT
    if not default.is_dir():
        raise ReconstructError(f"no --checkpoint given and the built-in default checkpoint is not installed "
                               f"({default}); pass --checkpoint DIR, a folder written by save_pretrained or "
                               "python -m fast3r_jax.convert")
    _read_config(default)
    return default, True


def _read_config(checkpoint: pathlib.Path) -> Fast3RConfig:
    try:
        return load_config(checkpoint)
    except (ValueError, OSError, TypeError) as err:
        raise ReconstructError(f"cannot use checkpoint {checkpoint}: {err}") from err


def load_model(checkpoint: pathlib.Path) -> tuple[Fast3RConfig, dict]:
    """(config, params) of a checkpoint folder, or one ReconstructError saying why it cannot be used."""
    try:
        return load_pretrained(checkpoint)
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise ReconstructError(f"cannot use checkpoint {checkpoint}: {err}") from err


# ----------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------


def check_size(size: int) -> int:
    """Image size: 224 (224x224 centre crop, as upstream) or the long side, a multiple of 16 of at least 32."""
    if size != images.SHORT_SIDE_SIZE and (size < 2 * images.PATCH_SIZE or size % images.PATCH_SIZE):
        raise ReconstructError(f"--size must be 224 or a multiple of {images.PATCH_SIZE} of at least "
                               f"{2 * images.PATCH_SIZE}, got {size}")
    return size


def _evenly(num: int, keep: int) -> list[int]:
    """`keep` indices evenly spread over range(num), first and last included (all of them if keep >= num)."""
    if keep >= num:
        return list(range(num))
    return sorted({int(i) for i in np.round(np.linspace(0, num - 1, keep))})


def _sources(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """('image' | 'video', path) for every file named by the inputs (files, folders, glob patterns)."""
    if not inputs:
        raise ReconstructError("no input given: name image files, folders, glob patterns or videos")
    sources = []
    for item in map(os.fspath, inputs):
        if os.path.isfile(item) and item.lower().endswith(images.VIDEO_EXTENSIONS):
            sources.append(("video", item))
            continue
        try:
            sources += [("image", p) for p in images.expand_image_paths(item)]
        except (FileNotFoundError, ValueError) as err:
            raise ReconstructError(str(err)) from err
    return sources


def load_inputs(inputs: Sequence[str | os.PathLike], size: int = UPSTREAM_IMAGE_SIZE, on_bad_image: str = "fail",
                max_views: int | None = None, video_fps: float | None = None, video_frames: int | None = None,
                progress: bool | None = None, notify: Callable[[str], None] = log.warning) -> list[dict]:
    """Loads every image and sampled video frame as a view, with `path` (image file) or `video` and `frame_index`.

    on_bad_image: 'fail' raises on an unreadable, truncated or too small image; 'skip' leaves it out and says so.
    max_views: keep at most this many views, evenly spread over the inputs. Videos give one frame per second by
    default (video_fps), or video_frames evenly spaced frames.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    if max_views is not None and max_views < 1:
        raise ReconstructError(f"--max-views must be at least 1, got {max_views}")
    sources = _sources(inputs)
    if max_views is not None and all(kind == "image" for kind, _ in sources):
        sources = [sources[i] for i in _evenly(len(sources), max_views)]
    if video_frames is None and video_fps is None:
        video_fps = DEFAULT_VIDEO_FPS
    views, bad = [], []
    for kind, path in tqdm(sources, desc="loading", unit="file", disable=(None if progress is None else not progress)):
        try:
            if kind == "video":
                frames = images.load_video_frames(path, video_frames, None if video_frames else video_fps, size)
                views += [dict(frame, path=None, video=path) for frame in frames]
            else:
                views.append(dict(images.load_image(path, size), path=path))
        except ValueError as err:
            message = str(err) if path in str(err) else f"{path}: {err}"
            if on_bad_image == "fail":
                raise ReconstructError(f"bad input {message} (pass --on-bad-image skip to leave it out)") from err
            notify(f"skipping bad input {message}")
            bad.append(path)
    if not views:
        raise ReconstructError("no readable images among the inputs" + (f" (skipped {len(bad)})" if bad else ""))
    if max_views is not None and len(views) > max_views:
        views = [views[i] for i in _evenly(len(views), max_views)]
    return views


def view_colors(view: Mapping) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a loaded view (inverse of images.normalize)."""
    img = np.asarray(view["img"], np.float32).reshape(3, *np.asarray(view["img"]).shape[-2:])
    return np.clip(np.round((img * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def image_names(views: Sequence[Mapping]) -> list[str]:
    """Unique whitespace-free names per view: file names when they are unique, else index-prefixed."""
    names = []
    for view in views:
        if view.get("path"):
            name = os.path.basename(view["path"])
        else:
            name = f"{pathlib.Path(view['video']).stem}_frame{view['frame_index']:06d}.png"
        names.append("_".join(name.split()))
    if len(set(names)) != len(names):
        names = [f"{i:04d}_{n}" for i, n in enumerate(names)]
    return names


# ----------------------------------------------------------------------------
# Cameras.
# ----------------------------------------------------------------------------


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


@jax.jit
def _procrustes(pts3d_local: jax.Array, pts3d_global: jax.Array, conf: jax.Array, conf_local: jax.Array,
                min_conf_percentile: float) -> tuple[jax.Array, jax.Array]:
    """Focals (V,) from the local maps and c2w (V, 4, 4) aligning local onto global, on confident pixels."""
    focals = cameras_lib.focal_from_local(pts3d_local, conf_local, min_conf_percentile)
    cut = jax.vmap(cameras_lib.conf_quantile, in_axes=(0, None))(conf, min_conf_percentile / 100.0)  # (V,)
    weights = jnp.where(conf >= cut[:, None, None], conf, 0.0)  # (V, H, W)
    c2w, _ = cameras_lib.procrustes_poses(pts3d_local, pts3d_global, weights)
    return focals, c2w


def estimate_cameras(outputs: Sequence[Mapping], solver: str = "pnp",
                     min_conf_percentile: float = FOCAL_CONF_PERCENTILE) -> Cameras:
    """Cameras from per-view predictions (dicts with pts3d_in_other_view, conf, pts3d_local, conf_local; maps
    (H, W, ...) in true orientation, numpy or device arrays, any mix of shapes).

    'pnp': upstream's estimator (view 0's focal for every view, RANSAC-PnP with PNP_ITERATIONS iterations).
    'procrustes': per-view focal from the local pointmap and pose from the confidence-weighted similarity between
    local and global pointmaps, one jitted call per image shape.
    """
    if solver not in POSE_SOLVERS:
        raise ValueError(f"pose solver must be one of {POSE_SOLVERS}, got {solver!r}")
    num = len(outputs)
    hw = [tuple(np.shape(o["conf"])) for o in outputs]
    if solver == "pnp":
        c2w, focals = cameras_lib.estimate_camera_poses_pnp(
            [np.asarray(o["pts3d_in_other_view"]) for o in outputs], [np.asarray(o["conf"]) for o in outputs],
            focal_mode="first_view_from_global_head", niter=PNP_ITERATIONS)
        c2w, focals = c2w.astype(np.float64), focals.astype(np.float64)
    else:
        c2w, focals = np.zeros((num, 4, 4)), np.zeros(num)
        for shape in dict.fromkeys(hw):
            idx = [i for i in range(num) if hw[i] == shape]
            stack = {k: jnp.stack([jnp.asarray(outputs[i][k], jnp.float32) for i in idx])
                     for k in ("pts3d_local", "pts3d_in_other_view", "conf", "conf_local")}  # (G, H, W[, 3])
            f, pose = _procrustes(stack["pts3d_local"], stack["pts3d_in_other_view"], stack["conf"],
                                  stack["conf_local"], min_conf_percentile)
            focals[idx], c2w[idx] = np.asarray(f), np.asarray(pose)
    bad_pose = ~np.isfinite(c2w).all(axis=(1, 2))
    bad_focal = ~(np.isfinite(focals) & (focals > 0))
    c2w[bad_pose] = np.eye(4)
    focals = np.where(bad_focal, [_fallback_focal(*s) for s in hw], focals)
    intrinsics = np.zeros((num, 3, 3))
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = focals
    intrinsics[:, 0, 2] = [w / 2 for _, w in hw]
    intrinsics[:, 1, 2] = [h / 2 for h, _ in hw]
    intrinsics[:, 2, 2] = 1.0
    sizes = np.asarray([(w, h) for h, w in hw], np.int64)
    return Cameras(c2w, intrinsics, sizes, tuple(int(i) for i in np.flatnonzero(bad_pose | bad_focal)))


# ----------------------------------------------------------------------------
# Pose errors against ground truth.
# ----------------------------------------------------------------------------


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    return u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt


def align_cameras(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> np.ndarray:
    """Predicted c2w (V, 4, 4) moved onto the ground truth by one similarity x -> s R x + t.

    R is the chordal mean of the per-view rotation offsets R_gt R_pred^T; s and t are then the least-squares fit of
    the camera centres (s = 1 for a single view). Rotation columns of the result stay orthonormal.
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
    out = metrics.camera_pose_metrics(jnp.asarray(pred_c2w, jnp.float32), jnp.asarray(gt_c2w, jnp.float32))
    aligned = align_cameras(pred_c2w, gt_c2w)
    centre_err = np.linalg.norm(aligned[:, :3, 3] - gt_c2w[:, :3, 3], axis=-1)  # (V,)
    spread = np.linalg.norm(gt_c2w[:, :3, 3] - gt_c2w[:, :3, 3].mean(0), axis=-1).mean()
    out["rotation_error_deg"] = float(rotation_errors_deg(aligned[:, :3, :3], gt_c2w[:, :3, :3]).mean())
    out["translation_error"] = float(centre_err.mean())
    out["translation_error_rel"] = float(centre_err.mean() / spread) if spread > 0 else float("nan")
    return out


def ground_truth_poses(views: Sequence[Mapping], notify: Callable[[str], None] = log.warning
                       ) -> tuple[list[int], np.ndarray] | None:
    """(indices of the views that have one, their ground-truth c2w (K, 4, 4)) from a `cameras.json` next to the
    images (the write_example_scene format), or None when fewer than two views have one."""
    known: dict[str, np.ndarray] = {}
    folders = {os.path.dirname(os.path.realpath(v["path"])) for v in views if v.get("path")}
    for folder in sorted(folders):
        if not os.path.isfile(os.path.join(folder, CAMERAS_FILE)):
            continue
        try:
            entries = read_example_cameras(folder)
        except (ValueError, OSError) as err:
            notify(f"ignoring {os.path.join(folder, CAMERAS_FILE)}: {err}")
            continue
        known |= {os.path.realpath(e["file"]): e["c2w"] for e in entries}
    matched = [(i, known[os.path.realpath(v["path"])]) for i, v in enumerate(views)
               if v.get("path") and os.path.realpath(v["path"]) in known]
    if len(matched) < 2:
        return None
    return [i for i, _ in matched], np.stack([c for _, c in matched]).astype(np.float64)


# ----------------------------------------------------------------------------
# Outputs.
# ----------------------------------------------------------------------------


def write_outputs(folder: pathlib.Path, views: Sequence[Mapping], outputs: Sequence[Mapping], cams: Cameras,
                  names: Sequence[str], conf_percentile: float | None = 10.0,
                  conf_threshold: float | None = None) -> dict[str, Any]:
    """Writes every output file (see the module docstring) of host arrays into `folder`; returns point counts."""
    colors = [view_colors(v) for v in views]
    pts = [np.asarray(o["pts3d_in_other_view"]) for o in outputs]
    conf = [np.asarray(o["conf"]) for o in outputs]
    masks = export.confidence_mask(conf, conf_percentile, conf_threshold)
    points, point_colors = export.gather_points(pts, colors, masks)
    cam_args = (cams.c2w, cams.intrinsics, cams.image_sizes)
    dropped = export.write_ply(folder / "points.ply", points, point_colors)
    export.write_colmap(folder / "colmap", cams.intrinsics, cams.c2w, cams.image_sizes, names, points, point_colors)
    export.write_cameras_json(folder / "cameras.json", *cam_args, names)
    export.write_glb(folder / "scene.glb", points, point_colors, *cam_args)
    conf_range = (min(float(np.nanmin(c)) for c in conf), max(float(np.nanmax(c)) for c in conf))
    for i, (name, p, c) in enumerate(zip(names, pts, conf)):
        stem = f"{i:04d}_{pathlib.Path(name).stem}"
        depth = np.einsum("hwj,j->hw", p - cams.c2w[i, :3, 3], cams.c2w[i, :3, 2])  # z in the estimated camera
        export.write_depth_png(folder / "depth" / f"{stem}.png", depth)
        export.write_confidence_png(folder / "confidence" / f"{stem}.png", c, *conf_range)
    export.write_preview_png(folder / "preview.png", points, point_colors, *cam_args)
    return dict(points=int(len(points) - dropped), pixels=int(sum(c.size for c in conf)))


# ----------------------------------------------------------------------------
# The whole job.
# ----------------------------------------------------------------------------


def default_dtype() -> str:
    """bfloat16 on accelerators, float32 on CPU (where bfloat16 matmuls are slow and no memory is short)."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """The settings of one reconstruction job (the flags of `fast3r-jax reconstruct`).

    size: see `check_size`; None uses the resolution of the checkpoint's training: BUILTIN_IMAGE_SIZE for the
    built-in checkpoint, UPSTREAM_IMAGE_SIZE otherwise. image_ids: 'random' (upstream's draw, seeded by `seed`),
    'sequential', or None to follow the checkpoint's config. seq_attention: the ShardedEngine's, with a mesh.
    """

    size: int | None = None
    dtype: str | None = None  # None: bfloat16 on GPU/TPU, float32 on CPU
    max_views: int | None = None
    conf_percentile: float | None = 10.0
    conf_threshold: float | None = None
    pose_solver: str = "pnp"
    seed: int = 0
    image_ids: str | None = None
    on_bad_image: str = "fail"
    overwrite: bool = False
    video_fps: float | None = None
    video_frames: int | None = None
    encoder_chunk: int = 16
    head_chunk: int = 8
    seq_attention: str = "allgather"


def reconstruct(inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                config: ReconstructConfig = ReconstructConfig(), *, checkpoint: str | os.PathLike | None = None,
                mesh: Mesh | None = None, progress: bool | None = None,
                notify: Callable[[str], None] = log.warning) -> dict[str, Any]:
    """Images -> model -> cameras -> output folder `out`, as `config` says. Returns the summary also written to
    summary.json.

    mesh: run `ShardedEngine` over it (several devices or processes); every process computes the cameras,
    process 0 alone writes `out`. notify receives notes for the user (default checkpoint in use, skipped images,
    failed cameras).
    """
    (size, dtype, max_views, conf_percentile, conf_threshold, pose_solver, seed, image_ids, on_bad_image, overwrite,
     video_fps, video_frames, encoder_chunk, head_chunk, seq_attention) = dataclasses.astuple(config)
    out = pathlib.Path(out)
    given = [os.fspath(i) for i in inputs]
    input_paths = [p for _, p in _sources(given)] + [i for i in given if os.path.exists(i)]
    check_output_folder(out, overwrite=overwrite, inputs=input_paths)
    if pose_solver not in POSE_SOLVERS:
        raise ReconstructError(f"--pose-solver must be one of {POSE_SOLVERS}, got {pose_solver!r}")
    if conf_percentile is not None and not 0 <= conf_percentile <= 100:
        raise ReconstructError(f"--conf-percentile must lie in [0, 100], got {conf_percentile}")
    ckpt, is_default = resolve_checkpoint(checkpoint)
    if is_default:
        notify(f"no --checkpoint given: using the built-in default checkpoint {ckpt}")
    size = check_size(size or (BUILTIN_IMAGE_SIZE if is_default else UPSTREAM_IMAGE_SIZE))
    dtype = dtype or default_dtype()
    timings = {}

    start = time.perf_counter()
    views = load_inputs(inputs, size, on_bad_image, max_views, video_fps, video_frames, progress, notify)
    config, params = load_model(ckpt)
    timings["load_s"] = time.perf_counter() - start

    start = time.perf_counter()
    engine = (Engine(config, params, dtype, encoder_chunk=encoder_chunk, head_chunk=head_chunk) if mesh is None else
              ShardedEngine(config, params, mesh, dtype, encoder_chunk, head_chunk, seq_attention=seq_attention))
    ids = engine.image_ids(len(views), image_ids, seed)
    outputs = engine(views, ids, progress=progress)
    host_outputs = distributed.host_copy(outputs)
    timings["inference_s"] = time.perf_counter() - start

    start = time.perf_counter()
    on_device = pose_solver == "procrustes" and mesh is None  # sharded outputs go through the host copy
    cams = estimate_cameras(outputs if on_device else host_outputs, pose_solver)
    timings["cameras_s"] = time.perf_counter() - start
    if cams.failed:
        notify(f"camera estimation failed for views {list(cams.failed)}: identity pose and/or a 60-degree "
               "field-of-view focal written instead")

    names = image_names(views)
    summary: dict[str, Any] = dict(
        checkpoint=str(ckpt), default_checkpoint=is_default, num_views=len(views), size=size, dtype=dtype,
        pose_solver=pose_solver, image_ids=ids.tolist(), seed=seed, conf_percentile=conf_percentile,
        conf_threshold=conf_threshold, images=names, focals=cams.focals.tolist(), failed_cameras=list(cams.failed))
    gt = ground_truth_poses(views, notify)
    if gt is not None:
        idx, gt_c2w = gt
        summary["pose_errors"] = dict(pose_errors(cams.c2w[idx], gt_c2w), num_views=len(idx))

    summary["out"] = str(out)
    if not distributed.is_lead():
        return summary
    start = time.perf_counter()
    with atomic_folder(out, kind="reconstruction", overwrite=overwrite, inputs=input_paths) as folder:
        summary |= write_outputs(folder, views, host_outputs, cams, names, conf_percentile, conf_threshold)
        timings["export_s"] = time.perf_counter() - start
        summary["timings"] = timings
        (folder / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "out"}, indent=1)
                                             + "\n")
    return summary
