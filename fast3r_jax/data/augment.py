"""Training augmentation of multi-view samples: aspect-ratio crop/resize, and the draw of the colour jitter.

Crop/resize follows the reference data pipeline step by step, so intrinsics stay exact:
1. crop the largest window centred on the (rounded) principal point;
2. pick the output orientation (portrait frames get the transposed bucket, near-square ones a random one);
3. rescale (Lanczos when shrinking, bicubic when enlarging; nearest for depth) so the image covers the
   bucket enlarged by a random margin in [0, aug_crop);
4. crop the bucket out of the centre.
Intrinsics follow the pixel-centre convention of the sample format: a scale s maps pixel centre x to
(x + 0.5) * s - 0.5. World points are computed once, from the final depth and intrinsics.

Colour jitter (fast3r_jax.data.jitter) is only drawn here: each view carries its parameters to the devices, which
apply them when they unpack the batch.

Everything random draws from the numpy Generator passed in, so a sample is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import PIL.Image

from fast3r_jax.data import jitter as jitter_lib
from fast3r_jax.data.readers import with_world_points

# Aspect-ratio buckets (W, H) of the released training configuration.
BUCKETS: tuple[tuple[int, int], ...] = ((512, 384), (512, 336), (512, 288), (512, 256), (512, 160))

View = dict[str, Any]
BBox = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive


def _size(img: np.ndarray) -> np.ndarray:
    return np.array([img.shape[1], img.shape[0]])  # (W, H)


def camera_matrix_of_crop(K: np.ndarray, in_size: Sequence[int], out_size: Sequence[int],
                          scaling: float = 1.0) -> np.ndarray:
    """Intrinsics after scaling an image of in_size (W, H) by `scaling` and keeping the centred
    out_size (W, H) window (half of the possibly fractional margin dropped on each side)."""
    margins = np.asarray(in_size, np.float64) * scaling - np.asarray(out_size, np.float64)
    if np.any(margins < 0):
        raise ValueError(f"crop {tuple(out_size)} is larger than the scaled image "
                         f"{tuple(np.asarray(in_size) * scaling)}")
    K = np.array(K, np.float64)
    K[:2, 2] += 0.5  # pixel centres at half-integers
    K[:2, :] *= scaling
    K[:2, 2] -= 0.5 * margins
    K[:2, 2] -= 0.5
    return K


def crop_image_depthmap(img: np.ndarray, depth: np.ndarray, K: np.ndarray,
                        bbox: BBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops (H, W, 3) image and (H, W) depth to bbox; the principal point moves by (-left, -top)."""
    left, top, right, bottom = (int(v) for v in bbox)
    if left < 0 or top < 0 or right > img.shape[1] or bottom > img.shape[0] or left >= right or top >= bottom:
        raise ValueError(f"crop box {bbox} is not inside the {img.shape[1]}x{img.shape[0]} image")
    K = np.array(K, np.float64)
    K[0, 2] -= left
    K[1, 2] -= top
    return img[top:bottom, left:right], depth[top:bottom, left:right], K


def rescale_image_depthmap(img: np.ndarray, depth: np.ndarray, K: np.ndarray,
                           min_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniformly rescales so that the output (W, H) covers min_size (W, H); output size is floored."""
    in_size = _size(img)
    scale = float(np.max(np.asarray(min_size) / in_size)) + 1e-8
    out_w, out_h = (int(v) for v in np.floor(in_size * scale))
    resample = PIL.Image.Resampling.LANCZOS if scale < 1 else PIL.Image.Resampling.BICUBIC
    img = np.asarray(PIL.Image.fromarray(img).resize((out_w, out_h), resample=resample))
    depth = cv2.resize(np.ascontiguousarray(depth, np.float32), (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    K = camera_matrix_of_crop(K, in_size, (out_w, out_h), scaling=scale)
    return img, depth, K


def center_crop(img: np.ndarray, depth: np.ndarray, K: np.ndarray,
                size: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops size (W, H) from the centre (half the margin on each side, rounded half to even)."""
    left, top = (int(v) for v in np.round(0.5 * (_size(img) - np.asarray(size))))
    return crop_image_depthmap(img, depth, K, (left, top, left + size[0], top + size[1]))


def crop_around_principal_point(img: np.ndarray, depth: np.ndarray, K: np.ndarray,
                                name: str = "view") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Largest crop centred on the rounded principal point (fails if it lies within 1/5 of a border)."""
    width, height = (int(v) for v in _size(img))
    cx, cy = (int(v) for v in np.round(np.asarray(K, np.float64)[:2, 2]))
    half_w, half_h = min(cx, width - cx), min(cy, height - cy)
    if not (half_w > width / 5 and half_h > height / 5):
        raise ValueError(f"{name}: principal point ({cx}, {cy}) is too close to the border of the "
                         f"{width}x{height} image")
    return crop_image_depthmap(img, depth, K, (cx - half_w, cy - half_h, cx + half_w, cy + half_h))


def oriented_resolution(width: int, height: int, resolution: Sequence[int],
                        rng: np.random.Generator) -> tuple[int, int]:
    """Landscape bucket (W, H), transposed for portrait frames and at random for near-square ones."""
    res_w, res_h = (int(v) for v in resolution)
    if res_w < res_h:
        raise ValueError(f"resolution must be given in landscape (W >= H), got {tuple(resolution)}")
    if height > 1.1 * width:
        return res_h, res_w
    if 0.9 < height / width < 1.1 and res_w != res_h and rng.integers(2):
        return res_h, res_w
    return res_w, res_h


def crop_resize(img: np.ndarray, depth: np.ndarray, K: np.ndarray, resolution: Sequence[int],
                rng: np.random.Generator, aug_crop: int = 0,
                name: str = "view") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One view to the bucket `resolution` (landscape (W, H)); returns image, depth and float64 K.

    The output is (H, W) for landscape frames and (W, H) for portrait ones. With aug_crop > 1 the
    image is first rescaled to cover the bucket plus a random margin in [0, aug_crop) before the
    centre crop, i.e. a random zoom.
    """
    img, depth, K = crop_around_principal_point(img, depth, K, name)
    out_size = oriented_resolution(img.shape[1], img.shape[0], resolution, rng)
    cover = np.array(out_size)
    if aug_crop > 1:
        cover += rng.integers(0, aug_crop)
    img, depth, K = rescale_image_depthmap(img, depth, K, cover)
    return center_crop(img, depth, K, out_size)


def augment_view(view: View, resolution: Sequence[int] | None, rng: np.random.Generator,
                 aug_crop: int = 0, jitter: bool = True, world_points: bool = True) -> View:
    """A sample-format view cropped/resized to `resolution` (None: kept), with its colour jitter's parameters under
    "jitter" (fast3r_jax.data.jitter; applied on the devices when the packed batch is unpacked).

    World points and the valid mask are computed here, from the final depth and intrinsics (the input needs no
    `pts3d`); with world_points=False both are left out (the input pipeline derives them on the devices).
    """
    img, depth, K = view["img"], view["depthmap"], view["camera_intrinsics"]
    name = f"{view.get('dataset', '?')}/{view.get('label', '?')}/{view.get('instance', '?')}"
    if resolution is not None:
        img, depth, K = crop_resize(img, depth, K, resolution, rng, aug_crop, name)
    out = {**view, "img": np.ascontiguousarray(img), "depthmap": np.ascontiguousarray(depth, np.float32),
           "camera_intrinsics": np.asarray(K, np.float32), "true_shape": np.array(img.shape[:2], np.int32)}
    if jitter:
        out["jitter"] = jitter_lib.draw(rng)
    if world_points:
        return with_world_points(out)
    return {k: v for k, v in out.items() if k not in ("pts3d", "valid_mask")}


def augment_views(views: Sequence[View], resolution: Sequence[int] | None, rng: np.random.Generator,
                  aug_crop: int = 0, jitter: bool = True, world_points: bool = True) -> list[View]:
    """Every view of a sample to the same bucket; see `augment_view`."""
    return [augment_view(view, resolution, rng, aug_crop, jitter, world_points) for view in views]
