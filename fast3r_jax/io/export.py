"""Reconstruction outputs: point clouds, cameras, scenes, depth and confidence maps, and a preview image.

All writers take plain numpy arrays and produce standard files that other tools read:

* ``write_ply``: binary little-endian PLY point cloud (x, y, z float32; red, green, blue uint8).
* ``write_colmap``: COLMAP model, binary (``cameras.bin``, ``images.bin``, ``points3D.bin``) or text, with tracks.
* ``write_cameras_json``: every camera in one small JSON file (schema in its docstring); ``read_cameras_json``
  reads it back (reconstructions, the example scene's ground truth, known intrinsics).
* ``write_glb``: binary glTF 2.0 scene with the point cloud and the camera frustums.
* ``write_depth_png`` / ``write_confidence_png``: per-view maps as 16-bit / 8-bit grayscale PNGs; ``write_npy``.
* ``write_pointmaps``: every view's global and local pointmaps, confidences and colours in one ``.npz``.
* ``write_preview_png``: a software rendering of the point cloud and the cameras.

Conventions:

* Cameras follow OpenCV (+x right, +y down, +z forward); ``c2w`` (V, 4, 4) maps camera to world coordinates.
* ``intrinsics`` (V, 3, 3) are pinhole matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] mapping camera points to
  pixel coordinates (u, v) = (column, row) in which the centre of the top-left pixel is (0, 0) (the project's
  convention, see ``cameras.py``); an image then spans [-0.5, W - 0.5] x [-0.5, H - 0.5].
* ``image_sizes`` (V, 2) are integer (width, height) pairs.
* Point writers drop points whose coordinates are not finite, log a warning and return how many they dropped.

Every file is first written under a temporary name in its destination folder and then renamed into place, so
an interrupted run never leaves a half-written file behind.
"""

import json
import logging
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from scipy import ndimage
from scipy.spatial import cKDTree

from fast3r_jax.data import geometry_np
from fast3r_jax.geometry.transforms import inverse_rigid
from fast3r_jax.io.files import atomic_file

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

# Frustum vertices are [centre, top-left, top-right, bottom-right, bottom-left]; edges index into them.
FRUSTUM_EDGES = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]])  # (8, 2)
# glTF is y up with cameras looking along -z; an OpenCV world point (x, y, z) is stored as (x, -y, -z), a
# 180-degree turn about x, so that the reference camera of an OpenCV-framed scene looks down glTF's -z.
OPENCV_TO_GLTF = np.array([1.0, -1.0, -1.0])
COLMAP_UNKNOWN_ERROR = -1.0  # COLMAP's own value for a 3D point whose reprojection error is unknown.
DEPTH_PNG_MAX = 65535
MAX_SPLAT_RADIUS = 8  # preview splats cover at most (2 * 8 + 1)^2 pixels
# Viridis sampled at 0, 1/4, 1/2, 3/4, 1 (sRGB); colorize interpolates linearly between these.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
_GLB_MAGIC, _GLB_JSON, _GLB_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_GL_UNSIGNED_BYTE, _GL_UNSIGNED_INT, _GL_FLOAT = 5121, 5125, 5126
_GL_ARRAY_BUFFER, _GL_ELEMENT_ARRAY_BUFFER = 34962, 34963
_GL_POINTS, _GL_LINES = 0, 1


def _num(x: float) -> str:
    """Shortest text that reads back as the same float64 (no negative zero)."""
    return repr(float(x) + 0.0)


# ----------------------------------------------------------------------------------------------- file safety


def _save_png(path: PathLike, image: Image.Image, text: dict[str, str] | None = None) -> None:
    """Lossless PNG with zlib level 1 and run-length matching (Z_RLE): depth maps compress as well as at the default
    level 6 (within 0.2%) 4x faster, confidence maps better than at level 1 with the default strategy."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with atomic_file(path) as f:
        image.save(f, format="PNG", pnginfo=info, compress_level=1, compress_type=zlib.Z_RLE)


# ------------------------------------------------------------------------------------------- input checking


def _as_points(points, colors) -> tuple[np.ndarray, np.ndarray, int]:
    """Checks a coloured point cloud; returns (points (M, 3) float32, colors (M, 3) uint8, number dropped).

    Rows whose float32 coordinates are not finite are dropped (and counted).
    """
    points, colors = np.asarray(points), np.asarray(colors)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if colors.shape != points.shape:
        raise ValueError(f"colors must have shape {points.shape} to match points, got {colors.shape}")
    if colors.dtype != np.uint8:
        raise ValueError(f"colors must be uint8 (0..255), got dtype {colors.dtype}")
    if not (np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)):
        raise ValueError(f"points must be real numbers, got dtype {points.dtype}")
    with np.errstate(over="ignore"):
        points = points.astype(np.float32, copy=False)
    finite = np.isfinite(points).all(axis=1)  # (N,)
    dropped = int(points.shape[0] - np.count_nonzero(finite))
    if not dropped:
        return points, colors, 0
    log.warning("dropping %d of %d points with non-finite coordinates", dropped, points.shape[0])
    return points[finite], colors[finite], dropped


def _as_cameras(c2w, intrinsics, image_sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks camera arrays; returns c2w (V, 4, 4) float64, intrinsics (V, 3, 3) float64, sizes (V, 2) int64."""
    c2w, intrinsics, sizes = np.asarray(c2w, np.float64), np.asarray(intrinsics, np.float64), np.asarray(image_sizes)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or c2w.shape[0] == 0:
        raise ValueError(f"c2w must have shape (V, 4, 4) with V >= 1, got {c2w.shape}")
    num = c2w.shape[0]
    if intrinsics.shape != (num, 3, 3):
        raise ValueError(f"intrinsics must have shape ({num}, 3, 3) to match c2w, got {intrinsics.shape}")
    if sizes.shape != (num, 2):
        raise ValueError(f"image_sizes must have shape ({num}, 2) (width, height) to match c2w, got {sizes.shape}")
    if not (np.isfinite(c2w).all() and np.isfinite(intrinsics).all()):
        raise ValueError("c2w and intrinsics must be finite")
    if np.abs(c2w[:, 3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
        raise ValueError("every c2w must have the bottom row [0, 0, 0, 1]")
    zeros = intrinsics[:, [0, 1, 2, 2, 2], [1, 0, 0, 1, 2]] - [0.0, 0.0, 0.0, 0.0, 1.0]  # (V, 5)
    if np.abs(zeros).max() > 1e-6 or (intrinsics[:, [0, 1], [0, 1]] <= 0).any():
        raise ValueError("intrinsics must be pinhole matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    if not np.issubdtype(sizes.dtype, np.number) or (sizes != np.round(sizes)).any() or (sizes <= 0).any():
        raise ValueError(f"image_sizes must be positive integer (width, height) pairs, got {sizes.tolist()}")
    return c2w, intrinsics, sizes.astype(np.int64)


def _check_names(names: Sequence[str], num: int) -> list[str]:
    names = list(names)
    if len(names) != num:
        raise ValueError(f"expected {num} image names (one per camera), got {len(names)}")
    bad = [n for n in names if not isinstance(n, str) or not n or any(c.isspace() for c in n)]
    if bad:
        raise ValueError(f"image names must be non-empty strings without whitespace, got {bad}")
    if len(set(names)) != num:
        raise ValueError(f"image names must be unique, got {names}")
    return names


def _as_map(values, name: str, float64: bool = True) -> np.ndarray:
    """Checks an (H, W) map of real numbers; returns it as float64 (a floating map as it is unless `float64`)."""
    values = np.asarray(values)
    if values.ndim != 2 or min(values.shape) == 0:
        raise ValueError(f"{name} must be a non-empty (H, W) array, got shape {values.shape}")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {values.dtype}")
    return values if np.issubdtype(values.dtype, np.floating) and not float64 else values.astype(np.float64)


# ------------------------------------------------------------------------------------------- point selection


def confidence_mask(conf_list: Sequence[np.ndarray], percentile: float | None = None,
                    threshold: float | None = None) -> list[np.ndarray]:
    """Per-view boolean masks of the confident pixels.

    Args:
        conf_list: per-view confidence maps (H_i, W_i).
        percentile: keep conf >= this percentile (0..100, linear interpolation between order statistics, as
            np.percentile and torch.quantile) of the finite confidences of all views together.
        threshold: keep conf > threshold.

    Returns:
        One (H_i, W_i) bool mask per view. With both arguments a pixel must pass both tests; with neither every
        pixel passes. Pixels with a non-finite confidence never pass.
    """
    confs = [_as_map(c, f"conf_list[{i}]", float64=False) for i, c in enumerate(conf_list)]
    if not confs:
        raise ValueError("conf_list is empty")
    masks = [np.isfinite(c) for c in confs]
    if percentile is not None:
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        finite = np.concatenate([c.reshape(-1) for c in confs])  # (n,)
        if not all(m.all() for m in masks):
            finite = finite[np.concatenate([m.reshape(-1) for m in masks])]  # (n_finite,)
        if finite.size == 0:
            raise ValueError("no finite confidence in conf_list to take a percentile of")
        cut = _percentile(finite, percentile)
        masks = [m & (c >= cut) for c, m in zip(confs, masks)]  # compared in float64 (cut is a float64 scalar)
    if threshold is not None:
        masks = [m & (c > np.float64(threshold)) for c, m in zip(confs, masks)]
    return masks


def _percentile(values: np.ndarray, percentile: float) -> np.float64:
    """np.percentile(values.astype(np.float64), percentile) (linear method) of a 1-D array it may reorder, without
    the float64 copy: the two order statistics are found in place in the array's own dtype (widening to float64
    keeps their order and values), then interpolated in float64 by numpy's rule."""
    rank = (values.size - 1) * (np.float64(percentile) / 100)
    below = int(np.floor(rank))
    above = min(below + 1, values.size - 1)
    values.partition([below, above] if above > below else below)
    low, high = np.float64(values[below]), np.float64(values[above])
    gamma = rank - below
    diff = high - low
    return high - diff * (1 - gamma) if gamma >= 0.5 else low + diff * gamma


def gather_points(pts3d_list: Sequence[np.ndarray], colors_list: Sequence[np.ndarray],
                  masks: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stacks the (masked) pixels of per-view pointmaps (H, W, 3) and uint8 colours (H, W, 3) into one cloud.

    Returns:
        points (N, 3) float32 and colors (N, 3) uint8, views in order, pixels in row-major order.
    """
    if len(colors_list) != len(pts3d_list) or (masks is not None and len(masks) != len(pts3d_list)):
        raise ValueError("pts3d_list, colors_list and masks must have one entry per view, got "
                         f"{len(pts3d_list)}, {len(colors_list)}, {None if masks is None else len(masks)}")
    points, colors = [], []
    for i, (pts, col) in enumerate(zip(pts3d_list, colors_list)):
        pts, col = np.asarray(pts), np.asarray(col)
        if pts.ndim != 3 or pts.shape[-1] != 3 or col.shape != pts.shape or col.dtype != np.uint8:
            raise ValueError(f"view {i}: pts3d must be (H, W, 3) and colors uint8 of the same shape, got "
                             f"{pts.shape} and {col.shape} {col.dtype}")
        mask = np.ones(pts.shape[:2], bool) if masks is None else np.asarray(masks[i], bool)
        if mask.shape != pts.shape[:2]:
            raise ValueError(f"view {i}: mask must have shape {pts.shape[:2]}, got {mask.shape}")
        points.append(pts[mask].astype(np.float32))
        colors.append(col[mask])
    if not points:
        raise ValueError("no views given")
    return np.concatenate(points), np.concatenate(colors)


def _subsample(num: int, max_points: int | None, seed: int) -> np.ndarray:
    """Indices of at most max_points of num items: all of them, or a sorted uniform random subset."""
    if max_points is None or num <= max_points:
        return np.arange(num)
    if max_points < 0:
        raise ValueError(f"max_points must be >= 0 or None, got {max_points}")
    return np.sort(np.random.default_rng(seed).choice(num, max_points, replace=False))


def most_confident(conf: np.ndarray, budget: int | None) -> np.ndarray:
    """Sorted indices of the `budget` items of highest confidence `conf` (N,) (all of them when N <= budget): the
    subsample a viewer or a sparse model gets instead of a full copy of the cloud."""
    if budget is None or len(conf) <= budget:
        return np.arange(len(conf))
    if budget < 0:
        raise ValueError(f"point budget must be >= 0 or None, got {budget}")
    return np.sort(np.argpartition(-np.asarray(conf), budget - 1)[:budget]) if budget else np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------------------ geometry


def rotation_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a 3x3 rotation matrix (Hamilton convention, as COLMAP).

    Branches on the largest diagonal term of the quaternion's outer product so the division is well conditioned.
    """
    m = np.asarray(rot, np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    branch = int(np.argmax([trace, m[0, 0], m[1, 1], m[2, 2]]))
    if branch == 0:
        s = 2.0 * math.sqrt(max(1.0 + trace, 0.0))
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif branch == 1:
        s = 2.0 * math.sqrt(max(1.0 + m[0, 0] - m[1, 1] - m[2, 2], 0.0))
        q = [(m[2, 1] - m[1, 2]) / s, s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif branch == 2:
        s = 2.0 * math.sqrt(max(1.0 + m[1, 1] - m[0, 0] - m[2, 2], 0.0))
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(max(1.0 + m[2, 2] - m[0, 0] - m[1, 1], 0.0))
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4]
    q = np.asarray(q) / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def world_to_camera(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (V, 3, 3) and translations (V, 3) with x_cam = R x_world + t, for rigid c2w (V, 4, 4)."""
    w2c = inverse_rigid(np.asarray(c2w))  # (V, 4, 4)
    return w2c[:, :3, :3], w2c[:, :3, 3]


def camera_frustums(c2w, intrinsics, image_sizes, depth: float) -> np.ndarray:
    """World-space frustum vertices (V, 5, 3): camera centre, then the image corners (top-left, top-right,
    bottom-right, bottom-left) back-projected to camera depth z = `depth`. Edges: FRUSTUM_EDGES."""
    c2w, intrinsics, sizes = _as_cameras(c2w, intrinsics, image_sizes)
    if not (math.isfinite(depth) and depth > 0):
        raise ValueError(f"frustum depth (frustum_scale) must be a positive number, got {depth}")
    far_edge = sizes - 0.5  # (V, 2); the near pixel edges are at -0.5
    takes_far = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], bool)  # corner order TL, TR, BR, BL
    corners = np.where(takes_far, far_edge[:, None, :], -0.5)  # (V, 4, 2)
    pixels = np.concatenate([corners, np.ones_like(corners[..., :1])], axis=-1)  # (V, 4, 3)
    rays = np.einsum("vij,vkj->vki", np.linalg.inv(intrinsics), pixels)  # (V, 4, 3), z = 1
    local = np.concatenate([np.zeros_like(rays[:, :1]), depth * rays], axis=1)  # (V, 5, 3)
    return np.einsum("vij,vkj->vki", c2w[:, :3, :3], local) + c2w[:, None, :3, 3]  # (V, 5, 3)


def _robust_box(points: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) corners of the 2nd..98th percentile box of `points`, grown to contain all of `extra`."""
    if len(points):
        low, high = np.percentile(points, [2, 98], axis=0)
        return np.minimum(low, extra.min(0)), np.maximum(high, extra.max(0))
    return extra.min(0), extra.max(0)


def _default_frustum_depth(points: np.ndarray, centres: np.ndarray) -> float:
    """A frustum depth of 6% of the scene's robust bounding-box diagonal (1.0 for a scene of one point)."""
    low, high = _robust_box(points, centres)
    diagonal = float(np.linalg.norm(high - low))
    return 0.06 * diagonal if diagonal > 0 else 1.0


def _camera_colors(num: int) -> np.ndarray:
    """Distinct uint8 colours (num, 3) along the colour ramp, first camera dark, last bright."""
    return colorize(np.linspace(0.0, 1.0, num), vmin=0.0, vmax=1.0)


# ------------------------------------------------------------------------------------------------ writers


def write_ply(path: PathLike, points, colors) -> int:
    """Writes a binary little-endian PLY point cloud (vertex: float x, y, z; uchar red, green, blue).

    Args:
        path: output file.
        points: (N, 3) world points (cast to float32); rows with non-finite values are dropped.
        colors: (N, 3) uint8 RGB.

    Returns:
        The number of dropped points.
    """
    points, colors, dropped = _as_points(points, colors)
    # (N, 15) bytes per vertex: x, y, z little-endian float32, then r, g, b.
    vertex = np.concatenate([np.ascontiguousarray(points, "<f4").view(np.uint8).reshape(-1, 12), colors], axis=1)
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with atomic_file(path) as f:
        f.write(header.encode("ascii"))
        f.write(vertex.data)
    return dropped


def _points2d_index(image_index: np.ndarray, num_images: int) -> np.ndarray:
    """Each point's index among its image's 2D points (points of one image keep their order)."""
    order = np.argsort(image_index, kind="stable")  # (N,)
    starts = np.concatenate([[0], np.cumsum(np.bincount(image_index, minlength=num_images))[:-1]])  # (V,)
    rank = np.empty(len(image_index), np.int64)
    rank[order] = np.arange(len(image_index)) - starts[image_index[order]]
    return rank


def write_colmap(folder: PathLike, intrinsics, c2w, image_sizes, image_names: Sequence[str], points=None,
                 colors=None, max_points: int | None = 100_000, seed: int = 0, *, observations=None,
                 binary: bool = False) -> int:
    """Writes a COLMAP model in `folder` (created if needed): text (cameras.txt, images.txt, points3D.txt) or, with
    `binary`, COLMAP's binary format (cameras.bin, images.bin, points3D.bin; what reconstruction tools read fastest).

    * cameras: one PINHOLE camera per image (CAMERA_ID = image index + 1) with params fx fy cx cy.
      COLMAP puts the centre of the top-left pixel at (0.5, 0.5), so cx, cy are the given ones + 0.5.
    * images: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, where the quaternion (w >= 0) and translation
      are the world-to-camera transform (inverse of c2w), then the image's 2D points (X, Y, POINT3D_ID): the pixels
      the points were observed at (none without `observations`).
    * points3D: POINT3D_ID X Y Z R G B ERROR with ERROR = -1 (unknown) and the track (IMAGE_ID, POINT2D_IDX) of its
      observation (empty without `observations`); at most `max_points` points (a uniform random subset drawn with
      `seed`, in input order; None keeps all).

    Args:
        folder: output folder.
        intrinsics: (V, 3, 3); c2w: (V, 4, 4) rigid OpenCV camera-to-world poses; image_sizes: (V, 2) (W, H).
        image_names: V unique names without whitespace (COLMAP's text format splits on spaces).
        points, colors: optional (N, 3) points and uint8 colours (both or neither); non-finite rows dropped.
        observations: optional (image index (N,) int, pixel (N, 2) (u, v) in the module's pixel convention): the
            pixel each point comes from, written as its track.

    Returns:
        The number of points dropped for non-finite coordinates (not counting the subsampling).
    """
    c2w, intrinsics, sizes = _as_cameras(c2w, intrinsics, image_sizes)
    names = _check_names(image_names, len(c2w))
    rot = c2w[:, :3, :3]
    if np.abs(np.einsum("vji,vjk->vik", rot, rot) - np.eye(3)).max() > 1e-4 or (np.linalg.det(rot) <= 0).any():
        raise ValueError("write_colmap needs rigid c2w poses: the 3x3 blocks must be rotations (orthonormal, det +1)")
    if (points is None) != (colors is None):
        raise ValueError("give both points and colors, or neither")
    num = len(c2w)
    if points is None:
        points, colors = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    count = len(np.asarray(points))
    if observations is not None:
        image_index, uv = np.asarray(observations[0], np.int64), np.asarray(observations[1], np.float64)
        if image_index.shape != (count,) or uv.shape != (count, 2) or ((image_index < 0) | (image_index >= num)).any():
            raise ValueError(f"observations must be image indices (N,) in [0, {num}) and pixels (N, 2) for N = "
                             f"{count} points, got {image_index.shape} and {uv.shape}")
    else:
        image_index, uv = np.zeros(count, np.int64), np.zeros((count, 2))
    finite = np.isfinite(np.asarray(points, np.float64)).all(axis=1) if count else np.ones(0, bool)
    points, colors, dropped = _as_points(points, colors)
    image_index, uv = image_index[finite], uv[finite]
    keep = _subsample(len(points), max_points, seed)
    points, colors, image_index, uv = points[keep], colors[keep], image_index[keep], uv[keep] + 0.5  # COLMAP pixels
    tracked = observations is not None
    point2d = _points2d_index(image_index, num) if tracked else np.zeros(len(points), np.int64)

    params = np.stack([intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2] + 0.5,
                       intrinsics[:, 1, 2] + 0.5], axis=1)  # (V, 4)
    rot_w2c, trans_w2c = world_to_camera(c2w)
    poses = np.stack([np.concatenate([rotation_to_quaternion(r), t]) for r, t in zip(rot_w2c, trans_w2c)])  # (V, 7)
    by_image = [np.flatnonzero(image_index == i) if tracked else np.zeros(0, np.int64) for i in range(num)]
    write = _write_colmap_binary if binary else _write_colmap_text
    write(Path(folder), sizes, params, poses, names, points, colors, image_index, uv, point2d, by_image, tracked)
    return dropped


def _write_colmap_text(folder: Path, sizes, params, poses, names, points, colors, image_index, uv, point2d, by_image,
                       tracked: bool) -> None:
    num = len(names)
    with atomic_file(folder / "cameras.txt", "w") as f:
        f.write("# Camera list with one line of data per camera:\n"
                "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                f"# Number of cameras: {num}\n")
        for i in range(num):
            f.write(f"{i + 1} PINHOLE {sizes[i, 0]} {sizes[i, 1]} " + " ".join(map(_num, params[i])) + "\n")
    with atomic_file(folder / "images.txt", "w") as f:
        f.write("# Image list with two lines of data per image:\n"
                "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                f"# Number of images: {num}, mean observations per image: {len(points) / num if tracked else 0:g}\n")
        for i in range(num):
            observed = " ".join(f"{x:.9g} {y:.9g} {k + 1}" for k, (x, y) in zip(by_image[i], uv[by_image[i]].tolist()))
            f.write(f"{i + 1} " + " ".join(map(_num, poses[i])) + f" {i + 1} {names[i]}\n{observed}\n")
    with atomic_file(folder / "points3D.txt", "w") as f:
        f.write("# 3D point list with one line of data per point:\n"
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
                f"# Number of points: {len(points)}, mean track length: {int(tracked)}\n")
        track = [f" {i + 1} {j}" if tracked else "" for i, j in zip(image_index.tolist(), point2d.tolist())]
        rows = [f"{k + 1} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} {COLMAP_UNKNOWN_ERROR:g}{t}\n"
                for k, ((x, y, z), (r, g, b), t) in enumerate(zip(points.tolist(), colors.tolist(), track))]
        f.write("".join(rows))


_COLMAP_PINHOLE = 1  # COLMAP's model id of PINHOLE


def _write_colmap_binary(folder: Path, sizes, params, poses, names, points, colors, image_index, uv, point2d,
                         by_image, tracked: bool) -> None:
    """COLMAP's binary model (src/colmap/scene/reconstruction_io.cc), little-endian, each file in one write."""
    num = len(names)
    cameras = np.empty(num, [("id", "<u4"), ("model", "<i4"), ("width", "<u8"), ("height", "<u8"),
                             ("params", "<f8", (4,))])
    cameras["id"], cameras["model"] = np.arange(1, num + 1), _COLMAP_PINHOLE
    cameras["width"], cameras["height"], cameras["params"] = sizes[:, 0], sizes[:, 1], params
    with atomic_file(folder / "cameras.bin") as f:
        f.write(np.uint64(num).tobytes() + cameras.tobytes())

    head = np.dtype([("id", "<u4"), ("pose", "<f8", (7,)), ("camera", "<u4")])
    observed = np.dtype([("xy", "<f8", (2,)), ("point3d", "<u8")])
    chunks = [np.uint64(num).tobytes()]
    for i in range(num):
        record = np.empty(1, head)
        record["id"], record["pose"], record["camera"] = i + 1, poses[i], i + 1
        rows = np.empty(len(by_image[i]), observed)
        rows["xy"], rows["point3d"] = uv[by_image[i]], by_image[i] + 1
        chunks += [record.tobytes(), names[i].encode("utf-8") + b"\0", np.uint64(len(rows)).tobytes(), rows.tobytes()]
    with atomic_file(folder / "images.bin") as f:
        f.write(b"".join(chunks))

    fields = [("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("track_length", "<u8")]
    table = np.empty(len(points), fields + ([("image", "<u4"), ("point2d", "<u4")] if tracked else []))
    table["id"], table["xyz"], table["rgb"] = np.arange(1, len(points) + 1), points, colors
    table["error"], table["track_length"] = COLMAP_UNKNOWN_ERROR, int(tracked)
    if tracked:
        table["image"], table["point2d"] = image_index + 1, point2d
    with atomic_file(folder / "points3D.bin") as f:
        f.write(np.uint64(len(points)).tobytes() + table.tobytes())


def write_cameras_json(path: PathLike, c2w, intrinsics, image_sizes, image_names: Sequence[str]) -> None:
    """Writes all cameras as JSON.

    Schema::

        {"camera_convention": "opencv",   # +x right, +y down, +z forward; c2w maps camera to world
         "pixel_convention": "...",       # centre of the top-left pixel at (0, 0) (see module docstring)
         "cameras": [{"name": str, "width": int, "height": int,
                      "c2w": 4x4 nested list (row-major), "intrinsics": 3x3 nested list}, ...]}
    """
    c2w, intrinsics, sizes = _as_cameras(c2w, intrinsics, image_sizes)
    names = list(image_names)
    if len(names) != len(c2w):
        raise ValueError(f"expected {len(c2w)} image names (one per camera), got {len(names)}")
    doc = {
        "camera_convention": "opencv",
        "pixel_convention": "pixel (column c, row r) is centred at (u, v) = (c, r)",
        "cameras": [{"name": str(name), "width": int(size[0]), "height": int(size[1]),
                     "c2w": pose.tolist(), "intrinsics": k.tolist()}
                    for name, size, pose, k in zip(names, sizes, c2w, intrinsics)],
    }
    with atomic_file(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def read_cameras_json(path: PathLike, require_c2w: bool = True) -> list[dict]:
    """Reads a `write_cameras_json` file: per camera, in file order, {"name": str, "width": int, "height": int,
    "intrinsics": (3, 3) float64, "c2w": (4, 4) float64, or None when absent and not `require_c2w`}.

    Raises ValueError naming the file, the camera and the field that is missing or not valid.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("cameras"), list):
        raise ValueError(f"{path}: field 'cameras' (a list) is missing")
    cameras = []
    for i, entry in enumerate(doc["cameras"]):
        where = f"{path}: cameras[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object")
        for field in ("name", "width", "height", "intrinsics", *(("c2w",) if require_c2w else ())):
            if field not in entry:
                raise ValueError(f"{where}: field '{field}' is missing")
        try:
            K = np.asarray(entry["intrinsics"], np.float64)
            geometry_np.check_intrinsics(K)
            size = (int(entry["width"]), int(entry["height"]))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: field 'intrinsics' or 'width'/'height' is not valid: {err}") from err
        c2w = None
        if "c2w" in entry:
            try:
                c2w = np.asarray(entry["c2w"], np.float64)
                geometry_np.check_pose(c2w)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}: field 'c2w' is not valid: {err}") from err
        cameras.append({"name": str(entry["name"]), "width": size[0], "height": size[1], "intrinsics": K, "c2w": c2w})
    return cameras


def _glb_bytes(primitives: list[dict], buffers: list[tuple[np.ndarray, str, int, bool, int | None]]) -> bytes:
    """Packs a glTF 2.0 binary file: one mesh node per primitive, one accessor/bufferView per array.

    Args:
        primitives: (name, mode, {attribute: array index}, indices array index or None) as dicts.
        buffers: (array, accessor type, component type, normalized, target) per array; arrays are 2-D
            (count, components) or 1-D (count,).
    """
    blob, views, accessors = bytearray(), [], []
    for array, kind, component, normalized, target in buffers:
        blob.extend(b"\0" * (-len(blob) % 4))  # accessor data must start 4-byte aligned
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": array.nbytes}
        if target is not None:
            view["target"] = target
        views.append(view)
        blob.extend(np.ascontiguousarray(array).tobytes())
        accessor = {"bufferView": len(views) - 1, "componentType": component, "count": int(array.shape[0]),
                    "type": kind}
        if normalized:
            accessor["normalized"] = True
        if kind == "VEC3" and component == _GL_FLOAT:  # POSITION accessors must carry their bounds
            accessor["min"], accessor["max"] = array.min(0).tolist(), array.max(0).tolist()
        accessors.append(accessor)
    blob.extend(b"\0" * (-len(blob) % 4))
    gltf = {
        "asset": {"version": "2.0", "generator": "fast3r_jax.io.export"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "materials": [{"name": "unlit", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1]},
                       "extensions": {"KHR_materials_unlit": {}}}],
        "scene": 0,
        "scenes": [{"nodes": list(range(len(primitives)))}],
        "nodes": [{"name": p["name"], "mesh": i} for i, p in enumerate(primitives)],
        "meshes": [{"name": p["name"], "primitives": [
            {"attributes": p["attributes"], "mode": p["mode"], "material": 0,
             **({} if p["indices"] is None else {"indices": p["indices"]})}]} for p in primitives],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join([struct.pack("<III", _GLB_MAGIC, 2, total), struct.pack("<II", len(text), _GLB_JSON), text,
                     struct.pack("<II", len(blob), _GLB_BIN), bytes(blob)])


def write_glb(path: PathLike, points, colors, c2w, intrinsics, image_sizes,
              frustum_scale: float | None = None) -> int:
    """Writes a binary glTF 2.0 scene: node "points" (POINTS primitive, POSITION + COLOR_0) and node "cameras"
    (LINES primitive: per camera FRUSTUM_EDGES between its centre and image corners, one colour per camera).

    Coordinates are converted from the OpenCV world to glTF's (y up, -z forward) by (x, y, z) -> (x, -y, -z)
    (OPENCV_TO_GLTF) for points and frustums alike. COLOR_0 is normalized uint8 RGBA (alpha 255); both
    primitives use an unlit material (KHR_materials_unlit).

    Args:
        frustum_scale: camera depth of the drawn image plane, in world units; None uses 6% of the scene's
            robust bounding-box diagonal.

    Returns:
        The number of points dropped for non-finite coordinates. The points node is left out when none remain.
    """
    points, colors, dropped = _as_points(points, colors)
    c2w, intrinsics, sizes = _as_cameras(c2w, intrinsics, image_sizes)
    if frustum_scale is None:
        frustum_scale = _default_frustum_depth(points, c2w[:, :3, 3])
    frustums = camera_frustums(c2w, intrinsics, sizes, frustum_scale)  # (V, 5, 3)
    num = len(c2w)
    opaque = np.full((num * 5, 1), 255, np.uint8)
    cam_rgba = np.concatenate([np.repeat(_camera_colors(num), 5, axis=0), opaque], axis=1)  # (5V, 4)
    edges = (FRUSTUM_EDGES[None] + 5 * np.arange(num)[:, None, None]).reshape(-1).astype(np.uint32)  # (16V,)
    buffers = [((frustums.reshape(-1, 3) * OPENCV_TO_GLTF).astype(np.float32), "VEC3", _GL_FLOAT, False,
                _GL_ARRAY_BUFFER),
               (cam_rgba, "VEC4", _GL_UNSIGNED_BYTE, True, _GL_ARRAY_BUFFER),
               (edges, "SCALAR", _GL_UNSIGNED_INT, False, _GL_ELEMENT_ARRAY_BUFFER)]
    primitives = [{"name": "cameras", "mode": _GL_LINES, "attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2}]
    if len(points):
        rgba = np.concatenate([colors, np.full((len(points), 1), 255, np.uint8)], axis=1)  # (N, 4)
        buffers += [(points * OPENCV_TO_GLTF.astype(np.float32), "VEC3", _GL_FLOAT, False, _GL_ARRAY_BUFFER),
                    (rgba, "VEC4", _GL_UNSIGNED_BYTE, True, _GL_ARRAY_BUFFER)]
        primitives.insert(0, {"name": "points", "mode": _GL_POINTS, "attributes": {"POSITION": 3, "COLOR_0": 4},
                              "indices": None})
    data = _glb_bytes(primitives, buffers)
    with atomic_file(path) as f:
        f.write(data)
    return dropped


def write_pointmaps(path: PathLike, global_maps: Sequence, conf: Sequence, local_maps: Sequence,
                    conf_local: Sequence, rgb: Sequence) -> None:
    """Writes every view's maps into one uncompressed `.npz` (what a viewer loads without the model): for view i
    (0-based) `global_{i}` float16 (H, W, 3) in view 0's frame, `conf_{i}` float32 (H, W), `local_{i}` float16
    (H, W, 3) in the view's camera frame, `conf_local_{i}` float32 (H, W) and `rgb_{i}` uint8 (H, W, 3).
    Confidences stay float32: they start at 1 and float16's step there (1e-3) ties many pixels at a percentile."""
    arrays = {}
    dtypes = {"global": np.float16, "conf": np.float32, "local": np.float16, "conf_local": np.float32}
    for i, maps in enumerate(zip(global_maps, conf, local_maps, conf_local, rgb, strict=True)):
        for (key, dtype), value in zip(dtypes.items(), maps[:4]):
            arrays[f"{key}_{i}"] = np.asarray(value).astype(dtype)
        arrays[f"rgb_{i}"] = np.asarray(maps[4], np.uint8)
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def write_npy(path: PathLike, values) -> None:
    """Writes one array as a `.npy` file (e.g. a depth or confidence map at full precision)."""
    with atomic_file(path) as f:
        np.save(f, np.asarray(values))


def write_depth_png(path: PathLike, depth, scale: float | None = None) -> float:
    """Writes a depth map as a 16-bit grayscale PNG: depth = value * scale, value 0 = no depth.

    The scale is stored in the PNG text chunk "depth_scale" (read it back with read_depth_png, or
    PIL's ``Image.open(path).text["depth_scale"]``). Pixels with a non-finite or non-positive depth get 0;
    every other depth is rounded to the nearest multiple of scale but at least 1, so the error is at most
    scale / 2 (scale for depths below scale / 2).

    Args:
        depth: (H, W) depths.
        scale: depth per unit; None uses max valid depth / 65535 (1.0 when there is none).

    Returns:
        The scale used.
    """
    depth = _as_map(depth, "depth")
    valid = (depth > 0) & (depth < np.inf)  # (H, W); NaN compares false
    top = float(depth.max(where=valid, initial=0.0))
    if scale is None:
        scale = top / DEPTH_PNG_MAX if top > 0 else 1.0
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale}")
    if round(top / scale) > DEPTH_PNG_MAX:
        raise ValueError(f"depth {top} does not fit in 16 bits at scale {scale} (max {DEPTH_PNG_MAX * scale})")
    with np.errstate(invalid="ignore"):
        units = np.maximum(np.rint(depth / scale), 1)  # round half to even, as np.round
    values = np.where(valid, units, 0).astype(np.uint16)
    _save_png(path, Image.fromarray(values), {"depth_scale": repr(float(scale))})
    return float(scale)


def read_depth_png(path: PathLike) -> np.ndarray:
    """Reads a write_depth_png file back: (H, W) float32 depth, 0 where there was none."""
    with Image.open(path) as image:
        if "depth_scale" not in getattr(image, "text", {}):
            raise ValueError(f"{path} has no 'depth_scale' text chunk; not written by write_depth_png")
        scale = float(image.text["depth_scale"])
        values = np.asarray(image, dtype=np.float64)  # (H, W)
    return (values * scale).astype(np.float32)


def write_confidence_png(path: PathLike, conf, vmin: float | None = None,
                         vmax: float | None = None) -> tuple[float, float]:
    """Writes a confidence map as an 8-bit grayscale PNG: value = round(255 * clip((conf - vmin) / (vmax - vmin))).

    The range is stored in the text chunks "conf_min" and "conf_max", so conf ~ vmin + value / 255 * (vmax -
    vmin). Non-finite confidences are written as 0 (like vmin); a zero range writes 0 everywhere.

    Args:
        conf: (H, W) confidences.
        vmin, vmax: range mapped to 0..255; None uses the min / max of the finite confidences.

    Returns:
        (vmin, vmax) used.
    """
    conf = _as_map(conf, "conf")
    finite = np.isfinite(conf)
    vmin = float(conf[finite].min()) if vmin is None and finite.any() else float(vmin or 0.0)
    vmax = float(conf[finite].max()) if vmax is None and finite.any() else float(vmax or 0.0)
    if vmax < vmin:
        raise ValueError(f"vmax ({vmax}) must be >= vmin ({vmin})")
    span = vmax - vmin if vmax > vmin else np.inf
    values = np.where(finite, np.round(255 * np.clip((np.where(finite, conf, vmin) - vmin) / span, 0, 1)), 0)
    _save_png(path, Image.fromarray(values.astype(np.uint8)), {"conf_min": repr(vmin), "conf_max": repr(vmax)})
    return vmin, vmax


def colorize(values, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Maps values (...) to uint8 RGB (..., 3) on a viridis-like ramp from vmin (dark) to vmax (bright).

    None takes the min / max of the finite values. Non-finite values become black.
    """
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    lo = float(values[finite].min()) if vmin is None and finite.any() else float(vmin or 0.0)
    hi = float(values[finite].max()) if vmax is None and finite.any() else float(vmax or 0.0)
    t = np.clip((np.where(finite, values, lo) - lo) / (hi - lo if hi > lo else np.inf), 0, 1)  # (...)
    pos = t * (len(_RAMP) - 1)
    low = np.minimum(pos.astype(np.int64), len(_RAMP) - 2)
    frac = (pos - low)[..., None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac  # (..., 3)
    return np.where(finite[..., None], np.round(rgb), 0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ preview


def _look_at(points: np.ndarray, c2w: np.ndarray, frustums: np.ndarray, tan_half_fov: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R (3, 3), t (3,)) of a virtual OpenCV camera behind and above the input cameras.

    Up is minus the mean camera y axis. Seen from above, the view runs along the mean camera forward axis
    (forward-facing captures) or along camera 0's (orbits, where the forward axes cancel out), tilted 30
    degrees down. The eye then moves as close as it can while the frustums and the points beyond the nearest
    camera (2nd..98th percentile box) stay within 90% of the half field of view tan_half_fov (x, y).
    """
    up = -c2w[:, :3, 1].mean(0)
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-6 else np.array([0.0, -1.0, 0.0])
    ahead = c2w[:, :3, 2].mean(0)
    if np.linalg.norm(ahead - up * (ahead @ up)) < 0.3:
        ahead = c2w[0, :3, 2]
    ahead = ahead - up * (ahead @ up)
    if np.linalg.norm(ahead) < 1e-6:  # cameras looking straight up or down
        ahead = c2w[0, :3, 0]
    ahead = ahead / np.linalg.norm(ahead)
    elevation = math.radians(30.0)
    z = math.cos(elevation) * ahead - math.sin(elevation) * up
    y = -(up - z * (up @ z))
    y = y / np.linalg.norm(y)
    rot = np.stack([np.cross(y, z), y, z])  # rows: camera x, y, z axes in world coordinates

    corners = frustums.reshape(-1, 3)
    low, high = _robust_box(points, corners)
    sample = points[_subsample(len(points), 5000, seed=0)]
    sample = sample[((sample >= low) & (sample <= high)).all(1)]
    sample = sample[sample @ z >= (c2w[:, :3, 3] @ z).min()]  # the near plane cuts the others away
    frame = np.concatenate([sample, corners])  # (F, 3)
    target = (frame.min(0) + frame.max(0)) / 2
    rel = (frame - target) @ rot.T  # (F, 3) camera-axis offsets from the target

    def fits(distance: float) -> bool:
        depth = rel[:, 2] + distance
        return bool((depth > 0).all() and (np.abs(rel[:, :2]) <= 0.9 * tan_half_fov * depth[:, None]).all())

    # A sphere holding all of `frame` fits at the upper bound; bisect down to the closest distance that fits.
    lo, hi = 0.0, max(float(np.linalg.norm(rel, axis=1).max()), 1e-6) / math.sin(math.atan(0.9 * tan_half_fov.min()))
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    eye = target - hi * z
    return rot, -rot @ eye


def _point_spacing(points: np.ndarray) -> np.ndarray:
    """Local sampling half-spacing (N,) of a surface sampled by `points` (N, 3): half the distance to the 4th
    nearest neighbour (on a square grid of spacing s the 4 nearest neighbours lie at s, giving s / 2)."""
    if len(points) < 5:
        return np.zeros(len(points))
    dist, _ = cKDTree(points).query(points, k=5, workers=-1)  # (N, 5); column 0 is the point itself; all cores
    return dist[:, 4] / 2


def _splat(image: np.ndarray, points_cam: np.ndarray, colors: np.ndarray, point_size: np.ndarray, focal: float,
           near: float) -> None:
    """Z-buffered square splats for camera-frame points (N, 3): a point of world size point_size (N,) at depth
    z covers (2 r + 1)^2 pixels with r = round(focal * point_size / (2 z)) (capped at MAX_SPLAT_RADIUS); the nearest
    point wins a pixel. Points nearer than `near` are not drawn."""
    height, width = image.shape[:2]
    front = points_cam[:, 2] > near
    points_cam, colors, point_size = points_cam[front], colors[front], point_size[front]
    if not len(points_cam):
        return
    z = points_cam[:, 2]
    pad = MAX_SPLAT_RADIUS  # splats of centres up to `pad` pixels off the image still reach into it
    u = np.round(focal * points_cam[:, 0] / z + width / 2).astype(np.int64) + pad  # (N,) in the padded image
    v = np.round(focal * points_cam[:, 1] / z + height / 2).astype(np.int64) + pad
    radius = np.clip(np.round(focal * point_size / (2 * z)), 0, MAX_SPLAT_RADIUS).astype(np.int64)  # (N,)
    on = (u >= 0) & (u < width + 2 * pad) & (v >= 0) & (v < height + 2 * pad)
    # Z-buffer: each point's rank by float32 depth (the lower index first on ties); per pixel the lowest rank wins.
    # Ranks are exact in float64, the type the minimum filters compute in.
    order = np.argsort(z.astype(np.float32), kind="stable")  # (N,) points from near to far
    rank = np.empty(len(z))
    rank[order] = np.arange(len(z))
    zbuf = np.full((height, width), np.inf)
    for r in np.unique(radius[on]):
        # The nearest centre of this radius per pixel, then a (2r + 1)^2 minimum filter spreads it over its splat.
        (index,) = np.nonzero(on & (radius == r))
        centres = np.full((height + 2 * pad, width + 2 * pad), np.inf)
        np.minimum.at(centres.reshape(-1), v[index] * centres.shape[1] + u[index], rank[index])
        spread = ndimage.minimum_filter(centres, size=2 * int(r) + 1, mode="constant", cval=np.inf)
        np.minimum(zbuf, spread[pad:pad + height, pad:pad + width], out=zbuf)
    (pixels,) = np.nonzero(np.isfinite(zbuf.reshape(-1)))
    image.reshape(-1, 3)[pixels] = colors[order[zbuf.reshape(-1)[pixels].astype(np.int64)]]


def _clip(a: np.ndarray, b: np.ndarray, lows: np.ndarray,
          highs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Liang-Barsky clipping of segments a -> b (S, D) to the box lows..highs (D,).

    Returns:
        The clipped segments (a', b') (S', D) and the mask (S,) of the segments that reach into the box.
    """
    d = b - a  # (S, D)
    t0, t1 = np.zeros(len(a)), np.ones(len(a))  # the part a + t d, t0 <= t <= t1, is inside
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(a.shape[1]):
            enter = (lows[axis] - a[:, axis]) / d[:, axis]
            leave = (highs[axis] - a[:, axis]) / d[:, axis]
            parallel = d[:, axis] == 0
            inside = (a[:, axis] >= lows[axis]) & (a[:, axis] <= highs[axis])
            t0 = np.where(parallel, np.where(inside, t0, 1.0), np.maximum(t0, np.minimum(enter, leave)))
            t1 = np.where(parallel, np.where(inside, t1, 0.0), np.minimum(t1, np.maximum(enter, leave)))
    keep = t0 < t1
    a, d = a[keep], d[keep]
    return a + t0[keep, None] * d, a + t1[keep, None] * d, keep


def _draw_lines(image: np.ndarray, starts: np.ndarray, ends: np.ndarray, colors: np.ndarray, focal: float,
                width_px: int) -> None:
    """Draws camera-frame 3D segments (S, 3) in colours (S, 3) on top of the image, width_px pixels wide,
    clipped to the near plane z = 1e-3 and to the screen."""
    height, width = image.shape[:2]
    a, b, keep = _clip(starts, ends, np.array([-np.inf, -np.inf, 1e-3]), np.full(3, np.inf))
    colors = colors[keep]
    centre = np.array([width / 2, height / 2])
    a, b = focal * a[:, :2] / a[:, 2:] + centre, focal * b[:, :2] / b[:, 2:] + centre  # (S', 2) pixels
    a, b, keep = _clip(a, b, np.array([-1.0, -1.0]), np.array([width, height], float))
    colors = colors[keep]
    offsets = np.arange(width_px) - width_px // 2
    for p, q, color in zip(a, b, colors):
        steps = int(np.ceil(np.abs(q - p).max())) + 1
        line = np.round(p + np.linspace(0.0, 1.0, steps)[:, None] * (q - p)).astype(np.int64)  # (steps, 2)
        for du in offsets:
            for dv in offsets:
                u, v = line[:, 0] + du, line[:, 1] + dv
                ok = (u >= 0) & (u < width) & (v >= 0) & (v < height)
                image[v[ok], u[ok]] = color


def render_preview(points, colors, c2w, intrinsics, image_sizes, size: tuple[int, int] = (1024, 768),
                   frustum_scale: float | None = None, point_scale: float = 2.5, max_points: int = 1_000_000,
                   background: tuple[int, int, int] = (250, 250, 250)) -> np.ndarray:
    """Software rendering (H, W, 3) uint8 of the point cloud and the camera frustums, seen from a virtual camera
    behind and above the input cameras (see _look_at) with a 50-degree field of view on the wider side.

    Points are z-buffered square splats whose world size is point_scale times the estimated point spacing, so
    surfaces render closed. The near clipping plane sits at the nearest camera centre, cutting away walls
    between the virtual eye and the cameras (e.g. the near wall of a room captured from inside). Frustums are
    2-pixel lines drawn on top in per-camera colours (colorize ramp, first camera dark). Clouds above max_points
    are randomly subsampled (the estimated spacing, and so the splats, grow to match), then non-finite points are
    dropped.
    """
    points, colors = np.asarray(points), np.asarray(colors)
    if points.ndim == 2 and colors.shape == points.shape and len(points) > max_points:
        keep = _subsample(len(points), max_points, seed=0)
        points, colors = points[keep], colors[keep]
    points, colors, _ = _as_points(points, colors)
    points = points.astype(np.float64)
    c2w, intrinsics, sizes = _as_cameras(c2w, intrinsics, image_sizes)
    width, height = size
    if width <= 0 or height <= 0 or point_scale < 0:
        raise ValueError(f"size must be positive and point_scale >= 0, got {size} and {point_scale}")
    depth = _default_frustum_depth(points, c2w[:, :3, 3]) if frustum_scale is None else frustum_scale
    frustums = camera_frustums(c2w, intrinsics, sizes, depth)  # (V, 5, 3)
    focal = max(width, height) / 2 / math.tan(math.radians(50.0) / 2)
    rot, trans = _look_at(points, c2w, frustums, np.array([width, height]) / (2 * focal))
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    near = float((c2w[:, :3, 3] @ rot.T + trans)[:, 2].min())
    if len(points):
        _splat(image, points @ rot.T + trans, colors, point_scale * _point_spacing(points), focal, near)
    frustums_cam = frustums @ rot.T + trans  # (V, 5, 3)
    segments = frustums_cam[:, FRUSTUM_EDGES]  # (V, 8, 2, 3)
    edge_colors = np.repeat(_camera_colors(len(c2w)), len(FRUSTUM_EDGES), axis=0)  # (8V, 3)
    _draw_lines(image, segments[:, :, 0].reshape(-1, 3), segments[:, :, 1].reshape(-1, 3), edge_colors, focal, 2)
    return image


def write_preview_png(path: PathLike, points, colors, c2w, intrinsics, image_sizes, **render_kwargs) -> None:
    """Writes render_preview(points, colors, c2w, intrinsics, image_sizes, **render_kwargs) as an RGB PNG."""
    _save_png(path, Image.fromarray(render_preview(points, colors, c2w, intrinsics, image_sizes, **render_kwargs)))
