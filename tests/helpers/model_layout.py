"""The model batch's per-view layout, computed on the host from a sample-format view (the reference for tests)."""

import numpy as np

from fast3r_jax.io.images import normalize


def model_layout(view: dict) -> dict[str, np.ndarray]:
    """A view with pts3d and valid_mask -> its fields in the model's landscape layout (fast3r_jax.data.packed):
    normalised (3, H, W) image, portrait views transposed, their intrinsics' first two rows swapped."""
    height, width = view["img"].shape[:2]
    out = {"img": normalize(view["img"]), "true_shape": np.array((height, width), np.int32),
           "pts3d": np.asarray(view["pts3d"], np.float32), "valid_mask": np.asarray(view["valid_mask"], bool),
           "depthmap": np.asarray(view["depthmap"], np.float32),
           "camera_pose": np.asarray(view["camera_pose"], np.float32),
           "camera_intrinsics": np.asarray(view["camera_intrinsics"], np.float32)}
    if width < height:
        out["img"] = out["img"].swapaxes(1, 2)
        for key in ("pts3d", "valid_mask", "depthmap"):
            out[key] = out[key].swapaxes(0, 1)
        out["camera_intrinsics"] = out["camera_intrinsics"][[1, 0, 2]]
    return out
