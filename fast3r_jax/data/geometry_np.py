"""Numpy pinhole-camera helpers shared by the data sources.

Conventions (those of the sample format): OpenCV cameras (x right, y down, z forward),
`c2w` maps camera to world coordinates, K is in pixels and pixel (x, y) sits at the
integer coordinates (x, y). Depth is z-depth in the camera frame.
"""

from __future__ import annotations

import numpy as np

from fast3r_jax.geometry.transforms import inverse_rigid


def check_intrinsics(K: np.ndarray) -> None:
    """Raises ValueError unless K is a finite (3, 3) zero-skew pinhole matrix with positive focals."""
    K = np.asarray(K)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    if not np.isfinite(K).all() or K[0, 1] != 0 or K[1, 0] != 0 or np.any(K[2] != (0, 0, 1)):
        raise ValueError(f"K must be a zero-skew pinhole matrix [[fx,0,cx],[0,fy,cy],[0,0,1]], got {K.tolist()}")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"K must have positive focals, got fx={K[0, 0]}, fy={K[1, 1]}")


def check_pose(c2w: np.ndarray) -> None:
    """Raises ValueError unless c2w is a finite (4, 4) matrix with last row (0, 0, 0, 1)."""
    c2w = np.asarray(c2w)
    if c2w.shape != (4, 4):
        raise ValueError(f"camera pose must have shape (4, 4), got {c2w.shape}")
    if not np.all(np.isfinite(c2w)) or np.any(c2w[3] != (0, 0, 0, 1)):
        raise ValueError(f"camera pose must be finite with last row (0, 0, 0, 1), got {c2w.tolist()}")


def pixel_grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float64 pixel coordinates (x, y) of every pixel."""
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack([xs, ys], axis=-1)


def camera_rays(K: np.ndarray, height: int, width: int, dtype: np.dtype = np.float64) -> np.ndarray:
    """(H, W, 3) camera-frame ray directions ((x - cx) / fx, (y - cy) / fy, 1) in `dtype`.

    A point at depth z along pixel (x, y) is z times its ray, so a ray parameter is a z-depth.
    """
    check_intrinsics(K)
    K = np.asarray(K, dtype)
    rays = np.ones((height, width, 3), dtype)
    rays[..., 0] = (np.arange(width, dtype=dtype) - K[0, 2]) / K[0, 0]
    rays[..., 1] = ((np.arange(height, dtype=dtype) - K[1, 2]) / K[1, 1])[:, None]
    return rays


def depthmap_to_world(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unprojects a z-depth map to world points.

    Args:
        depth: (H, W) z-depth; values that are not finite and > 0 are invalid.
        K: (3, 3) pinhole intrinsics.
        c2w: (4, 4) camera-to-world pose.

    Returns:
        pts3d: (H, W, 3) float32 world points, computed in float32; invalid pixels get
            depth 0, i.e. the camera centre.
        valid: (H, W) bool, finite depth > 0.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {depth.shape}")
    check_pose(c2w)
    valid = np.isfinite(depth) & (depth > 0)
    z = np.where(valid, depth, 0).astype(np.float32)
    c2w = np.asarray(c2w, np.float32)
    pts = camera_rays(K, *depth.shape, np.float32) @ c2w[:3, :3].T  # (H, W, 3) world rays of unit z-depth
    pts *= z[..., None]
    pts += c2w[:3, 3]
    return pts, valid


def world_to_pixels(pts: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projects world points into a camera.

    Args:
        pts: (..., 3) world points.
        K: (3, 3) pinhole intrinsics.
        c2w: (4, 4) camera-to-world pose.

    Returns:
        uv: (..., 2) float64 pixel coordinates (x, y); meaningless where z <= 0.
        z: (...) float64 z-depth in the camera frame.
    """
    check_intrinsics(K)
    check_pose(c2w)
    w2c = inverse_rigid(np.asarray(c2w, np.float64))
    pts_cam = np.asarray(pts, np.float64) @ w2c[:3, :3].T + w2c[:3, 3]  # (..., 3)
    z = pts_cam[..., 2]
    K = np.asarray(K, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pts_cam[..., :2] / z[..., None] * K[[0, 1], [0, 1]] + K[:2, 2]
    return uv, z
