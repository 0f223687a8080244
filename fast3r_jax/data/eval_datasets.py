"""Readers for the benchmarks Fast3R is evaluated on.

Camera pose: CO3D test sequences (the reference's preprocessed layout) and
RealEstate10K. Reconstruction: 7-Scenes, Neural RGB-D and DTU in Spann3R's
processed layouts.

Each reader is a sequence of samples; a sample is a list of views in the shared
sample format (`fast3r_jax.data.readers.make_view`):
  img               (H, W, 3) uint8,
  depthmap          (H, W) float32 metres, 0 where invalid,
  camera_intrinsics (3, 3) float32 pixels,
  camera_pose       (4, 4) float32 camera-to-world, OpenCV axes (x right, y down, z forward),
  pts3d             (H, W, 3) float32 world points, valid_mask (H, W) bool,
  true_shape        (2,) int32 = (H, W),
  dataset, label, instance: str (the reference's names).
Views keep their true orientation (a portrait view is not transposed).

Frames are cropped and resized as the reference evaluation loaders do
(`fast3r_jax.data.augment.crop_resize` without the random zoom): a crop centred on the
principal point, a rescale until the target fits, a centred crop to the target.
`fast3r_jax.io.images.resize_and_crop` is a different rule (long side, multiples of 16)
and does not track intrinsics, so it is not used here.

Sample `i` draws its random choices from `np.random.default_rng(seed + i)`, so every
sample can be read on its own and in any order.
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from collections.abc import Iterable, Sequence
from typing import Union

import cv2
import numpy as np

from fast3r_jax.data import augment, geometry_np
from fast3r_jax.data.readers import View, make_view, read_depth, read_npy, read_npz, read_rgb
from fast3r_jax.errors import InputError
from fast3r_jax.geometry.transforms import inverse_rigid

Resolution = Union[int, tuple[int, int]]

# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------


def _require_dir(path: str | os.PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def _subdirs(path: str) -> list[str]:
    """Sorted names of the folders inside `path`."""
    return sorted(name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name)))


def _read_text(path: str, what: str) -> str:
    with open(_require_file(path, what)) as f:
        return f.read()


def _read_mask(path: str, what: str) -> np.ndarray:
    """(H, W) uint8 single-channel mask image."""
    mask = cv2.imread(_require_file(path, what), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2:
        raise ValueError(f"cannot read a single-channel {what} from {path}")
    return mask


def _checked_pose(pose: np.ndarray, source: str) -> np.ndarray:
    """float32 copy of a camera-to-world pose; ValueError naming `source` if it is not one."""
    try:
        geometry_np.check_pose(pose)
    except ValueError as err:
        raise ValueError(f"bad camera pose in {source}: {err}") from err
    return np.array(pose, np.float32)


def _pinhole(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)


def as_resolution(resolution: Resolution) -> tuple[int, int]:
    """(W, H) of a target size given as an int (square) or a landscape (W, H) pair."""
    width, height = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if not all(isinstance(s, (int, np.integer)) and s > 0 for s in (width, height)) or width < height:
        raise ValueError(f"resolution must be a positive int or a (W, H) pair of ints with W >= H, got {resolution!r}")
    return int(width), int(height)


def _crop_resize_view(
    rgb: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    resolution: tuple[int, int],
    rng: np.random.Generator,
    names: tuple[str, str, str],
    image_path: str,
) -> View:
    """A view of an RGB-D frame after the reference's crop + resize; names = (dataset, label, instance)."""
    if rgb.shape[:2] != depth.shape:
        raise ValueError(f"image {image_path} has shape {rgb.shape[:2]} but its depth map has shape {depth.shape}")
    img, depth, K = augment.crop_resize(rgb, depth, K, resolution, rng, name=image_path)
    return make_view(img, depth, K, c2w, *names)


# ----------------------------------------------------------------------------
# Frame selection.
# ----------------------------------------------------------------------------


def sample_frames(
    num_total: int,
    num_frames: int,
    rng: np.random.Generator,
    min_thresh: int = 10,
    max_thresh: int = 100,
    train_ratio: float = 1.0,
) -> list[int]:
    """`num_frames` increasing frame indices, consecutive ones at most `thresh` apart.

    thresh = int(min_thresh + train_ratio * (max_thresh - min_thresh)). The first index is
    drawn from the start of the sequence, each next one from the `thresh` frames after
    the last, leaving room for the rest; the list is reversed with probability 1/2. The
    draws follow the reference (Spann3R) sampler, which evaluation runs with train_ratio 1.
    """
    thresh = int(min_thresh + train_ratio * (max_thresh - min_thresh))
    if num_frames < 1 or thresh < 1:
        raise ValueError(f"need num_frames >= 1 and a frame gap >= 1, got {num_frames} and {thresh}")
    if num_total < num_frames:
        raise ValueError(f"cannot sample {num_frames} frames from a sequence of {num_total}")
    indices = list(range(num_total))
    first_range = max(num_total // num_frames, num_total - thresh * (num_frames - 1))
    current = int(rng.choice(indices[:first_range]))
    picked = [current]
    while len(picked) < num_frames:
        last_allowed = min(current + thresh, num_total - (num_frames - len(picked)))
        current = int(rng.choice([i for i in range(current + 1, last_allowed + 1) if i not in picked]))
        picked.append(current)
    if rng.choice([True, False]):
        picked.reverse()
    return picked


class _KeyframeSequences:
    """Shared options of the reconstruction readers: which frames of a sequence make a sample.

    full_video: every `kf_every`-th frame from the first (the benchmark setting).
    Otherwise `num_frames` frames from `sample_frames`. Each sequence gives `num_seq` samples.
    """

    def __init__(
        self,
        resolution: Resolution,
        full_video: bool,
        kf_every: int,
        num_frames: int,
        num_seq: int,
        min_thresh: int,
        max_thresh: int,
        seed: int,
    ):
        if kf_every < 1 or num_seq < 1:
            raise ValueError(f"kf_every and num_seq must be >= 1, got {kf_every} and {num_seq}")
        self.resolution = as_resolution(resolution)
        self.full_video = full_video
        self.kf_every = kf_every
        self.num_frames = num_frames
        self.num_seq = num_seq
        self.min_thresh = min_thresh
        self.max_thresh = max_thresh
        self.seed = seed
        self.sequences: list[str] = []

    def __len__(self) -> int:
        return len(self.sequences) * self.num_seq

    def _start(self, index: int) -> tuple[str, np.random.Generator]:
        """Sequence of sample `index` and the sample's random generator."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return self.sequences[index // self.num_seq], np.random.default_rng(self.seed + index)

    def _frame_indices(self, num_total: int, rng: np.random.Generator) -> list[int]:
        if self.full_video:
            return list(range(0, num_total, self.kf_every))
        return sample_frames(num_total, self.num_frames, rng, self.min_thresh, self.max_thresh)


# ----------------------------------------------------------------------------
# 7-Scenes.
# ----------------------------------------------------------------------------


def _split_sequences(root: str, scene: str, split: str) -> list[str]:
    """Sequence folders (seq-XX) listed in a 7-Scenes split file (lines like 'sequence2')."""
    path = os.path.join(root, scene, {"train": "TrainSplit.txt", "test": "TestSplit.txt"}[split])
    names = []
    for line in _read_text(path, "7-Scenes split").splitlines():
        digits = "".join(c for c in line if c.isdigit())
        if line.strip() and not digits:
            raise ValueError(f"malformed line {line!r} in 7-Scenes split file {path}")
        if digits:
            names.append(f"seq-{digits.zfill(2)}")
    return names


class SevenScenes(_KeyframeSequences):
    """7-Scenes in Spann3R's layout: root/<scene>/{TestSplit,TrainSplit}.txt and
    root/<scene>/seq-XX/frame-000000.{color.png, depth.proj.png, pose.txt}.

    Depth is 16-bit millimetres (65535 = invalid, kept in 1 mm .. 10 m); poses are
    camera-to-world text matrices; all frames share fixed intrinsics (fx, fy, cx, cy).
    Defaults are the benchmark's: 512x512 views of every 20th frame. Samples come in
    (scene, sequence) order.
    """

    DATASET = "7scenes"
    INTRINSICS = (525.0, 525.0, 320.0, 240.0)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "test",
        resolution: Resolution = 512,
        full_video: bool = True,
        kf_every: int = 20,
        num_frames: int = 5,
        num_seq: int = 1,
        min_thresh: int = 10,
        max_thresh: int = 100,
        scene: str | None = None,
        seq_id: str | None = None,
        intrinsics: tuple[float, float, float, float] = INTRINSICS,
        seed: int = 0,
    ):
        super().__init__(resolution, full_video, kf_every, num_frames, num_seq, min_thresh, max_thresh, seed)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = _require_dir(root, "7-Scenes root")
        self.intrinsics = _pinhole(*intrinsics)
        scenes = [scene] if scene is not None else _subdirs(self.root)
        self.sequences = [
            f"{s}/{seq}" for s in scenes for seq in _split_sequences(self.root, s, split) if seq_id in (None, seq)
        ]
        if not self.sequences:
            raise FileNotFoundError(f"no 7-Scenes {split} sequences under {self.root}")

    def __getitem__(self, index: int) -> list[View]:
        sequence, rng = self._start(index)
        folder = _require_dir(os.path.join(self.root, sequence), "7-Scenes sequence")
        num_total = sum("color" in name for name in os.listdir(folder))
        return [self._view(folder, sequence, f"{i:06d}", rng) for i in self._frame_indices(num_total, rng)]

    def _view(self, folder: str, sequence: str, frame: str, rng: np.random.Generator) -> View:
        image_path = os.path.join(folder, f"frame-{frame}.color.png")
        depth_path = os.path.join(folder, f"frame-{frame}.depth.proj.png")
        pose_path = os.path.join(folder, f"frame-{frame}.pose.txt")
        depth = read_depth(depth_path, self.DATASET)
        depth[depth == 65535] = 0
        depth = np.nan_to_num(depth.astype(np.float32)) / 1000.0  # (H, W) metres
        depth[(depth > 10) | (depth < 1e-3)] = 0
        rgb = read_rgb(image_path, self.DATASET)
        rgb = cv2.resize(rgb, (depth.shape[1], depth.shape[0]))  # to the depth's size, bilinear as the reference
        c2w = _checked_pose(_load_matrix(pose_path, (4, 4), "7-Scenes pose"), pose_path)
        names = (self.DATASET, f"{sequence}/{frame}", os.path.basename(image_path))
        return _crop_resize_view(rgb, depth, self.intrinsics, c2w, self.resolution, rng, names, image_path)


def _load_matrix(path: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A whitespace-separated float matrix of the given shape from a text file."""
    try:
        values = np.array([float(x) for x in _read_text(path, what).split()], np.float64)
    except ValueError as err:
        raise ValueError(f"malformed {what} file {path}: {err}") from err
    if values.size != np.prod(shape):
        raise ValueError(f"{what} file {path} must hold {np.prod(shape)} numbers, got {values.size}")
    return values.reshape(shape)


# ----------------------------------------------------------------------------
# Neural RGB-D.
# ----------------------------------------------------------------------------


def load_nrgbd_poses(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world poses of a Neural RGB-D scene, OpenGL axes, 4 text lines each.

    Returns (N, 4, 4) float32 poses and (N,) bool validity: a pose with 'nan' is
    invalid and replaced by the identity, as the reference does.
    """
    lines = [line for line in _read_text(path, "NRGBD poses").splitlines() if line.strip()]
    if len(lines) % 4:
        raise ValueError(f"NRGBD poses file {path} has {len(lines)} lines, not a multiple of 4")
    poses, valid = [], []
    for start in range(0, len(lines), 4):
        block = lines[start : start + 4]
        if any("nan" in line for line in block):
            poses.append(np.eye(4))
            valid.append(False)
            continue
        try:
            rows = [[float(x) for x in line.split()] for line in block]
            poses.append(np.array(rows, np.float64).reshape(4, 4))
        except ValueError as err:
            raise ValueError(f"malformed pose at lines {start + 1}-{start + 4} of NRGBD poses file {path}") from err
        valid.append(True)
    return np.array(poses, np.float32).reshape(-1, 4, 4), np.array(valid, bool)


class NRGBD(_KeyframeSequences):
    """Neural RGB-D in Spann3R's layout: root/<scene>/{images/img<i>.png, depth/depth<i>.png, poses.txt}.

    Depth is 16-bit millimetres (kept in 1 mm .. 10 m); poses are OpenGL camera-to-world
    and are converted to OpenCV axes (y and z flipped). Frames with an invalid ('nan')
    pose get the identity pose, as in the reference. Defaults are the benchmark's:
    512x512 views of every 40th frame; scenes in sorted order.
    """

    DATASET = "nrgbd"
    INTRINSICS = (554.2562584220408, 554.2562584220408, 320.0, 240.0)

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: Resolution = 512,
        full_video: bool = True,
        kf_every: int = 40,
        num_frames: int = 5,
        num_seq: int = 1,
        min_thresh: int = 10,
        max_thresh: int = 100,
        scene: str | None = None,
        intrinsics: tuple[float, float, float, float] = INTRINSICS,
        seed: int = 0,
    ):
        super().__init__(resolution, full_video, kf_every, num_frames, num_seq, min_thresh, max_thresh, seed)
        self.root = _require_dir(root, "NRGBD root")
        self.intrinsics = _pinhole(*intrinsics)
        self.sequences = [scene] if scene is not None else _subdirs(self.root)
        if not self.sequences:
            raise FileNotFoundError(f"no NRGBD scenes under {self.root}")

    def __getitem__(self, index: int) -> list[View]:
        scene, rng = self._start(index)
        folder = _require_dir(os.path.join(self.root, scene), "NRGBD scene")
        num_total = len(os.listdir(_require_dir(os.path.join(folder, "images"), "NRGBD images")))
        frames = self._frame_indices(num_total, rng)
        pose_path = os.path.join(folder, "poses.txt")
        poses, _ = load_nrgbd_poses(pose_path)
        if len(poses) < num_total:
            raise ValueError(f"NRGBD poses file {pose_path} has {len(poses)} poses for {num_total} images")
        return [self._view(folder, scene, str(i), poses[i], pose_path, rng) for i in frames]

    def _view(
        self, folder: str, scene: str, frame: str, pose_gl: np.ndarray, pose_path: str, rng: np.random.Generator
    ) -> View:
        image_path = os.path.join(folder, "images", f"img{frame}.png")
        depth = read_depth(os.path.join(folder, "depth", f"depth{frame}.png"), self.DATASET)
        depth = np.nan_to_num(depth.astype(np.float32)) / 1000.0  # (H, W) metres
        depth[(depth > 10) | (depth < 1e-3)] = 0
        rgb = read_rgb(image_path, self.DATASET)
        rgb = cv2.resize(rgb, (depth.shape[1], depth.shape[0]))  # to the depth's size, bilinear as the reference
        c2w = np.array(pose_gl, np.float32)
        c2w[:, 1:3] *= -1.0  # OpenGL -> OpenCV camera axes
        c2w = _checked_pose(c2w, f"{pose_path} (frame {frame})")
        names = (self.DATASET, f"{scene}/{frame}", os.path.basename(image_path))
        return _crop_resize_view(rgb, depth, self.intrinsics, c2w, self.resolution, rng, names, image_path)


# ----------------------------------------------------------------------------
# DTU.
# ----------------------------------------------------------------------------


def load_mvsnet_cam(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(K (3, 3), world-to-camera (4, 4)) float32 from an MVSNet camera file.

    Layout: 'extrinsic', 16 numbers, 'intrinsic', 9 numbers, then optional depth range numbers.
    """
    words = _read_text(path, "DTU camera").split()
    if len(words) < 27 or words[0] != "extrinsic" or words[17] != "intrinsic":
        raise ValueError(f"malformed DTU camera file {path}: expected 'extrinsic', 16 numbers, 'intrinsic', 9 numbers")
    try:
        w2c = np.array(words[1:17], np.float64).reshape(4, 4)
        K = np.array(words[18:27], np.float64).reshape(3, 3)
    except ValueError as err:
        raise ValueError(f"malformed DTU camera file {path}: {err}") from err
    return K.astype(np.float32), w2c.astype(np.float32)


def load_dtu_pairs(path: str, ref_view: int, num_neighbours: int) -> list[int]:
    """Reference view `ref_view` of an MVSNet pair.txt followed by its first `num_neighbours` neighbours."""
    lines = _read_text(path, "DTU pair").splitlines()
    try:
        ref = int(lines[2 * ref_view + 1])
        entries = lines[2 * ref_view + 2].split()
        return [ref] + [int(entries[2 * k + 1]) for k in range(num_neighbours)]
    except (IndexError, ValueError) as err:
        raise ValueError(f"malformed DTU pair file {path} for view {ref_view}: {err}") from err


def _eroded_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Binary (H, W) float32 mask from a 0..255 mask image, resized (nearest) and eroded by a 10x10 box."""
    mask = (mask / 255.0).astype(np.float32)
    mask[mask > 0.5] = 1.0
    mask[mask < 0.5] = 0.0
    mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.erode(mask, np.ones((10, 10), np.uint8), iterations=1)


class DTU(_KeyframeSequences):
    """DTU in the MVSNet test layout Spann3R uses: root/<scan>/{images/00000000.jpg,
    depths/00000000.npy, binary_masks/00000000.png, cams/00000000_cam.txt, pair.txt}.

    Depth keeps the dataset's units (millimetres for DTU, as in the reference, whose
    metrics are reported in them) and is zeroed outside the object mask eroded by a
    10x10 box. Cameras are world-to-camera and are inverted. full_video (the benchmark,
    kf_every 5): every kf_every-th image in name order, returned last first as the
    reference does. Otherwise sample j of a scan is pair.txt's reference view j followed
    by its `num_frames` best neighbours.
    """

    DATASET = "dtu"

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: Resolution = 512,
        full_video: bool = True,
        kf_every: int = 5,
        num_frames: int = 5,
        num_seq: int = 1,
        scans: Sequence[str] | None = None,
        seed: int = 0,
    ):
        super().__init__(resolution, full_video, kf_every, num_frames, num_seq, 10, 30, seed)
        self.root = _require_dir(root, "DTU root")
        self.sequences = list(scans) if scans is not None else _subdirs(self.root)
        if not self.sequences:
            raise FileNotFoundError(f"no DTU scans under {self.root}")

    def __getitem__(self, index: int) -> list[View]:
        scan, rng = self._start(index)
        folder = _require_dir(os.path.join(self.root, scan), "DTU scan")
        if self.full_video:
            names = sorted(os.listdir(_require_dir(os.path.join(folder, "images"), "DTU images")))
            names = names[:: self.kf_every][::-1]
        else:
            ids = load_dtu_pairs(os.path.join(folder, "pair.txt"), index % self.num_seq, self.num_frames)
            names = [f"{i:08d}.jpg" for i in ids]
        return [self._view(folder, scan, name, rng) for name in names]

    def _view(self, folder: str, scan: str, name: str, rng: np.random.Generator) -> View:
        stem = os.path.splitext(name)[0]
        image_path = os.path.join(folder, "images", name)
        depth_path = os.path.join(folder, "depths", f"{stem}.npy")
        depth = read_npy(depth_path, "DTU", "depth map")
        if depth.ndim != 2:
            raise ValueError(f"DTU depth file {depth_path} must hold an (H, W) array, got shape {depth.shape}")
        depth = np.nan_to_num(depth.astype(np.float32))
        mask = _read_mask(os.path.join(folder, "binary_masks", f"{stem}.png"), "DTU mask")
        depth = depth * _eroded_mask(mask, depth.shape)
        cam_path = os.path.join(folder, "cams", f"{stem}_cam.txt")
        K, w2c = load_mvsnet_cam(cam_path)
        c2w = inverse_rigid(_checked_pose(w2c, cam_path).astype(np.float64)).astype(np.float32)
        names = (self.DATASET, f"{scan}/{name}", name)
        rgb = read_rgb(image_path, self.DATASET)
        return _crop_resize_view(rgb, depth, K, c2w, self.resolution, rng, names, image_path)


# ----------------------------------------------------------------------------
# CO3D camera-pose evaluation.
# ----------------------------------------------------------------------------


def co3d_eval_combinations(
    num_views: int,
    rng: random.Random,
    num_images: int = 100,
    degree_range: int = 360,
    samples_per_window: int = 100,
) -> list[tuple[int, ...]]:
    """Sorted distinct view-index tuples, drawn like the reference CO3D evaluation set.

    For each of `num_images` centres, `samples_per_window` ordered samples of `num_views`
    indices from the window of width degree_range * num_images / 360 around it.
    """
    max_gap = degree_range * num_images // 360
    combos = set()
    for centre in range(num_images):
        window = list(range(max(0, centre - max_gap // 2), min(num_images, centre + max_gap // 2)))
        if len(window) < num_views:
            raise ValueError(f"a window of {len(window)} frames cannot hold {num_views} views")
        for _ in range(samples_per_window):
            combos.add(tuple(rng.sample(window, num_views)))
    return sorted(combos)


def load_co3d_sequences(root: str, split: str) -> dict[tuple[str, str], list[int]]:
    """{(category, sequence): frame numbers} from selected_seqs_<split>.json, empty categories dropped."""
    path = os.path.join(root, f"selected_seqs_{split}.json")
    try:
        table = json.loads(_read_text(path, "CO3D sequence list"))
        sequences = {
            (str(category), str(name)): [int(f) for f in frames]
            for category, seqs in table.items()
            if len(seqs) > 0
            for name, frames in seqs.items()
        }
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:  # InputError is checked below
        raise ValueError(f"malformed CO3D sequence list {path}: expected {{category: {{sequence: [frames]}}}}") from err
    for (category, name), frames in sequences.items():
        for part in (category, name):
            _check_name(part, path)
        if not frames:
            raise ValueError(f"CO3D sequence list {path}: sequence {category}/{name} lists no frames")
    return sequences


def _check_name(name: str, listed_in: str) -> None:
    """A category or sequence name from a list file must be one folder inside the root, never a path out of it."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or os.sep in name or "\0" in name:
        raise InputError(f"{listed_in}: {name!r} is not a plain folder name (it would read outside the data root)")


class Co3dPoseEval:
    """CO3D camera-pose benchmark on the reference's preprocessed layout:
    root/selected_seqs_<split>.json and root/<category>/<sequence>/{images/frame000001.jpg,
    images/frame000001.npz (camera_pose c2w, camera_intrinsics, maximum_depth),
    depths/frame000001.jpg.geometric.png (16-bit, x maximum_depth / 65535), masks/frame000001.png}.

    Built like the reference evaluation set '100 @ Co3d_Multiview(split=test, num_views,
    window_degree_range=360, num_samples_per_window=100, resolution=(512, 384), seed=777)':
    every sample takes the first of the sorted view combinations (`co3d_eval_combinations`,
    drawn with random.Random(combo_seed); the reference draws them from Python's
    unseeded global generator), moves each index by a random -4..4 (clipped to the
    sequence), and loads the views last index first. Sample i reads item perm[i] of a
    permutation (seed 777) of (sequence, combination) items; the item's sequence is
    item % num_sequences and its generator np.random.default_rng(seed + item). Frames whose
    masked depth is empty are skipped and replaced by repeats of valid ones.
    """

    DATASET = "Co3d_v2"
    MAX_SEQUENCE_TRIES = 5

    def __init__(
        self,
        root: str | os.PathLike,
        num_views: int,
        split: str = "test",
        resolution: Resolution = (512, 384),
        num_samples: int = 100,
        seed: int = 777,
        combo_seed: int = 0,
        window_degree_range: int = 360,
        num_samples_per_window: int = 100,
        mask_bg: bool = True,
    ):
        if num_views < 1 or num_samples < 1:
            raise ValueError(f"num_views and num_samples must be >= 1, got {num_views} and {num_samples}")
        self.root = _require_dir(root, "CO3D root")
        self.num_views = num_views
        self.resolution = as_resolution(resolution)
        self.seed = seed
        self.mask_bg = mask_bg
        self.frames = load_co3d_sequences(self.root, split)
        self.sequences = list(self.frames)
        if not self.sequences:
            raise ValueError(f"no CO3D {split} sequences listed under {self.root}")
        combos = co3d_eval_combinations(
            num_views, random.Random(combo_seed), degree_range=window_degree_range,
            samples_per_window=num_samples_per_window,
        )
        self.first_combination = combos[0]
        num_items = len(self.sequences) * len(combos)
        perm = np.random.default_rng(777).permutation(num_items)  # the reference's resize to num_samples
        self.items = np.concatenate([perm] * (1 + (num_samples - 1) // num_items))[:num_samples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> list[View]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        item = int(self.items[index])
        rng = np.random.default_rng(self.seed + item)
        for attempt in range(self.MAX_SEQUENCE_TRIES):
            sequence = self.sequences[(item + attempt) % len(self.sequences)]
            views = self._sequence_views(sequence, rng, random.Random(self.seed + item))
            if views is not None:
                return views
        raise ValueError(f"no valid views in {self.MAX_SEQUENCE_TRIES} CO3D sequences from item {item}")

    def _sequence_views(
        self, sequence: tuple[str, str], rng: np.random.Generator, repeat_rng: random.Random
    ) -> list[View] | None:
        pool = self.frames[sequence]
        last = len(pool) - 1
        positions = [max(0, min(p + int(rng.integers(-4, 5)), last)) for p in self.first_combination]
        views, valid = [], []
        for position in reversed(positions):
            view = self._view(sequence, pool[position], rng)
            if view is not None:
                views.append(view)
                valid.append(position)
        while len(views) < self.num_views and valid:
            repeat = self._view(sequence, pool[repeat_rng.choice(valid)], rng)
            if repeat is None:  # only a different coin-flip orientation can lose the depth
                return None
            views.append(repeat)
        return views if len(views) == self.num_views else None

    def _view(self, sequence: tuple[str, str], frame: int, rng: np.random.Generator) -> View | None:
        """The view of one frame, None if its (masked) depth has no valid pixel."""
        folder = os.path.join(self.root, *sequence)
        name = f"frame{frame:06d}"
        image_path = os.path.join(folder, "images", f"{name}.jpg")
        meta_path = os.path.join(folder, "images", f"{name}.npz")
        try:
            meta = read_npz(meta_path, self.DATASET, ("camera_pose", "camera_intrinsics", "maximum_depth"))
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise ValueError(f"unreadable CO3D metadata file {meta_path}: {err}") from err
        c2w = _checked_pose(meta["camera_pose"], meta_path)
        K = np.asarray(meta["camera_intrinsics"], np.float32)
        if K.shape != (3, 3):
            raise ValueError(f"CO3D metadata file {meta_path}: camera_intrinsics must be 3x3, got shape {K.shape}")
        depth = read_depth(os.path.join(folder, "depths", f"{name}.jpg.geometric.png"), self.DATASET)
        depth = (depth.astype(np.float32) / 65535) * np.nan_to_num(meta["maximum_depth"])  # (H, W) metres
        if self.mask_bg:
            mask = _read_mask(os.path.join(folder, "masks", f"{name}.png"), "CO3D mask")
            depth *= (mask.astype(np.float32) / 255.0) > 0.1
        names = (self.DATASET, "/".join(sequence), f"{name}.jpg")
        rgb = read_rgb(image_path, self.DATASET)
        view = _crop_resize_view(rgb, depth, K, c2w, self.resolution, rng, names, image_path)
        return view if view["valid_mask"].any() else None


# ----------------------------------------------------------------------------
# RealEstate10K camera-pose evaluation.
# ----------------------------------------------------------------------------


def load_re10k_cameras(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{timestamp: (normalised (fx, fy, cx, cy), (4, 4) float64 world-to-camera)} of a RealEstate10K file.

    First line: the video URL. Then one line per frame: timestamp, fx fy cx cy (divided by
    the image width / height), two zeros, and a row-major 3x4 world-to-camera matrix.
    """
    lines = _read_text(path, "RealEstate10K camera").strip().split("\n")[1:]
    cameras = {}
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 19:
                raise ValueError(f"expected 19 columns, got {len(parts)}")
            values = np.array(parts[1:], np.float64)
        except ValueError as err:
            raise ValueError(f"malformed line {number} of RealEstate10K camera file {path}: {err}") from err
        w2c = np.eye(4)
        w2c[:3] = values[6:].reshape(3, 4)
        cameras[parts[0]] = (values[:4], w2c)
    if not cameras:
        raise ValueError(f"RealEstate10K camera file {path} lists no frames")
    return cameras


def _read_names(sequences: str | os.PathLike | Iterable[str]) -> set[str]:
    if isinstance(sequences, (str, os.PathLike)):
        path = os.fspath(sequences)
        return {line.strip() for line in _read_text(path, "sequence list").splitlines() if line.strip()}
    return set(sequences)


class RealEstate10KPoses:
    """RealEstate10K camera-pose benchmark: frames in root/videos/<split>/<sequence>/<timestamp>.jpg,
    cameras in root/<split>/<sequence>.txt (see `load_re10k_cameras`).

    Sample i: `num_views` frames of sequence i (sorted by name) drawn without replacement
    with np.random.default_rng(seed + i), cropped around the principal point and resized
    to 512x288 (288x512 when the crop is taller than wide) like the reference script, which
    samples unseeded; a principal point within 1/5 of a border is refused. Frames without a
    camera line are ignored; sequences with fewer than two such frames are left out.
    Views carry no depth (depthmap 0, valid_mask False, pts3d 0).
    `sequences`: the names to keep, or a text file with one name per line.
    """

    DATASET = "RealEstate10K"

    def __init__(
        self,
        root: str | os.PathLike,
        num_views: int = 10,
        split: str = "test",
        resolution: Resolution = (512, 288),
        seed: int = 0,
        sequences: str | os.PathLike | Iterable[str] | None = None,
    ):
        if num_views < 2:
            raise ValueError(f"num_views must be >= 2, got {num_views}")
        self.root = _require_dir(root, "RealEstate10K root")
        self.frame_root = _require_dir(os.path.join(self.root, "videos", split), "RealEstate10K frames")
        self.camera_root = _require_dir(os.path.join(self.root, split), "RealEstate10K cameras")
        self.num_views = num_views
        self.resolution = as_resolution(resolution)
        self.seed = seed
        names = _subdirs(self.frame_root)
        if sequences is not None:
            wanted = _read_names(sequences)
            names = [n for n in names if n in wanted]
        self.sequences = [n for n in names if len(self._frames(n)) >= 2]
        if not self.sequences:
            raise FileNotFoundError(f"no RealEstate10K {split} sequence with 2 or more frames under {self.frame_root}")

    def _frames(self, sequence: str) -> list[str]:
        folder = os.path.join(self.frame_root, sequence)
        return sorted(name for name in os.listdir(folder) if name.endswith(".jpg"))

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> list[View]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        sequence = self.sequences[index]
        cameras = load_re10k_cameras(os.path.join(self.camera_root, f"{sequence}.txt"))
        frames = [f for f in self._frames(sequence) if os.path.splitext(f)[0] in cameras]
        if len(frames) < 2:
            raise ValueError(f"RealEstate10K sequence {sequence} has {len(frames)} frames with cameras, need 2")
        rng = np.random.default_rng(self.seed + index)
        picked = sorted(rng.choice(len(frames), min(self.num_views, len(frames)), replace=False))
        return [self._view(sequence, frames[i], cameras[os.path.splitext(frames[i])[0]]) for i in picked]

    def _view(self, sequence: str, frame: str, camera: tuple[np.ndarray, np.ndarray]) -> View:
        """One frame: the image cropped and resized, K from the normalised intrinsics, c2w = inverse(w2c)."""
        image_path = os.path.join(self.frame_root, sequence, frame)
        rgb = read_rgb(image_path, self.DATASET)
        height, width = rgb.shape[:2]
        (fx, fy, cx, cy), w2c = camera
        K = _pinhole(fx * width, fy * height, cx * width, cy * height)
        no_depth = np.zeros((height, width), np.float32)
        img, no_depth, K = augment.crop_around_principal_point(rgb, no_depth, K, image_path)
        resolution = self.resolution[::-1] if img.shape[0] > img.shape[1] else self.resolution  # portrait: H > W
        img, no_depth, K = augment.rescale_image_depthmap(img, no_depth, K, resolution)
        img, no_depth, K = augment.center_crop(img, no_depth, K, resolution)
        w2c = _checked_pose(w2c, os.path.join(self.camera_root, f"{sequence}.txt"))
        c2w = inverse_rigid(w2c.astype(np.float64)).astype(np.float32)
        view = make_view(img, no_depth, K, c2w, self.DATASET, sequence, frame)
        return dict(view, pts3d=np.zeros_like(view["pts3d"]))
