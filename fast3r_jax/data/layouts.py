"""Writers of the preprocessed on-disk layouts that `fast3r_jax.data.readers` reads (see its docstring).

Each writer takes frames (image, metric z-depth, camera) keyed as the layout names them and stores them with that
layout's encodings, so a reader returns the same geometry up to the depth quantisation: CO3D uint16 PNG relative to
the frame's maximum depth, ScanNet++ / ARKitScenes uint16 PNG millimetres, Habitat half-float EXR, BlendedMVS and
MegaDepth float32 EXR. Used for reader fixtures and benchmarks/input_throughput.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping

import numpy as np

from fast3r_jax.data import readers  # sets OPENCV_IO_ENABLE_OPENEXR before cv2 loads

cv2 = readers.cv2  # the EXR-enabled module


@dataclasses.dataclass(frozen=True)
class Frame:
    """One stored frame."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) z-depth in metres; 0 = invalid
    K: np.ndarray  # (3, 3) intrinsics
    c2w: np.ndarray  # (4, 4) camera-to-world pose
    mask: np.ndarray | None = None  # (H, W) uint8 CO3D object mask (> 25 = object); None: all object


def _write_image(path: str, image: np.ndarray, params: tuple[int, ...] = ()) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(image), list(params)):
        raise OSError(f"cannot write {path}")


def write_rgb(path: str, rgb: np.ndarray) -> None:
    """(H, W, 3) uint8 RGB as JPEG (or whatever the extension says)."""
    _write_image(path, rgb[..., ::-1])


def _write_exr(path: str, depth: np.ndarray, half: bool = False) -> None:
    _write_image(path, np.asarray(depth, np.float32), (cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_HALF) if half else ())


def _write_png16(path: str, value: np.ndarray) -> None:
    _write_image(path, np.round(np.clip(value, 0, 65535)).astype(np.uint16))


def write_co3d(root: str, sequences: Mapping[str, Mapping[str, Mapping[int, Frame]]], split: str = "train") -> None:
    """{category: {sequence: {frame number: Frame}}} -> `selected_seqs_{split}.json` and per-frame files."""
    for cat, seqs in sequences.items():
        for seq, frames in seqs.items():
            for number, frame in frames.items():
                images = os.path.join(root, cat, seq, "images")
                stem = f"frame{number:06d}"
                max_depth = np.float32(frame.depth.max())
                write_rgb(os.path.join(images, stem + ".jpg"), frame.rgb)
                np.savez(os.path.join(images, stem + ".npz"), camera_intrinsics=np.asarray(frame.K, np.float32),
                         camera_pose=np.asarray(frame.c2w, np.float32), maximum_depth=max_depth)
                _write_png16(os.path.join(root, cat, seq, "depths", stem + ".jpg.geometric.png"),
                             frame.depth / max_depth * 65535)
                mask = np.full(frame.depth.shape, 255, np.uint8) if frame.mask is None else frame.mask
                _write_image(os.path.join(root, cat, seq, "masks", stem + ".png"), mask)
    selected = {cat: {seq: sorted(frames) for seq, frames in seqs.items()} for cat, seqs in sequences.items()}
    with open(os.path.join(root, f"selected_seqs_{split}.json"), "w") as f:
        json.dump(selected, f)


def _write_metadata_layout(root: str, scenes: Mapping[str, Mapping[str, Frame]], rgb_dir: str,
                           depth_dir: str) -> None:
    """ScanNet++ / ARKitScenes: `all_metadata.npz` and per-scene JPEG + uint16 millimetre PNG."""
    names, sceneids, Ks, poses = [], [], [], []
    for scene_id, (scene, frames) in enumerate(scenes.items()):
        for name, frame in frames.items():
            stem = os.path.splitext(name)[0] if name.endswith(".png") else name
            write_rgb(os.path.join(root, scene, rgb_dir, stem + ".jpg"), frame.rgb)
            _write_png16(os.path.join(root, scene, depth_dir, stem + ".png"), frame.depth * 1000)
            names.append(name)
            sceneids.append(scene_id)
            Ks.append(frame.K)
            poses.append(frame.c2w)
    np.savez(os.path.join(root, "all_metadata.npz"), scenes=np.array(list(scenes)), sceneids=np.array(sceneids),
             images=np.array(names), intrinsics=np.array(Ks, np.float32), trajectories=np.array(poses, np.float32))


def write_scannetpp(root: str, scenes: Mapping[str, Mapping[str, Frame]]) -> None:
    """{scene: {image name (iPhone `frame_*`, else DSLR): Frame}}."""
    _write_metadata_layout(root, scenes, "images", "depth")


def write_arkitscenes(root: str, scenes: Mapping[str, Mapping[str, Frame]], split: str = "train") -> None:
    """{scene: {image name ending in .png: Frame}} under the split's folder (Training | Test)."""
    _write_metadata_layout(os.path.join(root, readers.ARKitScenes.splits[split]), scenes, "vga_wide",
                           "lowres_depth")


def write_habitat(root: str, scenes: Mapping[str, Mapping[int, Frame]], split: str = "train",
                  size: int = 1000) -> None:
    """{scene key path 'dir/.../key': {view number 1..5: Frame}} and the `Habitat_{size}_scenes_{split}.txt` list."""
    for line, frames in scenes.items():
        for number, frame in frames.items():
            stem = os.path.join(root, f"{line}_{number}")
            write_rgb(stem + ".jpeg", frame.rgb)
            _write_exr(stem + "_depth.exr", frame.depth, half=True)
            c2w = np.asarray(frame.c2w, np.float64)
            with open(stem + "_camera_params.json", "w") as f:
                json.dump({"camera_intrinsics": np.asarray(frame.K, np.float64).tolist(),
                           "R_cam2world": c2w[:3, :3].tolist(), "t_cam2world": c2w[:3, 3].tolist()}, f)
    with open(os.path.join(root, f"Habitat_{size}_scenes_{split}.txt"), "w") as f:
        f.write("\n".join(scenes) + "\n")


def write_blendedmvs(root: str, scenes: Mapping[tuple[int, int], Mapping[int, Frame]]) -> None:
    """{(seq_high, seq_low): {image number: Frame}}; the pair list links consecutive images of each scene."""
    rows = []
    for (high, low), frames in scenes.items():
        numbers = sorted(frames)
        rows += [(high, low, a, b, 1.0) for a, b in itertools.pairwise(numbers)]
        for number, frame in frames.items():
            stem = os.path.join(root, f"{high:08x}{low:016x}", f"{number:08d}")
            _write_frame_files(stem, frame)
            c2w = np.asarray(frame.c2w, np.float32)
            np.savez(stem + ".npz", intrinsics=np.asarray(frame.K, np.float32), R_cam2world=c2w[:3, :3],
                     t_cam2world=c2w[:3, 3])
    dtype = [("seq_high", "<u4"), ("seq_low", "<u8"), ("img1", "<u4"), ("img2", "<u4"), ("score", "<f4")]
    np.save(os.path.join(root, "blendedmvs_pairs.npy"), np.array(rows, dtype=dtype))


def write_megadepth(root: str, scenes: Mapping[str, Mapping[str, Frame]]) -> None:
    """{'scene/subscene': {image name: Frame}} and `all_metadata_for_multiview.npz`."""
    sceneids, images = [], []
    for scene_id, (scene, frames) in enumerate(scenes.items()):
        for name, frame in frames.items():
            stem = os.path.join(root, scene, name)
            _write_frame_files(stem, frame)
            np.savez(stem + ".npz", intrinsics=np.asarray(frame.K, np.float32),
                     cam2world=np.asarray(frame.c2w, np.float32))
            sceneids.append(scene_id)
            images.append(name)
    np.savez(os.path.join(root, "all_metadata_for_multiview.npz"), scenes=np.array(list(scenes)),
             sceneids=np.array(sceneids), images=np.array(images))


def _write_frame_files(stem: str, frame: Frame) -> None:
    """`stem.jpg` and `stem.exr` (float32 depth)."""
    write_rgb(stem + ".jpg", frame.rgb)
    _write_exr(stem + ".exr", frame.depth)
