"""Packed batches: what the input pipeline's workers ship, and their expansion to the model's batch on the mesh.

A worker packs each view into the arrays its training targets derive from, in the model's landscape layout (H <= W:
portrait views are transposed and their intrinsics' first two rows swapped, so they project camera points to
landscape pixel (x, y) = true (row, column)); `collate` stacks B samples of V views into one dict of
  img                (B, V, H, W, 3) uint8
  depthmap           (B, V, H, W) float32 z-depth, invalid pixels 0
  camera_pose        (B, V, 4, 4) float32 camera-to-world
  camera_intrinsics  (B, V, 3, 3) float32
  true_shape         (B, V, 2) int32, (height, width) of the view in its true orientation
  jitter             (B, V, 8) float32 colour-jitter parameters (fast3r_jax.data.jitter; identity if none drawn)
About 1.4 MB per 512x384 view against the model batch's 5.7 MB, in six arrays per batch rather than seven per
view: grain moves every array between processes through a shared-memory block of its own, which costs the main
process time per block and per byte.

`to_mesh` puts a packed batch on the mesh and `unpack`s it there into the model's batch, a list of V dicts of
  img                (B, 3, H, W) float32 in [-1, 1]
  true_shape         (B, 2) int32
  pts3d              (B, H, W, 3) float32 world points
  valid_mask         (B, H, W) bool
  depthmap           (B, H, W) float32
  camera_pose        (B, 4, 4) float32
  camera_intrinsics  (B, 3, 3) float32
(also the structure of fast3r_jax.data.rendered): img colour-jittered there (`jitter.apply`), then through a
256-entry table of `fast3r_jax.io.images.normalize` (bit-identical to normalising on the host), valid_mask = finite
depth > 0, and pts3d the unprojection of the depth in float32 by `geometry_np.depthmap_to_world`'s formula (equal to
it up to float32 rounding: the sums may be ordered or fused differently).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from fast3r_jax import sharding as sharding_lib
from fast3r_jax.data import jitter
from fast3r_jax.io.images import normalize
from fast3r_jax.model.fast3r import orientation_of

PACKED_KEYS = ("img", "depthmap", "camera_pose", "camera_intrinsics", "true_shape", "jitter")
BATCH_KEYS = ("img", "true_shape", "pts3d", "valid_mask", "depthmap", "camera_pose", "camera_intrinsics")
Packed = dict[str, np.ndarray]
Batch = list[dict[str, jax.Array]]

# normalize(value) for every uint8 value, as computed on the host
_IMG_TABLE = normalize(np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (1, 256, 3)))[0, 0]  # (256,)


def pack_view(view: dict[str, Any]) -> dict[str, np.ndarray]:
    """Sample-format view (img, depthmap, camera_pose, camera_intrinsics, optionally jitter) -> packed arrays in
    landscape layout."""
    height, width = view["img"].shape[:2]
    out = {
        "img": np.asarray(view["img"], np.uint8),  # (H, W, 3)
        "depthmap": np.asarray(view["depthmap"], np.float32),  # (H, W)
        "camera_pose": np.asarray(view["camera_pose"], np.float32),
        "camera_intrinsics": np.asarray(view["camera_intrinsics"], np.float32),
        "true_shape": np.array((height, width), np.int32),
        "jitter": np.asarray(view.get("jitter", jitter.IDENTITY), np.float32),
    }
    if width < height:
        out["img"] = out["img"].swapaxes(0, 1)
        out["depthmap"] = out["depthmap"].swapaxes(0, 1)
        out["camera_intrinsics"] = out["camera_intrinsics"][[1, 0, 2]]
    return out


def collate(samples: Sequence[Sequence[dict[str, np.ndarray]]]) -> Packed:
    """B samples of V packed views -> one dict of (B, V, ...) arrays (all views of a batch share one shape)."""
    num_views = len(samples[0])
    if any(len(s) != num_views for s in samples):
        raise ValueError(f"samples of one batch have different view counts: {[len(s) for s in samples]}")
    batch = {}
    for key in PACKED_KEYS:
        arrays = [view[key] for sample in samples for view in sample]
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"{key}: shapes differ within the batch (samples x views): {[a.shape for a in arrays]}")
        batch[key] = np.stack(arrays).reshape(len(samples), num_views, *arrays[0].shape)
    return batch


def orientations(packed: Packed) -> tuple[str, ...]:
    """Static orientation per view, from the host's true shapes (see `fast3r_jax.model.fast3r.orientation_of`)."""
    true_shape = np.asarray(packed["true_shape"])  # (B, V, 2)
    return tuple(orientation_of(true_shape[:, v]) for v in range(true_shape.shape[1]))


def _entry(m: jax.Array, i: int, j: int) -> jax.Array:
    """m[..., i, j] as (..., 1, 1), to broadcast over the pixels."""
    return m[..., i, j, None, None]


def _world_points(depth: jax.Array, K: jax.Array, c2w: jax.Array, portrait: jax.Array) -> jax.Array:
    """(..., H, W, 3) world points of landscape-layout z-depth (..., H, W) (0 where invalid), intrinsics
    (..., 3, 3) (first two rows swapped where `portrait` (...)) and camera-to-world poses (..., 4, 4): each pixel is
    unprojected at its true-orientation coordinates with the true intrinsics."""
    height, width = depth.shape[-2:]
    cols = jnp.arange(width, dtype=jnp.float32)[None, :]  # (1, W)
    rows = jnp.arange(height, dtype=jnp.float32)[:, None]  # (H, 1)
    p = portrait[..., None, None]  # (..., 1, 1)
    u, v = jnp.where(p, rows, cols), jnp.where(p, cols, rows)  # (..., H, W) true column and row
    true_K = jnp.where(p, K[..., jnp.array([1, 0, 2]), :], K)  # (..., 3, 3)
    x = (u - _entry(true_K, 0, 2)) / _entry(true_K, 0, 0)  # ray (x, y, 1) of unit z-depth
    y = (v - _entry(true_K, 1, 2)) / _entry(true_K, 1, 1)
    pts = [(x * _entry(c2w, i, 0) + y * _entry(c2w, i, 1) + _entry(c2w, i, 2)) * depth + _entry(c2w, i, 3)
           for i in range(3)]
    return jnp.stack(pts, axis=-1)


def unpack(packed: dict[str, jax.Array]) -> Batch:
    """Packed (B, V, ...) arrays -> the model's batch (module docstring); traceable, runs where the arrays are."""
    depth = packed["depthmap"]  # (B, V, H, W)
    valid = jnp.isfinite(depth) & (depth > 0)
    portrait = packed["true_shape"][..., 0] > packed["true_shape"][..., 1]  # (B, V)
    pts3d = _world_points(jnp.where(valid, depth, 0.0), packed["camera_intrinsics"], packed["camera_pose"],
                          portrait)  # (B, V, H, W, 3)
    img = jitter.apply(packed["img"], packed["jitter"])  # (B, V, H, W, 3) uint8
    img = jnp.moveaxis(jnp.asarray(_IMG_TABLE)[img], -1, 2)  # (B, V, 3, H, W)
    fields = {"img": img, "true_shape": packed["true_shape"], "pts3d": pts3d, "valid_mask": valid,
              "depthmap": depth, "camera_pose": packed["camera_pose"],
              "camera_intrinsics": packed["camera_intrinsics"]}
    return [{key: fields[key][:, v] for key in BATCH_KEYS} for v in range(depth.shape[1])]


@functools.cache
def _unpack_to(sharding: NamedSharding):
    return jax.jit(unpack, out_shardings=sharding)


def to_mesh(packed: Packed, mesh: Mesh) -> Batch:
    """This process's part of a packed batch -> the global model batch, split over the mesh's data axis and
    unpacked on the devices (with one process the local part is the whole batch)."""
    data = sharding_lib.batch_sharding(mesh)
    arrays = {key: jax.make_array_from_process_local_data(data, np.asarray(packed[key])) for key in PACKED_KEYS}
    return _unpack_to(data)(arrays)
