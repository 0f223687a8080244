"""Reconstruction from images: load views, run the model on all of them, recover cameras, write the outputs.

    reconstruct(["photos/"], "out/", ReconstructConfig(size=512), checkpoint="ckpt/")
    rec = Reconstructor("ckpt/")            # loads the checkpoint once; keeps the compiled engine between calls
    rec(["photos/"], "out/")                # -> the summary dict

writes into `out/` (atomically: a temporary folder renamed into place once everything is written; the files named
by `ReconstructConfig.outputs`, written concurrently)
    points.ply                  [ply] coloured point cloud (confident pixels of the global pointmaps), binary
    colmap/                     [colmap] COLMAP binary model (text with colmap_text) at the input images' original
                                resolution and names; each point's track is the pixel it came from
    cameras.json                [cameras] c2w, intrinsics and image size per view (the model's resolution)
    scene.glb                   [glb] the most confident points (up to max_glb_points) and the camera frustums
    depth/NNNN_<name>.png       [depth] 16-bit depth in each estimated camera (scale in the PNG text chunk) or .npy
    confidence/NNNN_<name>.png  [confidence] 8-bit confidence (range in the PNG text chunk) or .npy
    preview.png                 [preview] a rendering of (a subsample of) the points and the cameras
    pointmaps.npz               [pointmaps] every view's pointmaps, confidences and colours (io.export.write_pointmaps)
    summary.json                inputs, settings, cameras, timings and, with ground truth, pose errors
The export starts while the cameras are solved (the files that need none are written meanwhile); the summary's
export_s is the time it adds after the cameras, so the stages add up to the wall time.

Cameras come from one of two solvers: 'pnp' (upstream's: focal of view 0 by Weiszfeld, then RANSAC-PnP per view,
on the host) or 'procrustes' (per-view focal from the local pointmap and the similarity aligning it onto the
global pointmap, on the device). Predicted cameras live in the frame of view 0. When the input images sit next to
a ground-truth `cameras.json` (the format written here, as `fast3r_jax.data.synthetic.write_example_scene` does),
pose errors are reported after a similarity alignment of the predicted cameras onto the ground truth.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import shutil
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from fast3r_jax import compilation_cache, distributed
from fast3r_jax.checkpoint import load_config, load_pretrained
from fast3r_jax.config import Fast3RConfig
from fast3r_jax.data.synthetic import CAMERAS_FILE, read_example_cameras
from fast3r_jax.errors import InputError
from fast3r_jax.geometry.cameras import (MIN_PNP_POINTS, PNP_FOCALS, POSE_SOLVERS, Cameras, estimate_cameras,
                                         read_intrinsics)
from fast3r_jax.geometry.metrics import pose_errors
from fast3r_jax.inference.engine import Engine
from fast3r_jax.inference.sharded import ShardedEngine
from fast3r_jax.io import export, images
from fast3r_jax.io.files import atomic_folder, check_output_folder
from fast3r_jax.model.fast3r import DTYPES

DEFAULT_CHECKPOINT = pathlib.Path(__file__).parent / "assets" / "builtin"  # trained by configs/train_builtin.py
UPSTREAM_IMAGE_SIZE = 512  # long side of the released upstream model's inputs
BAD_IMAGE_POLICIES = ("fail", "skip")
DEFAULT_VIDEO_FPS = 1.0
# PnP correspondences per view: on synthetic scenes with noise and outliers, poses a few tenths of a degree from those
# of all pixels (tests/test_cameras.py, README), and RANSAC some 30x faster at 512x288.
DEFAULT_PNP_POINTS = 8192
OUTPUTS = ("ply", "colmap", "cameras", "glb", "depth", "confidence", "preview", "pointmaps")
DEFAULT_OUTPUTS = ("ply", "colmap", "cameras", "glb", "depth", "confidence", "preview")
MAP_FORMATS = ("png", "npy")
# Host memory per pixel of a view for the whole job (input image, device and host outputs, cloud, exports), an
# upper bound used to refuse a --size or view count that cannot fit before anything is loaded.
BYTES_PER_PIXEL = 160
# Output bytes per pixel (upper bound) by file kind, for the free-space check: PLY 15 per point, depth PNG 2,
# confidence PNG 1, npy maps 4, pointmaps 2 * 8 + 3; COLMAP (83) and GLB (16) per point of their budget.
_OUTPUT_BYTES_PER_PIXEL = {"ply": 15, "depth": 2, "confidence": 1, "pointmaps": 19}
_OUTPUT_BYTES_PER_POINT = {"colmap": 83, "glb": 16}
_FIXED_OUTPUT_BYTES = 8 << 20  # preview, cameras, summary, file-system slack

log = logging.getLogger(__name__)


class ReconstructError(InputError):
    """A problem with the user's inputs, checkpoint or output folder (one message, no traceback needed)."""


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """Settings of one reconstruction (the command's flags).

    size: see `check_size`; None uses the resolution of the checkpoint's training (its config's image_size: 128
    for the built-in model, 512 for the official one). dtype: None uses the Reconstructor's. image_ids: 'random'
    (upstream's draw, seeded by `seed`), 'sequential', or None to follow the checkpoint's config. on_bad_image:
    'fail' or 'skip'. outputs: which files to write (OUTPUTS). max_glb_points / max_colmap_points: point budgets of
    the GLB and the COLMAP model (the most confident points); max_preview_points: points rendered in the preview.
    maps_format: depth and confidence maps as 'png' or 'npy'. colmap_text: COLMAP text model instead of binary.
    intrinsics: a file of known intrinsics of the original images (COLMAP cameras, or our cameras.json), used by
    both pose solvers instead of estimated focals (geometry.cameras.read_intrinsics). max_pnp_points: PnP's
    correspondences per view, an evenly spaced subset of the conf > 1 pixels (None: all of them, as upstream).
    pnp_focal: PnP's focal without intrinsics, 'shared' (view 0's for all, upstream's) or 'per-view' (PNP_FOCALS).
    """

    size: int | None = None
    dtype: str | None = None
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
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    max_glb_points: int | None = 300_000
    max_colmap_points: int | None = 50_000
    max_preview_points: int = 50_000
    colmap_text: bool = False
    maps_format: str = "png"
    intrinsics: str | None = None
    max_pnp_points: int | None = DEFAULT_PNP_POINTS
    pnp_focal: str = "shared"

    def check(self) -> None:
        """Raises ReconstructError naming the first setting that is out of range."""
        def positive(name: str, value: float | None, none_ok: bool = True) -> None:
            if (value is None and not none_ok) or (value is not None and not (math.isfinite(value) and value > 0)):
                raise ReconstructError(f"--{name.replace('_', '-')} must be a positive number, got {value}")

        if self.dtype is not None and self.dtype not in DTYPES:
            raise ReconstructError(f"--dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.pose_solver not in POSE_SOLVERS:
            raise ReconstructError(f"--pose-solver must be one of {POSE_SOLVERS}, got {self.pose_solver!r}")
        if self.pnp_focal not in PNP_FOCALS:
            raise ReconstructError(f"--pnp-focal must be one of {PNP_FOCALS}, got {self.pnp_focal!r}")
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise ReconstructError(f"--on-bad-image must be one of {BAD_IMAGE_POLICIES}, got {self.on_bad_image!r}")
        if self.conf_percentile is not None and not 0 <= self.conf_percentile <= 100:
            raise ReconstructError(f"--conf-percentile must lie in [0, 100], got {self.conf_percentile}")
        if self.conf_threshold is not None and not math.isfinite(self.conf_threshold):
            raise ReconstructError(f"--conf-threshold must be a finite number, got {self.conf_threshold}")
        for name in ("video_fps", "video_frames", "max_views", "encoder_chunk", "head_chunk", "max_preview_points"):
            positive(name, getattr(self, name))
        if self.max_pnp_points is not None and self.max_pnp_points < MIN_PNP_POINTS:
            raise ReconstructError(f"--max-pnp-points must be at least {MIN_PNP_POINTS}, got {self.max_pnp_points}")
        for name in ("max_glb_points", "max_colmap_points"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ReconstructError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        unknown = sorted(set(self.outputs) - set(OUTPUTS))
        if unknown or not self.outputs:
            raise ReconstructError(f"--outputs must name some of {', '.join(OUTPUTS)}; got {','.join(self.outputs)}")
        if self.maps_format not in MAP_FORMATS:
            raise ReconstructError(f"--maps must be one of {MAP_FORMATS}, got {self.maps_format!r}")


# ----------------------------------------------------------------------------
# Checkpoint.
# ----------------------------------------------------------------------------


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> tuple[pathlib.Path, bool]:
    """(checkpoint folder, whether it is the built-in model DEFAULT_CHECKPOINT: used when none is given, or named).

    Checks that the folder holds a readable config, so that a wrong path fails before any image is loaded.
    """
    if checkpoint is not None:
        path = pathlib.Path(checkpoint)
        if not path.is_dir():
            raise ReconstructError(f"checkpoint folder not found: {path}")
        _read_config(path)
        return path, path.resolve() == DEFAULT_CHECKPOINT.resolve()
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


def load_model(checkpoint: pathlib.Path, dtype: str = "float32",
               cache_dir: pathlib.Path | None = None) -> tuple[Fast3RConfig, dict]:
    """(config, params in `dtype`) of a checkpoint folder, or one ReconstructError saying why it cannot be used
    (cache_dir: see load_pretrained)."""
    try:
        return load_pretrained(checkpoint, dtype=DTYPES[dtype], cache_dir=cache_dir)
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


def available_memory() -> int | None:
    """Bytes of host memory available to this process (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.3g} GiB"


def check_memory(num_views: int, size: int, what: str = "") -> None:
    """Refuses a job whose views cannot fit in memory at `size` (BYTES_PER_PIXEL per pixel, square images as the
    bound) before anything is loaded."""
    available = available_memory()
    need = num_views * size * size * BYTES_PER_PIXEL
    if available is not None and need > available:
        raise ReconstructError(f"--size {size} with {num_views} view(s){what} needs about {_gib(need)} of memory, "
                               f"{_gib(available)} available; lower --size or --max-views")


def load_inputs(inputs: Sequence[str | os.PathLike], size: int = UPSTREAM_IMAGE_SIZE, on_bad_image: str = "fail",
                max_views: int | None = None, video_fps: float | None = None, video_frames: int | None = None,
                progress: bool | None = None, notify: Callable[[str], None] = log.warning) -> list[dict]:
    """Loads every image and sampled video frame as a view, with `path` (image file) or `video` and `frame_index`,
    and `geometry` (images.Geometry); files are decoded in a thread pool, views kept in input order.

    on_bad_image: 'fail' raises on an unreadable, truncated, too small or too large image; 'skip' leaves it out and
    says so. max_views: keep at most this many views, evenly spread over the inputs. Videos give one frame per second
    by default (video_fps), or video_frames evenly spaced frames.
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
    known = sum(1 if kind == "image" else (video_frames or 0) for kind, _ in sources)
    check_memory(min(known, max_views or known), size)

    def load(source: tuple[str, str]) -> list[dict] | ValueError:
        kind, path = source
        try:
            if kind == "video":
                frames = images.load_video_frames(path, video_frames, None if video_frames else video_fps, size)
                return [dict(frame, path=None, video=path) for frame in frames]
            return [dict(images.load_image(path, size), path=path)]
        except ValueError as err:
            return err

    views, bad = [], []
    loaded = images.load_all(load, sources)
    for (kind, path), result in tqdm(zip(sources, loaded), total=len(sources), desc="loading", unit="file",
                                     disable=(None if progress is None else not progress)):
        if not isinstance(result, ValueError):
            views += result
            continue
        message = str(result) if path in str(result) else f"{path}: {result}"
        if on_bad_image == "fail":
            raise ReconstructError(f"bad input {message} (pass --on-bad-image skip to leave it out)") from result
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
# Pose errors against ground truth (cameras and pose errors themselves: fast3r_jax.geometry).
# ----------------------------------------------------------------------------


def ground_truth_poses(views: Sequence[Mapping], notify: Callable[[str], None] = log.warning
                       ) -> tuple[list[int], np.ndarray] | None:
    """(indices of the views that have one, their ground-truth c2w (K, 4, 4)) from a `cameras.json` next to the
    images (the format written here), or None when fewer than two views have one."""
    known: dict[str, np.ndarray] = {}
    folders = {os.path.dirname(os.path.realpath(v["path"])) for v in views if v.get("path")}
    for folder in sorted(folders):
        if not os.path.isfile(os.path.join(folder, CAMERAS_FILE)):
            continue
        try:
            entries = read_example_cameras(folder)
        except (ValueError, OSError, TypeError, KeyError, AttributeError) as err:  # malformed: noted, not fatal
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


@dataclasses.dataclass(frozen=True)
class PointCloud:
    """The kept pixels of every view: points (N, 3) float32 in view 0's frame, colors (N, 3) uint8, conf (N,),
    view (N,) int index and pixel (N, 2) (u, v) = (column, row) in the view; views in order, pixels row-major."""

    points: np.ndarray
    colors: np.ndarray
    conf: np.ndarray
    view: np.ndarray
    pixel: np.ndarray

    def take(self, index: np.ndarray) -> PointCloud:
        return PointCloud(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


def select_points(pts: Sequence[np.ndarray], conf: Sequence[np.ndarray], colors: Sequence[np.ndarray],
                  conf_percentile: float | None, conf_threshold: float | None) -> PointCloud:
    """The confident pixels (export.confidence_mask) with finite coordinates; ReconstructError when none is left."""
    masks = export.confidence_mask(conf, conf_percentile, conf_threshold)
    # Views in a thread pool: numpy releases the GIL in these whole-array passes.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        flats = list(pool.map(lambda p, m: np.flatnonzero(m & np.isfinite(p).all(-1)), pts, masks))  # row-major
        ends = np.cumsum([len(f) for f in flats])
        cloud = PointCloud(np.empty((ends[-1], 3), np.float32), np.empty((ends[-1], 3), np.uint8),
                           np.empty(ends[-1], np.result_type(*conf)), np.empty(ends[-1], np.int32),
                           np.empty((ends[-1], 2), np.int64))

        def fill(i: int) -> None:  # view i's rows of every column, in place
            flat, rows = flats[i], slice(ends[i] - len(flats[i]), ends[i])
            cloud.points[rows] = pts[i].reshape(-1, 3)[flat]
            cloud.colors[rows] = colors[i].reshape(-1, 3)[flat]
            cloud.conf[rows] = conf[i].reshape(-1)[flat]
            cloud.view[rows] = i
            cloud.pixel[rows, 0], cloud.pixel[rows, 1] = np.divmod(flat, pts[i].shape[1])[::-1]

        list(pool.map(fill, range(len(flats))))
    if not len(cloud.points):
        raise ReconstructError(f"no point kept (--conf-percentile {conf_percentile}, --conf-threshold "
                               f"{conf_threshold}): nothing to write; lower the confidence filter")
    return cloud


def estimate_output_bytes(pixels: int, config: ReconstructConfig) -> int:
    """Upper bound of the bytes written for `pixels` pixels with `config.outputs`."""
    budgets = {"colmap": config.max_colmap_points, "glb": config.max_glb_points}
    total = _FIXED_OUTPUT_BYTES
    for name in config.outputs:
        per_pixel = 4 if name in ("depth", "confidence") and config.maps_format == "npy" else None
        if name in _OUTPUT_BYTES_PER_PIXEL:
            total += pixels * (per_pixel or _OUTPUT_BYTES_PER_PIXEL[name])
        elif name in _OUTPUT_BYTES_PER_POINT:
            total += min(pixels, budgets[name] or pixels) * _OUTPUT_BYTES_PER_POINT[name]
    return total


def check_free_space(out: pathlib.Path, need: int) -> None:
    """Refuses an output folder whose file system has less than `need` bytes free (before the compute starts)."""
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need:
        raise ReconstructError(f"output folder {out}: about {_gib(need)} to write, only {_gib(free)} free on its disk")


def write_outputs(folder: pathlib.Path, views: Sequence[Mapping], outputs: Sequence[Mapping],
                  cams: Cameras | concurrent.futures.Future, names: Sequence[str],
                  config: ReconstructConfig = ReconstructConfig(),
                  timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Writes the files of `config.outputs` (see the module docstring) of host arrays into `folder`, each file a
    thread-pool task; returns point counts. timings receives each output's seconds.

    cams may be a future (the cameras still being solved): the files that do not need them (confidence maps, the
    PLY, the pointmaps) start at once, the rest when it resolves. The per-view maps go to one pool; the point cloud
    is selected meanwhile, and the files made from it are written in a pool of their own as soon as it is, not
    queued behind the maps (at 1000 views the maps are 2000 tasks and the PLY the longest single one).
    """
    colors = [view_colors(v) for v in views]
    pts = [np.asarray(o["pts3d_in_other_view"]) for o in outputs]
    conf = [np.asarray(o["conf"]) for o in outputs]
    wanted = [name for name in OUTPUTS if name in config.outputs]
    seconds = dict.fromkeys(wanted, 0.0)
    lock = threading.Lock()

    def timed(name: str, task: Callable[[], Any]) -> None:
        start = time.perf_counter()
        task()
        with lock:
            seconds[name] += time.perf_counter() - start

    with (concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4)) as pool,
          concurrent.futures.ThreadPoolExecutor(max(1, len(wanted))) as files):
        futures = [pool.submit(timed, name, task) for name, task in _confidence_tasks(folder, conf, names, config)]
        try:
            cloud = select_points(pts, conf, colors, config.conf_percentile, config.conf_threshold)
            tasks = {
                "ply": lambda: export.write_ply(folder / "points.ply", cloud.points, cloud.colors),
                "pointmaps": lambda: export.write_pointmaps(
                    folder / "pointmaps.npz", pts, conf, [np.asarray(o["pts3d_local"]) for o in outputs],
                    [np.asarray(o["conf_local"]) for o in outputs], colors),
            }
            futures += [files.submit(timed, name, tasks[name]) for name in wanted if name in tasks]
            if isinstance(cams, concurrent.futures.Future):
                cams = cams.result()
            cam_args = (cams.c2w, cams.intrinsics, cams.image_sizes)
            tasks = {
                "colmap": lambda: _write_colmap(folder / "colmap", views, cams, names, cloud, config),
                "cameras": lambda: export.write_cameras_json(folder / "cameras.json", *cam_args, names),
                "glb": lambda: _write_glb(folder / "scene.glb", cloud, cams, config.max_glb_points),
                "preview": lambda: export.write_preview_png(folder / "preview.png", cloud.points, cloud.colors,
                                                            *cam_args, max_points=config.max_preview_points),
            }
            futures += [files.submit(timed, name, tasks[name]) for name in wanted if name in tasks]
            if "depth" in config.outputs:
                futures += [pool.submit(timed, "depth", task) for task in _depth_tasks(folder, pts, cams, names, config)]
            for future in futures:
                future.result()  # the first failure (e.g. a full disk) ends the export
        finally:
            for future in futures:
                future.cancel()
    if timings is not None:
        timings |= {f"{name}_s": value for name, value in seconds.items()}
    return dict(points=len(cloud.points), pixels=int(sum(c.size for c in conf)))


def _map_stems(names: Sequence[str], config: ReconstructConfig) -> list[str]:
    """File names of the per-view maps: NNNN_<image stem>.<png|npy>."""
    return [f"{i:04d}_{pathlib.Path(name).stem}.{config.maps_format}" for i, name in enumerate(names)]


def _confidence_tasks(folder: pathlib.Path, conf: Sequence[np.ndarray], names: Sequence[str],
                      config: ReconstructConfig) -> list[tuple[str, Callable[[], None]]]:
    """('confidence', task) writing each view's confidence map, if `config.outputs` asks for them."""
    if "confidence" not in config.outputs:
        return []
    if config.maps_format == "npy":
        def write(path: pathlib.Path, c: np.ndarray) -> None:
            export.write_npy(path, c.astype(np.float32))
    else:
        low, high = min(float(np.nanmin(c)) for c in conf), max(float(np.nanmax(c)) for c in conf)

        def write(path: pathlib.Path, c: np.ndarray) -> None:
            export.write_confidence_png(path, c, low, high)
    return [("confidence", functools.partial(write, folder / "confidence" / stem, c))
            for stem, c in zip(_map_stems(names, config), conf)]


def _depth_tasks(folder: pathlib.Path, pts: Sequence[np.ndarray], cams: Cameras, names: Sequence[str],
                 config: ReconstructConfig) -> list[Callable[[], None]]:
    """Tasks writing each view's depth map in its estimated camera."""
    return [functools.partial(_write_depth, folder / "depth" / stem, p, c2w)
            for stem, p, c2w in zip(_map_stems(names, config), pts, cams.c2w)]


def _write_glb(path: pathlib.Path, cloud: PointCloud, cams: Cameras, budget: int | None) -> None:
    """The scene with the `budget` most confident points of the cloud and the cameras."""
    glb = cloud.take(export.most_confident(cloud.conf, budget))
    export.write_glb(path, glb.points, glb.colors, cams.c2w, cams.intrinsics, cams.image_sizes)


def _write_depth(path: pathlib.Path, pts: np.ndarray, c2w: np.ndarray) -> None:
    """Depth (z in the estimated camera) of a view's global pointmap (H, W, 3), as a PNG or .npy by suffix."""
    depth = np.einsum("hwj,j->hw", pts - c2w[:3, 3], c2w[:3, 2])  # (H, W)
    if path.suffix == ".npy":
        export.write_npy(path, depth.astype(np.float32))
    else:
        export.write_depth_png(path, depth)


def _write_colmap(folder: pathlib.Path, views: Sequence[Mapping], cams: Cameras, names: Sequence[str],
                  cloud: PointCloud, config: ReconstructConfig) -> None:
    """The COLMAP model at the input images' original resolution (our resize and crop undone, per view), with the
    `config.max_colmap_points` most confident points, each tracked to the pixel it came from."""
    geometry = [v["geometry"] for v in views]
    intrinsics = np.stack([g.intrinsics_to_original(k) for g, k in zip(geometry, cams.intrinsics)])  # (V, 3, 3)
    sizes = np.asarray([g.original for g in geometry], np.int64)  # (V, 2)
    sparse = cloud.take(export.most_confident(cloud.conf, config.max_colmap_points))
    uv = np.empty(sparse.pixel.shape, np.float64)  # (M, 2) in the original images
    for i, g in enumerate(geometry):
        rows = sparse.view == i
        uv[rows] = g.to_original(sparse.pixel[rows])
    export.write_colmap(folder, intrinsics, cams.c2w, sizes, names, sparse.points, sparse.colors, max_points=None,
                        observations=(sparse.view, uv), binary=not config.colmap_text)


# ----------------------------------------------------------------------------
# The whole job.
# ----------------------------------------------------------------------------


def default_dtype() -> str:
    """bfloat16 on accelerators, float32 on CPU (where bfloat16 matmuls are slow and no memory is short)."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


class _CompileClock:
    """Seconds XLA spent compiling since the clock was read last (from jax.monitoring's compile events)."""

    _seconds = 0.0
    _installed = False

    @classmethod
    def read(cls) -> float:
        if not cls._installed:
            jax.monitoring.register_event_duration_secs_listener(cls._listen)
            cls._installed = True
        value, cls._seconds = cls._seconds, 0.0
        return value

    @classmethod
    def _listen(cls, event: str, duration: float, **_: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            cls._seconds += duration


def _input_paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Every file the inputs name, and the inputs themselves: what the output folder must never overlap."""
    given = [os.fspath(i) for i in inputs]
    return [p for _, p in _sources(given)] + [i for i in given if os.path.exists(i)]


def known_intrinsics(path: str | os.PathLike, views: Sequence[Mapping],
                     notify: Callable[[str], None] = log.warning) -> np.ndarray:
    """(V, 3, 3) intrinsics at the model's resolution from a file describing the ORIGINAL images (matched by file
    name; video frames by their generated names), mapped through each view's resize and crop."""
    names = [os.path.basename(v["path"]) if v.get("path") else name for v, name in zip(views, image_names(views))]
    sizes = {name: tuple(v["geometry"].original) for name, v in zip(names, views)}
    try:
        known = read_intrinsics(path, sizes, notify)
    except (ValueError, OSError) as err:
        raise ReconstructError(f"--intrinsics {path}: {err}") from err
    return np.stack([v["geometry"].intrinsics_from_original(known[name]) for name, v in zip(names, views)])


class Reconstructor:
    """Reconstruction in-process: the checkpoint is loaded once, and the engine built once and kept compiled
    between calls (a server keeps one alive between requests).

        rec = Reconstructor("ckpt/")
        summary = rec(["photos/"], "out/", ReconstructConfig(pose_solver="procrustes"))

    checkpoint: a converted checkpoint folder; None uses the built-in DEFAULT_CHECKPOINT. dtype: compute dtype
    (default: `default_dtype()`); a call's `config.dtype` may ask for another (a second engine). mesh: run
    `ShardedEngine` over it (several devices or processes); every process computes the cameras, process 0 alone
    writes. compilation_cache_dir: the persistent compilation cache folder (None: compilation_cache.default_path();
    "off"), which also keeps the engine's compiled programs and the model's parameter tree for the next process.
    Parameters are restored in the compute dtype, straight onto the device (and once more for a call that asks for
    another dtype).
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, dtype: str | None = None,
                 mesh: Mesh | None = None, compilation_cache_dir: str | os.PathLike | None = None):
        self.cache_dir = compilation_cache.enable(compilation_cache_dir)
        self.checkpoint, self.default_checkpoint = resolve_checkpoint(checkpoint)
        self._checkpoint_given = checkpoint is not None
        self.dtype = dtype or default_dtype()
        if self.dtype not in DTYPES:
            raise ReconstructError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        self.mesh = mesh
        self._params: dict[str, dict] = {}
        self.params(self.dtype)
        self._engines: dict[tuple, Engine | ShardedEngine] = {}

    def params(self, dtype: str) -> dict:
        """The checkpoint's parameters in `dtype`, restored on first use and kept (load_s: the seconds it took)."""
        if dtype not in self._params:
            start = time.perf_counter()
            self.model_config, self._params[dtype] = load_model(self.checkpoint, dtype, self.cache_dir)
            self.load_s = time.perf_counter() - start
        return self._params[dtype]

    def engine(self, dtype: str, encoder_chunk: int, head_chunk: int, seq_attention: str) -> Engine | ShardedEngine:
        """The engine of these settings, built on first use and kept (its compiled programs with it)."""
        key = (dtype, encoder_chunk, head_chunk, seq_attention if self.mesh is not None else None)
        if key not in self._engines:
            params = self.params(dtype)
            self._engines[key] = (
                Engine(self.model_config, params, dtype, encoder_chunk=encoder_chunk, head_chunk=head_chunk,
                       cache_dir=self.cache_dir)
                if self.mesh is None else
                ShardedEngine(self.model_config, params, self.mesh, dtype, encoder_chunk, head_chunk,
                              seq_attention=seq_attention))
        return self._engines[key]

    def __call__(self, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                 config: ReconstructConfig = ReconstructConfig(), progress: bool | None = None,
                 notify: Callable[[str], None] = log.warning) -> dict[str, Any]:
        """Images -> model -> cameras -> output folder `out`. Returns the summary also written to summary.json.

        notify receives notes for the user (default checkpoint in use, skipped images, failed cameras).
        Bad input (see ReconstructConfig.check, the inputs, `out`, memory and free space) raises ReconstructError
        before the model runs.
        """
        config.check()
        out = pathlib.Path(out)
        input_paths = _input_paths(inputs)
        check_output_folder(out, overwrite=config.overwrite, inputs=input_paths)
        if not self._checkpoint_given:
            notify(f"no --checkpoint given: using the built-in default checkpoint {self.checkpoint}")
        dtype = config.dtype or self.dtype
        self.params(dtype)
        size = check_size(config.size or self.model_config.image_size)
        timings = {"checkpoint_s": self.load_s}
        _CompileClock.read()

        start = time.perf_counter()
        views = load_inputs(inputs, size, config.on_bad_image, config.max_views, config.video_fps,
                            config.video_frames, progress, notify)
        timings["images_s"] = time.perf_counter() - start
        pixels = sum(int(np.prod(np.shape(v["img"])[-2:])) for v in views)
        check_memory(len(views), size, " (after loading)")
        if distributed.is_lead():
            check_free_space(out, estimate_output_bytes(pixels, config))

        start = time.perf_counter()
        engine = self.engine(dtype, config.encoder_chunk, config.head_chunk, config.seq_attention)
        ids = engine.image_ids(len(views), config.image_ids, config.seed)
        outputs = engine(views, ids, progress=progress)
        host_outputs = distributed.host_copy(outputs)
        timings["inference_s"] = time.perf_counter() - start

        on_device = config.pose_solver == "procrustes" and self.mesh is None  # sharded outputs go via the host copy
        known = None if config.intrinsics is None else known_intrinsics(config.intrinsics, views, notify)

        def solve() -> Cameras:
            start = time.perf_counter()
            cams = estimate_cameras(outputs if on_device else host_outputs, config.pose_solver, intrinsics=known,
                                    max_pnp_points=config.max_pnp_points, pnp_focal=config.pnp_focal)
            timings["cameras_s"] = time.perf_counter() - start
            return cams

        names = image_names(views)
        summary: dict[str, Any] = dict(
            checkpoint=str(self.checkpoint), default_checkpoint=self.default_checkpoint, num_views=len(views),
            size=size, dtype=dtype, pose_solver=config.pose_solver, pnp_focal=config.pnp_focal,
            image_ids=ids.tolist(), seed=config.seed, conf_percentile=config.conf_percentile,
            conf_threshold=config.conf_threshold, images=names,
            outputs=list(config.outputs), out=str(out))
        if not distributed.is_lead():
            return summary | self._camera_summary(solve(), views, timings, notify)
        # The export starts while the cameras are solved: files that need no camera are written meanwhile.
        # export_s is what the export adds after the cameras, so the stages still add up to the wall time.
        with (atomic_folder(out, kind="reconstruction", overwrite=config.overwrite, inputs=input_paths) as folder,
              concurrent.futures.ThreadPoolExecutor(1) as solver):
            cams = solver.submit(solve)
            start = time.perf_counter()
            exports: dict[str, float] = {}
            summary |= write_outputs(folder, views, host_outputs, cams, names, config, exports)
            timings["export_s"] = max(0.0, time.perf_counter() - start - timings["cameras_s"])
            summary |= self._camera_summary(cams.result(), views, timings, notify)
            summary["timings"] = timings | {"export": exports}
            (folder / "summary.json").write_text(
                json.dumps({k: v for k, v in summary.items() if k != "out"}, indent=1) + "\n")
        return summary

    @staticmethod
    def _camera_summary(cams: Cameras, views: Sequence[Mapping], timings: dict[str, float],
                        notify: Callable[[str], None]) -> dict[str, Any]:
        """The summary's camera entries (focals, failures, pose errors against ground truth); the compile time."""
        timings["compile_s"] = _CompileClock.read()  # within inference and cameras
        if cams.failed:
            notify(f"camera estimation failed for views {list(cams.failed)}: identity pose and/or a 60-degree "
                   "field-of-view focal written instead")
        summary: dict[str, Any] = dict(focals=cams.focals.tolist(), failed_cameras=list(cams.failed))
        gt = ground_truth_poses(views, notify)
        if gt is not None:
            idx, gt_c2w = gt
            summary["pose_errors"] = dict(pose_errors(cams.c2w[idx], gt_c2w), num_views=len(idx))
        return summary


def reconstruct(inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                config: ReconstructConfig = ReconstructConfig(), *, checkpoint: str | os.PathLike | None = None,
                mesh: Mesh | None = None, compilation_cache_dir: str | os.PathLike | None = None,
                progress: bool | None = None, notify: Callable[[str], None] = log.warning) -> dict[str, Any]:
    """One reconstruction with a fresh `Reconstructor` (see there). The settings and the output folder are checked
    before the checkpoint is loaded."""
    config.check()
    check_output_folder(out, overwrite=config.overwrite, inputs=_input_paths(inputs))
    rec = Reconstructor(checkpoint, dtype=config.dtype, mesh=mesh, compilation_cache_dir=compilation_cache_dir)
    return rec(inputs, out, config, progress, notify)
