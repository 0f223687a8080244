"""Image and video input, prepared exactly like Fast3R's reference loader.

A loaded view is a dict with
  img:        (1, 3, H, W) float32 in [-1, 1] (uint8 / 255, then (x - 0.5) / 0.5),
  true_shape: (1, 2) int32 = (H, W),
  name:       where the image came from,
  geometry:   `Geometry` of the resize and crop, to map pixels and intrinsics back to the original image.
Images are returned in their true orientation. `load_all` loads many in a thread pool (PIL and the video decoder
release the GIL), in input order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import glob
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

from fast3r_jax.geometry.cameras import resize_crop_intrinsics

ImageInput = Union[str, os.PathLike, PIL.Image.Image]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
PATCH_SIZE = 16
SHORT_SIDE_SIZE = 224  # this size switches to short-side resize + square crop
MIN_IMAGE_SIDE = PATCH_SIZE  # a smaller image (e.g. 1x1) holds no patch of its own: refused as a bad image
MAX_IMAGE_PIXELS = PIL.Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb limit, checked from the header
# PIL warns between 1x and 2x its limit and raises above; both are a bad image here, refused before decoding.
warnings.filterwarnings("error", category=PIL.Image.DecompressionBombWarning)


# ----------------------------------------------------------------------------
# Geometry of the resize and crop.
# ----------------------------------------------------------------------------


def resized_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(W, H) after scaling so that the longer side becomes `long_side`.

    Each side is rounded with Python's `round` (half to even), as the reference does.
    """
    longest = max(width, height)
    return tuple(int(round(x * long_side / longest)) for x in (width, height))


def _resize(img: PIL.Image.Image, long_side: int) -> PIL.Image.Image:
    """Resize the long side to `long_side`: LANCZOS when shrinking, BICUBIC otherwise."""
    shrinking = max(img.size) > long_side
    resample = PIL.Image.Resampling.LANCZOS if shrinking else PIL.Image.Resampling.BICUBIC
    return img.resize(resized_size(*img.size, long_side), resample)


def crop_box(width: int, height: int, size: int, square_ok: bool = False) -> tuple[int, int, int, int]:
    """Centre crop (left, top, right, bottom) applied after the resize.

    size 224: the largest centred square. Otherwise both sides are floored to a
    multiple of 16 around the centre; a square image becomes 4:3 unless square_ok.
    """
    cx, cy = width // 2, height // 2
    if size == SHORT_SIDE_SIZE:
        half = min(cx, cy)
        return cx - half, cy - half, cx + half, cy + half
    half_w = ((2 * cx) // PATCH_SIZE) * (PATCH_SIZE // 2)
    half_h = ((2 * cy) // PATCH_SIZE) * (PATCH_SIZE // 2)
    if width == height and not square_ok:
        half_h = 3 * half_w // 4  # half_w is a multiple of 8, so this is exact
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a view's pixels came from its original image: resized from `original` (W, H) to `resized` (W, H), then
    cropped to `box` (left, top, right, bottom) of the resized image."""

    original: tuple[int, int]
    resized: tuple[int, int]
    box: tuple[int, int, int, int]

    @property
    def scale(self) -> np.ndarray:
        """(sx, sy): resized / original size per axis."""
        return np.asarray(self.resized, np.float64) / np.asarray(self.original, np.float64)

    def to_original(self, uv: np.ndarray) -> np.ndarray:
        """Pixel positions (..., 2) (u, v) of the view (centre of the top-left pixel at (0, 0)) -> the same points
        in the original image, same convention."""
        return (np.asarray(uv, np.float64) + 0.5 + np.asarray(self.box[:2])) / self.scale - 0.5

    def intrinsics_from_original(self, intrinsics: np.ndarray) -> np.ndarray:
        """Pinhole matrix (3, 3) of the original image -> the view's (the inverse of intrinsics_to_original)."""
        return resize_crop_intrinsics(intrinsics, self.scale, self.box[:2])

    def intrinsics_to_original(self, intrinsics: np.ndarray) -> np.ndarray:
        """Pinhole matrix (3, 3) of the view -> the original image's (focal / scale, principal point mapped)."""
        k = np.array(intrinsics, np.float64)
        k[:2, :2] /= self.scale[:, None]
        k[:2, 2] = self.to_original(k[:2, 2])
        return k


def plan_resize_and_crop(width: int, height: int, size: int = 512, square_ok: bool = False) -> Geometry:
    """The `Geometry` of `resize_and_crop` for an image of `width` x `height`.

    size 224 scales the short side to 224 (then square crop); any other size scales
    the long side to `size` (then crop to multiples of 16).
    """
    if not isinstance(size, int) or size < PATCH_SIZE:
        raise ValueError(f"size must be an int >= {PATCH_SIZE}, got {size!r}")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(f"image of size {width}x{height} is too small (under {MIN_IMAGE_SIDE} pixels)")
    long_side = round(size * max(width / height, height / width)) if size == SHORT_SIDE_SIZE else size
    resized = resized_size(width, height, long_side)
    box = crop_box(*resized, size, square_ok)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"image of size {width}x{height} is too small for size={size}")
    return Geometry((width, height), resized, box)


def resize_and_crop(img: PIL.Image.Image, size: int = 512, square_ok: bool = False) -> PIL.Image.Image:
    """Reference resize + centre crop of an RGB image (see `plan_resize_and_crop`)."""
    plan = plan_resize_and_crop(*img.size, size, square_ok)
    return _resize(img, max(plan.resized)).crop(plan.box)


# ----------------------------------------------------------------------------
# Pixels -> normalised tensor.
# ----------------------------------------------------------------------------


def normalize(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1].

    Float32 throughout, in the reference order: x / 255, then (x - 0.5) / 0.5.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    x = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255)  # (3, H, W)
    return (x - np.float32(0.5)) / np.float32(0.5)


def open_rgb(path: str | os.PathLike) -> PIL.Image.Image:
    """Decode an image file, apply its EXIF orientation and convert it to RGB."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with PIL.Image.open(path) as img:  # reads the header only; the bomb check raises here
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{img.width}x{img.height} pixels exceed the limit of {MAX_IMAGE_PIXELS}")
            img.load()
            return to_rgb(img)
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError,
            PIL.Image.DecompressionBombWarning) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """Upright RGB copy of a PIL image (EXIF orientation applied; alpha dropped)."""
    return PIL.ImageOps.exif_transpose(img).convert("RGB")


def load_image(
    image: ImageInput, size: int = 512, square_ok: bool = False, name: str | None = None
) -> dict[str, Any]:
    """Load one image (path or PIL image) as a model view; see the module docstring."""
    if isinstance(image, PIL.Image.Image):
        rgb = to_rgb(image)
        default_name = getattr(image, "filename", "") or "<PIL image>"
    else:
        rgb = open_rgb(image)
        default_name = os.fspath(image)
    plan = plan_resize_and_crop(*rgb.size, size, square_ok)
    pixels = np.asarray(_resize(rgb, max(plan.resized)).crop(plan.box), dtype=np.uint8)  # (H, W, 3)
    return dict(
        img=normalize(pixels)[None],  # (1, 3, H, W)
        true_shape=np.array([pixels.shape[:2]], dtype=np.int32),  # (1, 2)
        name=name if name is not None else default_name,
        geometry=plan,
    )


T = TypeVar("T")
R = TypeVar("R")


def load_all(load: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> Iterator[R]:
    """`load(item)` for every item in a thread pool (decoding releases the GIL), yielded in input order as each
    is ready, so that the caller consumes the first while the others decode. An exception surfaces at its item."""
    workers = workers or min(len(items), os.cpu_count() or 1, 16) or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(load, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


# ----------------------------------------------------------------------------
# Many inputs: files, folders, glob patterns.
# ----------------------------------------------------------------------------


def _has_ext(path: str, extensions: tuple[str, ...]) -> bool:
    return path.lower().endswith(extensions)


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def expand_image_paths(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Resolve files, folders (their image files, sorted by name) and glob patterns
    (matching image files, sorted) into a flat list of image paths, in input order."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = [os.path.join(item, f) for f in sorted(os.listdir(item))]
            found = [f for f in found if os.path.isfile(f) and _has_ext(f, IMAGE_EXTENSIONS)]
            if not found:
                raise FileNotFoundError(f"no image files {IMAGE_EXTENSIONS} in folder: {item}")
        elif os.path.isfile(item):
            if _has_ext(item, VIDEO_EXTENSIONS):
                raise ValueError(f"{item} is a video; read it with load_video_frames")
            found = [item]
        elif _is_glob(item):
            found = [f for f in sorted(glob.glob(item)) if os.path.isfile(f) and _has_ext(f, IMAGE_EXTENSIONS)]
            if not found:
                raise FileNotFoundError(f"no image files match pattern: {item}")
        else:
            raise FileNotFoundError(f"image path not found: {item}")
        paths.extend(found)
    return paths


# ----------------------------------------------------------------------------
# Video frames.
# ----------------------------------------------------------------------------


def select_frame_indices(
    num_total: int, source_fps: float, num_frames: int | None = None, fps: float | None = None
) -> list[int]:
    """Indices of the frames to keep from a video of `num_total` frames.

    num_frames: that many frames evenly spaced from first to last (all if fewer exist).
    fps: one frame every source_fps / fps frames, starting at frame 0.
    Neither: every frame.
    """
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    if num_total <= 0:
        raise ValueError(f"video has no frames (num_total={num_total})")
    if num_frames is not None:
        if num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        picked = np.round(np.linspace(0, num_total - 1, min(num_frames, num_total)))
        return [int(i) for i in picked]
    if fps is not None:
        if fps <= 0 or source_fps <= 0:
            raise ValueError(f"fps and the video's frame rate must be positive, got {fps} and {source_fps}")
        step = max(source_fps / fps, 1.0)  # at most every frame
        picked = np.floor(np.arange(0, num_total, step) + 1e-6)  # eps: 29.97 * k is not exact
        return [int(i) for i in picked if i < num_total]
    return list(range(num_total))


def _ffmpeg_reason(err: Exception) -> str:
    """The last line of ffmpeg's error output (its reason) without the version banner before it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _open_video(path: str) -> tuple[float, Iterator[np.ndarray]]:
    """Frame rate and a closable iterator over the (H, W, 3) uint8 frames of a video."""
    try:
        import imageio_ffmpeg  # optional dependency, only needed for video input
    except ImportError as err:
        raise ImportError("reading videos needs the imageio-ffmpeg package (pip install imageio-ffmpeg)") from err

    reader = imageio_ffmpeg.read_frames(path)
    try:
        meta = next(reader)
    except (OSError, RuntimeError) as err:
        reader.close()
        raise ValueError(f"cannot read video {path}: {_ffmpeg_reason(err)}") from err
    width, height = meta["size"]

    def frames() -> Iterator[np.ndarray]:
        try:
            for raw in reader:
                yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as err:
            raise ValueError(f"cannot read video {path}: {_ffmpeg_reason(err)}") from err
        finally:
            reader.close()  # stops ffmpeg when the caller stops early

    return float(meta["fps"]), frames()


def load_video_frames(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    size: int = 512,
    square_ok: bool = False,
) -> list[dict[str, Any]]:
    """Sample frames of a video (see `select_frame_indices`) and load them as views.

    The video is decoded twice: once to count its frames, once to keep the chosen
    ones. Each view also carries `frame_index`, the index of the frame in the video.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    if not _has_ext(path, VIDEO_EXTENSIONS):
        raise ValueError(f"not a video file {VIDEO_EXTENSIONS}: {path}")
    source_fps, frames = _open_video(path)
    num_total = sum(1 for _ in frames)
    if num_total == 0:
        raise ValueError(f"no frames decoded from video: {path}")
    wanted = set(select_frame_indices(num_total, source_fps, num_frames, fps))
    _, frames = _open_video(path)
    kept = []
    with contextlib.closing(frames):
        for index, frame in enumerate(frames):
            if index in wanted:
                kept.append((index, frame.copy()))
                if len(kept) == len(wanted):
                    break

    def load(item: tuple[int, np.ndarray]) -> dict[str, Any]:
        index, frame = item
        view = load_image(PIL.Image.fromarray(frame), size, square_ok, name=f"{path}#{index}")
        return dict(view, frame_index=index)

    return list(load_all(load, kept))
