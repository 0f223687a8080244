"""Readers for the preprocessed multi-view training datasets, in the shared sample format.

Each reader takes `(root, split, num_views, ...)` with the reference view-sampling parameters, has
`__len__`, and `__getitem__(index, rng, world_points=True)` returning a list of `num_views` view dicts at the
frames' stored resolution (see `fast3r_jax.data.augment` for the crop/resize to training buckets; the input
pipeline asks for views without `pts3d`, which it derives on the devices). Dataset-specific masks are folded
into the depth (0 = invalid), so `valid_mask` is "finite depth > 0" everywhere.

On-disk layouts (those written by the public DUSt3R preprocessing scripts):
- CO3D: `selected_seqs_{split}.json` = {category: {sequence: [frame numbers]}}; per frame
  `{cat}/{seq}/images/frame{n:06d}.jpg`, `.../images/frame{n:06d}.npz` (camera_intrinsics, camera_pose
  c2w, maximum_depth), `.../depths/frame{n:06d}.jpg.geometric.png` (uint16, depth = v / 65535 *
  maximum_depth), `.../masks/frame{n:06d}.png` (object where v / 255 > 0.1).
- ScanNet++: `all_metadata.npz` (scenes, sceneids, images, intrinsics (N,3,3), trajectories (N,4,4) c2w);
  `{scene}/images/{name}.jpg`, `{scene}/depth/{name}.png` (uint16 millimetres). iPhone frames are named
  `frame_*`, the rest are DSLR frames; the two are never mixed in one sample.
- ARKitScenes: `{Training|Test}/all_metadata.npz` (same keys); `{split}/{scene}/vga_wide/{name}.jpg`
  and `{split}/{scene}/lowres_depth/{name}.png` (uint16 millimetres), name given with `.png`.
- Habitat: `Habitat_{size}_scenes_{split}.txt` (one `dir/.../key` per line); per scene 5 views
  `{key}_{i}.jpeg`, `{key}_{i}_depth.exr`, `{key}_{i}_camera_params.json` (camera_intrinsics,
  R_cam2world, t_cam2world), i = 1..5.
- BlendedMVS: `blendedmvs_pairs.npy` (structured: seq_high, seq_low, img1, img2, score); scene
  `{seq_high:08x}{seq_low:016x}/{img:08d}.jpg|.exr|.npz` (intrinsics, R_cam2world, t_cam2world).
- MegaDepth: `all_metadata_for_multiview.npz` (scenes "scene/subscene", sceneids, images);
  `{scene}/{subscene}/{image}.jpg|.exr|.npz` (intrinsics, cam2world).

View combinations are drawn once from `seed` (the reference draws them unseeded, which would differ
between processes) so every host and worker agrees on the dataset length and content.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
import cv2  # noqa: E402  (EXR support must be enabled first)

from fast3r_jax.data.geometry_np import depthmap_to_world  # noqa: E402

View = dict[str, Any]


class Source(Protocol):
    """A multi-view data source: `source.__getitem__(index, rng)` (or `source[index]`) -> list of views.

    Sources whose `__getitem__` also takes `world_points` skip computing `pts3d` when it is False (the
    augmentation computes them from the final depth and intrinsics).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> list[View]: ...


@functools.cache
def _parameters(cls: type) -> tuple[str, ...]:
    return tuple(inspect.signature(cls.__getitem__).parameters)


def load_sample(source: Source, index: int, rng: np.random.Generator, world_points: bool = True) -> list[View]:
    """Sample `index` of a source, passing `rng` (and `world_points`) to sources whose `__getitem__` accepts it.

    With world_points=False, views of such sources lack `pts3d`.
    """
    params = _parameters(type(source))
    if "world_points" in params:
        return source.__getitem__(index, rng, world_points=world_points)  # type: ignore[call-arg]
    if len(params) >= 3:  # self, index, rng
        return source.__getitem__(index, rng)  # type: ignore[call-arg]
    return source[index]


# ----------------------------------------------------------------------------
# File access.
# ----------------------------------------------------------------------------


def require_file(path: str, dataset: str, what: str = "file") -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset}: {what} not found: {path}")
    return path


def read_rgb(path: str, dataset: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    img = cv2.imread(require_file(path, dataset, "image"), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{dataset}: cannot decode image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth(path: str, dataset: str) -> np.ndarray:
    """(H, W) raw single-channel depth file (uint16 PNG or float EXR) as stored."""
    depth = cv2.imread(require_file(path, dataset, "depth map"), cv2.IMREAD_ANYDEPTH)
    if depth is None or depth.ndim != 2:
        raise ValueError(f"{dataset}: cannot read a single-channel depth map from {path}")
    return depth


# numpy parses .npy headers with ast.literal_eval, which is not thread-safe in CPython 3.11: concurrent calls
# (grain's reading threads) can fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905). Every .npy / .npz read holds this lock; the files are small next to the images.
_NUMPY_LOAD_LOCK = threading.Lock()


def read_npy(path: str, dataset: str, what: str = "array file") -> np.ndarray:
    """The array of an .npy file (thread-safe, see _NUMPY_LOAD_LOCK)."""
    require_file(path, dataset, what)
    with _NUMPY_LOAD_LOCK:
        return np.load(path)


def read_npz(path: str, dataset: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz file (thread-safe, see _NUMPY_LOAD_LOCK)."""
    require_file(path, dataset, "metadata file")
    with _NUMPY_LOAD_LOCK, np.load(path) as data:
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"{dataset}: {path} lacks {missing} (has {sorted(data.keys())})")
        return {k: data[k] for k in keys}


def pose_from_rt(R: Any, t: Any) -> np.ndarray:
    """(4, 4) float32 camera-to-world pose from a rotation and a translation."""
    pose = np.eye(4, dtype=np.float32)
    pose[:3, :3] = np.asarray(R, np.float32).reshape(3, 3)
    pose[:3, 3] = np.asarray(t, np.float32).reshape(3)
    return pose


def frame_view(img: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray,
               dataset: str, label: str, instance: str) -> View:
    """A sample-format view without `pts3d` (see `with_world_points`); non-finite depth becomes 0."""
    if depth.shape != img.shape[:2]:
        raise ValueError(f"{dataset}/{label}/{instance}: depth map {depth.shape} does not match "
                         f"image {img.shape[:2]}")
    depth = np.where(np.isfinite(depth), depth, np.float32(0)).astype(np.float32, copy=False)
    return dict(img=img, depthmap=depth, camera_intrinsics=np.asarray(K, np.float32),
                camera_pose=np.asarray(c2w, np.float32), valid_mask=depth > 0,
                true_shape=np.array(img.shape[:2], np.int32), dataset=dataset, label=label, instance=instance)


def with_world_points(view: View) -> View:
    """The view with `pts3d` (and `valid_mask`) from its depth map, intrinsics and pose."""
    pts3d, valid = depthmap_to_world(view["depthmap"], view["camera_intrinsics"], view["camera_pose"])
    return {**view, "pts3d": pts3d, "valid_mask": valid}


def make_view(img: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray,
              dataset: str, label: str, instance: str) -> View:
    """A sample-format view; world points are the unprojection of the depth map."""
    return with_world_points(frame_view(img, depth, K, c2w, dataset, label, instance))


# ----------------------------------------------------------------------------
# View sampling.
# ----------------------------------------------------------------------------


def window_combinations(groups: Sequence[np.ndarray], num_views: int, window_size: int,
                        samples_per_window: int, rng: np.random.Generator,
                        ordered: bool = False) -> np.ndarray:
    """(M, num_views) distinct view tuples, drawn within sliding windows over each ordered group.

    For every position i of a group, the window is members [i - w//2, i + w//2) (clipped), and
    `samples_per_window` random ordered draws without replacement are taken from it (sorted by
    position when `ordered`). Duplicates are removed; rows come out in lexicographic order.
    """
    half = window_size // 2
    combos = []
    for members in groups:
        members = np.asarray(members, np.int64)
        for i in range(len(members)):
            window = members[max(0, i - half):min(len(members), i + half)]
            if len(window) < num_views:
                continue
            picks = np.argsort(rng.random((samples_per_window, len(window))), axis=1)[:, :num_views]
            if ordered:
                picks.sort(axis=1)
            combos.append(window[picks])  # (S, V)
    if not combos:
        return np.zeros((0, num_views), np.int64)
    return np.unique(np.concatenate(combos), axis=0)


def window_capacity(window_size: int) -> int:
    """The most frames one window of `window_combinations` holds: members [i - w//2, i + w//2)."""
    return 2 * (window_size // 2)


def keep_fraction(items: Sequence[Any], fraction: float) -> list[Any]:
    """The first max(1, int(n * fraction)) items (all of them for fraction >= 1)."""
    if not 0 < fraction:
        raise ValueError(f"data_scaling must be > 0, got {fraction}")
    return list(items) if fraction >= 1 else list(items)[:max(1, int(len(items) * fraction))]


class Reader:
    """Shared checks, the per-source `aug_crop` setting, and index/rng handling.

    `window`: (the most frames one sample is drawn from, the setting that bounds it), or None; checked before any
    file is read, so a training config that cannot produce a sample fails when its mixtures are first parsed.
    """

    name = "dataset"

    def __init__(self, root: str, split: str | None, num_views: int, aug_crop: int, seed: int,
                 window: tuple[int, str] | None = None):
        if num_views < 1:
            raise ValueError(f"{self.name}: num_views must be >= 1, got {num_views}")
        if window is not None and window[0] < num_views:
            raise ValueError(f"{self.name}: {window[1]} draws views from at most {window[0]} frames, fewer than "
                             f"num_views={num_views}; widen the window")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{self.name}: dataset root not found: {root}")
        self.root, self.split, self.num_views = root, split, num_views
        self.aug_crop, self.seed = aug_crop, seed

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int, rng: np.random.Generator | None = None,
                    world_points: bool = True) -> list[View]:
        """The sample's views; without `pts3d` if not world_points."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng((self.seed, int(index))) if rng is None else rng
        views = self._get_views(int(index), rng)
        return [with_world_points(v) for v in views] if world_points else views

    def _get_views(self, index: int, rng: np.random.Generator) -> list[View]:
        raise NotImplementedError

    def _check_nonempty(self, n: int) -> None:
        if n == 0:
            raise ValueError(f"{self.name}: no scene under {self.root} (split {self.split!r}) has "
                             f"enough frames for {self.num_views} views")


class WindowedFramesReader(Reader):
    """Samples are precomputed window combinations of frames of one group (scene, device)."""

    jitter = 0  # each frame index moves by a random offset in [-jitter, jitter] within its group

    def _set_groups(self, groups: Sequence[np.ndarray], num_frames: int, window_size: int,
                    num_samples_per_window: int, ordered: bool) -> None:
        self.groups = [np.asarray(g, np.int64) for g in groups]
        self._group_of = np.full(num_frames, -1, np.int64)
        self._position = np.zeros(num_frames, np.int64)
        for g, members in enumerate(self.groups):
            self._group_of[members] = g
            self._position[members] = np.arange(len(members))
        self.combinations = window_combinations(self.groups, self.num_views, window_size,
                                                num_samples_per_window, np.random.default_rng(self.seed),
                                                ordered)
        self._check_nonempty(len(self.combinations))

    def __len__(self) -> int:
        return len(self.combinations)

    def _get_views(self, index: int, rng: np.random.Generator) -> list[View]:
        frames = self.combinations[index]
        if self.jitter:
            members = self.groups[self._group_of[frames[0]]]
            offsets = rng.integers(-self.jitter, self.jitter + 1, size=len(frames))
            frames = members[np.clip(self._position[frames] + offsets, 0, len(members) - 1)]
        return [self._load_frame(int(f)) for f in frames]

    def _load_frame(self, frame: int) -> View:
        raise NotImplementedError


def _sorted_by_name(members: np.ndarray, names: np.ndarray) -> np.ndarray:
    return members[np.argsort(names[members], kind="stable")]


# ----------------------------------------------------------------------------
# Datasets.
# ----------------------------------------------------------------------------


class Co3d(Reader):
    """CO3Dv2 object-centric sequences: frames within an angular window of the ~100-frame orbit.

    Combinations are drawn over 100 frame slots (360 degrees); each slot then moves by a random offset
    in [-4, 4] and is clipped to the sequence. `mask_bg` (True, False or "rand" = per-sample coin flip)
    zeroes the depth outside the object mask. Frames without valid depth are replaced by repeats of
    valid frames of the sample; a sequence without any moves the sample to the next sequence.
    Sample index = sequence * len(combinations) + combination. (The reference multi-view reader always
    uses the first combination, which looks unintended; we index them all.)
    """

    name = "Co3d_v2"
    num_slots = 100
    max_retries = 5

    def __init__(self, root: str, split: str, num_views: int = 4, window_degree_range: int = 360,
                 num_samples_per_window: int = 100, mask_bg: bool | str = True, data_scaling: float = 1.0,
                 aug_crop: int = 16, seed: int = 0):
        window = window_degree_range * self.num_slots // 360
        super().__init__(root, split, num_views, aug_crop, seed,
                         (window_capacity(window), f"window_degree_range={window_degree_range}"))
        if mask_bg not in (True, False, "rand"):
            raise ValueError(f"{self.name}: mask_bg must be True, False or 'rand', got {mask_bg!r}")
        self.mask_bg = mask_bg
        path = require_file(os.path.join(root, f"selected_seqs_{split}.json"), self.name, "sequence list")
        with open(path) as f:
            selected = json.load(f)
        if not isinstance(selected, dict) or not all(isinstance(v, dict) for v in selected.values()):
            raise ValueError(f"{self.name}: {path} must map category -> {{sequence: [frame numbers]}}")
        self.sequences = [(cat, seq, [int(n) for n in frames])
                          for cat, seqs in selected.items()
                          for seq, frames in keep_fraction(list(seqs.items()), data_scaling) if frames]
        self.combinations = window_combinations([np.arange(self.num_slots)], num_views, window,
                                                num_samples_per_window, np.random.default_rng(seed))
        self._check_nonempty(len(self.sequences) * len(self.combinations))

    def __len__(self) -> int:
        return len(self.sequences) * len(self.combinations)

    def _get_views(self, index: int, rng: np.random.Generator) -> list[View]:
        seq_index, combo_index = divmod(index, len(self.combinations))
        mask = self.mask_bg is True or (self.mask_bg == "rand" and bool(rng.integers(2)))
        for attempt in range(self.max_retries):
            cat, seq, frames = self.sequences[(seq_index + attempt) % len(self.sequences)]
            slots = self.combinations[combo_index] + rng.integers(-4, 5, size=self.num_views)
            views = [self._load_frame(cat, seq, frames[s], mask) for s in np.clip(slots, 0, len(frames) - 1)]
            views = [v for v in views if v["valid_mask"].any()]
            if views:
                extra = rng.integers(len(views), size=self.num_views - len(views))
                return views + [dict(views[i]) for i in extra]
        raise ValueError(f"{self.name}: no frame with valid depth in {self.max_retries} sequences "
                         f"starting at {self.sequences[seq_index][:2]}")

    def _load_frame(self, cat: str, seq: str, number: int, mask: bool) -> View:
        seq_dir = os.path.join(self.root, cat, seq)
        stem = f"frame{number:06d}"
        meta = read_npz(os.path.join(seq_dir, "images", stem + ".npz"), self.name,
                        ("camera_intrinsics", "camera_pose", "maximum_depth"))
        img = read_rgb(os.path.join(seq_dir, "images", stem + ".jpg"), self.name)
        raw = read_depth(os.path.join(seq_dir, "depths", stem + ".jpg.geometric.png"), self.name)
        depth = raw.astype(np.float32) / 65535 * np.float32(np.nan_to_num(meta["maximum_depth"]))
        if mask:
            obj = read_depth(os.path.join(seq_dir, "masks", stem + ".png"), self.name)
            depth = depth * (obj.astype(np.float32) / 255 > 0.1)
        return frame_view(img, depth, meta["camera_intrinsics"], meta["camera_pose"], self.name,
                         f"{cat}/{seq}", stem)


class ScanNetpp(WindowedFramesReader):
    """ScanNet++ scenes, iPhone and DSLR frames sampled separately, in name order (offsets in [-2, 2])."""

    name = "ScanNet++"
    jitter = 2

    def __init__(self, root: str, split: str = "train", num_views: int = 4, window_size: int = 60,
                 num_samples_per_window: int = 100, ordered: bool = False, data_scaling: float = 1.0,
                 aug_crop: int = 256, seed: int = 0):
        super().__init__(root, split, num_views, aug_crop, seed,
                         (window_capacity(window_size), f"window_size={window_size}"))
        if split != "train":
            raise ValueError(f"{self.name}: only the 'train' split exists, got {split!r}")
        meta = read_npz(os.path.join(root, "all_metadata.npz"), self.name,
                        ("scenes", "sceneids", "images", "intrinsics", "trajectories"))
        self.scenes, self.sceneids, self.images = meta["scenes"], meta["sceneids"], meta["images"]
        self.intrinsics = meta["intrinsics"].astype(np.float32)
        self.trajectories = meta["trajectories"].astype(np.float32)
        iphone = np.char.find(self.images.astype(str), "frame_") >= 0
        groups = []
        for scene_id in keep_fraction(np.unique(self.sceneids), data_scaling):
            for device in (iphone, ~iphone):
                members = np.flatnonzero((self.sceneids == scene_id) & device)
                groups.append(_sorted_by_name(members, self.images))
        self._set_groups(groups, len(self.images), window_size, num_samples_per_window, ordered)

    def _load_frame(self, frame: int) -> View:
        scene = str(self.scenes[self.sceneids[frame]])
        name = str(self.images[frame])
        scene_dir = os.path.join(self.root, scene)
        img = read_rgb(os.path.join(scene_dir, "images", name + ".jpg"), self.name)
        depth = read_depth(os.path.join(scene_dir, "depth", name + ".png"), self.name).astype(np.float32) / 1000
        return frame_view(img, depth, self.intrinsics[frame], self.trajectories[frame], self.name, scene, name)


class ARKitScenes(WindowedFramesReader):
    """ARKitScenes low-resolution RGB-D, frames in name (time) order."""

    name = "arkitscenes"
    splits = {"train": "Training", "test": "Test"}

    def __init__(self, root: str, split: str, num_views: int = 4, window_size: int = 6,
                 num_samples_per_window: int = 10, ordered: bool = False, data_scaling: float = 1.0,
                 aug_crop: int = 256, seed: int = 0):
        super().__init__(root, split, num_views, aug_crop, seed,
                         (window_capacity(window_size), f"window_size={window_size}"))
        if split not in self.splits:
            raise ValueError(f"{self.name}: split must be one of {sorted(self.splits)}, got {split!r}")
        self.split_dir = os.path.join(root, self.splits[split])
        meta = read_npz(os.path.join(self.split_dir, "all_metadata.npz"), self.name,
                        ("scenes", "sceneids", "images", "intrinsics", "trajectories"))
        self.scenes, self.sceneids, self.images = meta["scenes"], meta["sceneids"], meta["images"]
        self.intrinsics = meta["intrinsics"].astype(np.float32)
        self.trajectories = meta["trajectories"].astype(np.float32)
        groups = [_sorted_by_name(np.flatnonzero(self.sceneids == s), self.images)
                  for s in keep_fraction(np.unique(self.sceneids), data_scaling)]
        self._set_groups(groups, len(self.images), window_size, num_samples_per_window, ordered)

    def _load_frame(self, frame: int) -> View:
        scene = str(self.scenes[self.sceneids[frame]])
        name = str(self.images[frame])
        scene_dir = os.path.join(self.split_dir, scene)
        img = read_rgb(os.path.join(scene_dir, "vga_wide", name.replace(".png", ".jpg")), self.name)
        depth = read_depth(os.path.join(scene_dir, "lowres_depth", name), self.name).astype(np.float32) / 1000
        return frame_view(img, depth, self.intrinsics[frame], self.trajectories[frame], self.name, scene,
                         os.path.splitext(name)[0])


class MegaDepth(WindowedFramesReader):
    """MegaDepth sub-scenes, frames in metadata order (offsets in [-2, 2]); 'val' = scenes 0015 and 0022.

    Frames of one sample can differ in size; `augment` brings them to one resolution.
    """

    name = "MegaDepth"
    jitter = 2
    val_scenes = ("0015", "0022")

    def __init__(self, root: str, split: str | None, num_views: int = 4, window_size: int = 60,
                 num_samples_per_window: int = 100, aug_crop: int = 16, seed: int = 0):
        super().__init__(root, split, num_views, aug_crop, seed,
                         (window_capacity(window_size), f"window_size={window_size}"))
        meta = read_npz(os.path.join(root, "all_metadata_for_multiview.npz"), self.name,
                        ("scenes", "sceneids", "images"))
        self.scenes, self.sceneids, self.images = meta["scenes"], meta["sceneids"], meta["images"]
        is_val = np.array([str(s).startswith(self.val_scenes) for s in self.scenes])
        if split is None:
            keep = np.ones(len(self.scenes), bool)
        elif split in ("train", "val"):
            keep = is_val if split == "val" else ~is_val
        else:
            raise ValueError(f"{self.name}: split must be 'train', 'val' or None, got {split!r}")
        groups = [np.flatnonzero(self.sceneids == s) for s in np.flatnonzero(keep)]
        self._set_groups(groups, len(self.images), window_size, num_samples_per_window, False)

    def _load_frame(self, frame: int) -> View:
        scene = str(self.scenes[self.sceneids[frame]])
        name = str(self.images[frame])
        stem = os.path.join(self.root, scene, name)
        cam = read_npz(stem + ".npz", self.name, ("intrinsics", "cam2world"))
        img = read_rgb(stem + ".jpg", self.name)
        depth = read_depth(stem + ".exr", self.name)
        return frame_view(img, depth, cam["intrinsics"], cam["cam2world"], self.name, scene, name)


class BlendedMVS(WindowedFramesReader):
    """BlendedMVS scenes, frames (those appearing in the pair list) in index order; 'val' = seq_low % 10 == 0."""

    name = "BlendedMVS"

    def __init__(self, root: str, split: str | None, num_views: int = 4, window_size: int = 6,
                 num_samples_per_window: int = 10, ordered: bool = False, aug_crop: int = 16, seed: int = 0):
        super().__init__(root, split, num_views, aug_crop, seed,
                         (window_capacity(window_size), f"window_size={window_size}"))
        path = os.path.join(root, "blendedmvs_pairs.npy")
        pairs = read_npy(path, self.name, "pair list")
        if pairs.dtype.names is None or len(pairs.dtype.names) < 4 or "seq_low" not in pairs.dtype.names:
            raise ValueError(f"{self.name}: {path} must be a structured array "
                             f"(seq_high, seq_low, img1, img2, score), got dtype {pairs.dtype}")
        if split == "train":
            pairs = pairs[pairs["seq_low"] % 10 > 0]
        elif split == "val":
            pairs = pairs[pairs["seq_low"] % 10 == 0]
        elif split is not None:
            raise ValueError(f"{self.name}: split must be 'train', 'val' or None, got {split!r}")
        seq_high, seq_low, img1, img2 = (pairs[n] for n in pairs.dtype.names[:4])
        scene_names = np.array([f"{int(h):08x}{int(lo):016x}" for h, lo in zip(seq_high, seq_low)])
        self.frames: list[tuple[str, int]] = []
        groups = []
        for scene in np.unique(scene_names):
            rows = scene_names == scene
            imgs = np.unique(np.concatenate([img1[rows], img2[rows]]))
            groups.append(np.arange(len(self.frames), len(self.frames) + len(imgs)))
            self.frames += [(str(scene), int(i)) for i in imgs]
        self._set_groups(groups, len(self.frames), window_size, num_samples_per_window, ordered)

    def _load_frame(self, frame: int) -> View:
        scene, number = self.frames[frame]
        name = f"{number:08d}"
        stem = os.path.join(self.root, scene, name)
        cam = read_npz(stem + ".npz", self.name, ("intrinsics", "R_cam2world", "t_cam2world"))
        img = read_rgb(stem + ".jpg", self.name)
        depth = read_depth(stem + ".exr", self.name)
        return frame_view(img, depth, cam["intrinsics"], pose_from_rt(cam["R_cam2world"], cam["t_cam2world"]),
                         self.name, scene, name)


class Habitat(Reader):
    """Habitat renders: 5 views per scene key; view 1 is always first, the others are drawn at random
    (distinct for up to 5 views, with repeats beyond). A missing view or one without a finite pose is
    replaced by the next one (cyclically)."""

    name = "Habitat"
    views_per_scene = 5

    def __init__(self, root: str, split: str, num_views: int = 4, size: int = 1_000_000,
                 data_scaling: float = 1.0, aug_crop: int = 16, seed: int = 0):
        super().__init__(root, split, num_views, aug_crop, seed)
        path = require_file(os.path.join(root, f"Habitat_{size}_scenes_{split}.txt"), self.name, "scene list")
        with open(path) as f:
            scenes = [line.strip() for line in f if line.strip()]
        self.scenes = keep_fraction(sorted(scenes), data_scaling) if data_scaling < 1 else scenes
        self._check_nonempty(len(self.scenes))

    def __len__(self) -> int:
        return len(self.scenes)

    def _get_views(self, index: int, rng: np.random.Generator) -> list[View]:
        data_path, key = os.path.split(os.path.join(self.root, self.scenes[index]))
        others = self.views_per_scene - 1
        extra = rng.choice(others, self.num_views - 1, replace=self.num_views - 1 > others) + 1
        return [self._load_first_usable(data_path, key, int(v)) for v in [0, *extra]]

    def _load_first_usable(self, data_path: str, key: str, first: int) -> View:
        for k in range(first, first + self.views_per_scene):
            try:
                view = self._load_view(data_path, key, k % self.views_per_scene + 1)
            except FileNotFoundError:
                continue
            if view is not None:
                return view
        raise FileNotFoundError(f"{self.name}: no readable view with a finite pose for {key} in {data_path}")

    def _load_view(self, data_path: str, key: str, number: int) -> View | None:
        """The view, or None if its pose is not finite."""
        stem = os.path.join(data_path, f"{key}_{number}")
        with open(require_file(stem + "_camera_params.json", self.name, "camera file")) as f:
            cam = json.load(f)
        pose = pose_from_rt(cam["R_cam2world"], cam["t_cam2world"])
        if not np.isfinite(pose).all():
            return None
        img = read_rgb(stem + ".jpeg", self.name)
        depth = read_depth(stem + "_depth.exr", self.name)
        return frame_view(img, depth, cam["camera_intrinsics"], pose, self.name,
                         os.path.relpath(data_path, self.root), f"{key}_{number}")


READERS: dict[str, type[Reader]] = {
    "co3d": Co3d,
    "scannetpp": ScanNetpp,
    "arkitscenes": ARKitScenes,
    "habitat": Habitat,
    "blendedmvs": BlendedMVS,
    "megadepth": MegaDepth,
}
