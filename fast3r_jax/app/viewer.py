"""`fast3r-jax view OUT`: an interactive 3D viewer (viser) of a folder written by `fast3r-jax reconstruct`.

    fast3r-jax view out/ [--port 8080] [--host 127.0.0.1] [--max-points 2000000]

Shows the points (the most confident ones up to a point budget, so that 1000-view scenes stay fluid), the camera
frustums with each view's thumbnail (click one to fly to that camera), and controls for the confidence percentile
(over all views, and per view), showing and hiding views, colouring by RGB, confidence or view, the global or local
head, the point size, and downloading the points on screen as PLY or GLB. Per-view data comes from pointmaps.npz;
a folder without it falls back to points.ply (global head only, already filtered, no per-view controls).

The point selection is plain numpy (`confidence_cutoffs`, `select_points`, `point_colors`), tested directly.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import threading
import time
from typing import Sequence

import numpy as np
from PIL import Image

from fast3r_jax.errors import InputError
from fast3r_jax.io import export

HEADS = ("global", "local")
COLOR_MODES = ("rgb", "confidence", "view")
DEFAULT_MAX_POINTS = 2_000_000  # points drawn at once; a browser stays fluid well beyond this
PERCENTILE_SAMPLE = 4_000_000  # the global percentile is taken on at most this many evenly strided values
ALIGN_CONF_PERCENTILE = 10.0  # the local head's alignment onto the global one ignores the least confident pixels
THUMBNAIL_SIZE = 96  # long side of the frustum thumbnails, in pixels
ALL_VIEWS = "all views"


@dataclasses.dataclass
class Scene:
    """A reconstruction in host memory; per-view lists are flattened pixels in row-major order.

    points[head][i]: (N_i, 3) float16 world points of view i; conf[head][i]: (N_i,) float16; rgb[i]: (N_i, 3) uint8.
    Without pointmaps.npz (per_view False) there is one group holding points.ply, and cameras stay per view.
    """

    names: list[str]
    c2w: np.ndarray  # (V, 4, 4) OpenCV camera-to-world
    intrinsics: np.ndarray  # (V, 3, 3)
    image_sizes: np.ndarray  # (V, 2) (W, H)
    points: dict[str, list[np.ndarray]]
    conf: dict[str, list[np.ndarray]]
    rgb: list[np.ndarray]
    thumbnails: list[np.ndarray | None]
    per_view: bool

    @property
    def num_groups(self) -> int:
        return len(self.rgb)


class ViewerError(InputError):
    """A folder that cannot be viewed (one message for the user)."""


def _read_ply(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) float32, colors (N, 3) uint8) of a binary little-endian PLY as export.write_ply writes it."""
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    header = data[:end].decode("ascii", "replace").split("\n")
    count = next((int(line.split()[2]) for line in header if line.startswith("element vertex")), None)
    if end < 0 or count is None or "format binary_little_endian 1.0" not in header:
        raise ViewerError(f"{path}: not a binary little-endian PLY point cloud")
    dtype = np.dtype([(k, "<f4") for k in "xyz"] + [(k, "u1") for k in ("red", "green", "blue")])
    vertex = np.frombuffer(data, dtype, count, offset=end + len("end_header\n"))
    return (np.stack([vertex[k] for k in "xyz"], -1), np.stack([vertex[k] for k in ("red", "green", "blue")], -1))


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 copy of an image with its long side at most THUMBNAIL_SIZE."""
    image = Image.fromarray(rgb)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return np.asarray(image)


def load_scene(folder: str | pathlib.Path) -> Scene:
    """Reads cameras.json and pointmaps.npz (or points.ply when there is no pointmaps.npz) of a reconstruction."""
    folder = pathlib.Path(folder)
    try:
        cams = export.read_cameras_json(folder / "cameras.json")
        names = [c["name"] for c in cams]
        c2w = np.asarray([c["c2w"] for c in cams], np.float64)
        intrinsics = np.asarray([c["intrinsics"] for c in cams], np.float64)
        sizes = np.asarray([(c["width"], c["height"]) for c in cams], np.int64)
    except (OSError, ValueError) as err:
        raise ViewerError(f"{folder / 'cameras.json'}: cannot read cameras ({err}); is {folder} a folder written "
                          "by fast3r-jax reconstruct?") from err
    npz = folder / "pointmaps.npz"
    if not npz.is_file():
        ply = folder / "points.ply"
        if not ply.is_file():
            raise ViewerError(f"{folder}: neither pointmaps.npz nor points.ply found")
        pts, rgb = _read_ply(ply)
        zeros = np.zeros(len(pts), np.float16)
        return Scene(names, c2w, intrinsics, sizes, {"global": [pts.astype(np.float16)]}, {"global": [zeros]},
                     [rgb], [None] * len(names), per_view=False)
    import jax  # the alignment of the local head runs in JAX; only needed here
    import jax.numpy as jnp

    from fast3r_jax.geometry.cameras import align_local_to_global

    align = jax.jit(align_local_to_global, static_argnums=3)  # compiled once per image shape

    points: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    conf: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    rgb, thumbs = [], []
    with np.load(npz) as maps:
        for i in range(len(names)):
            try:
                glob, loc = maps[f"global_{i}"], maps[f"local_{i}"]  # (H, W, 3)
                c, c_loc, pixels = maps[f"conf_{i}"], maps[f"conf_local_{i}"], maps[f"rgb_{i}"]  # (H, W), (H, W, 3)
            except KeyError as err:
                raise ViewerError(f"{npz}: missing {err} ({len(names)} cameras in cameras.json)") from err
            aligned = align(jnp.asarray(loc, jnp.float32)[None], jnp.asarray(glob, jnp.float32)[None],
                            jnp.asarray(c, jnp.float32)[None], ALIGN_CONF_PERCENTILE)[0]  # (H, W, 3)
            points["global"].append(glob.reshape(-1, 3))
            points["local"].append(np.asarray(aligned, np.float16).reshape(-1, 3))
            conf["global"].append(c.reshape(-1))
            conf["local"].append(c_loc.reshape(-1))
            rgb.append(pixels.reshape(-1, 3))
            thumbs.append(_thumbnail(pixels))
    return Scene(names, c2w, intrinsics, sizes, points, conf, rgb, thumbs, per_view=True)


# ----------------------------------------------------------------------------
# Point selection (pure numpy).
# ----------------------------------------------------------------------------


def confidence_cutoffs(conf: Sequence[np.ndarray], percentile: float, view_percentiles: Sequence[float]) -> np.ndarray:
    """Per-view confidence cutoffs (V,): the larger of the `percentile` of all views' confidences together and the
    view's own `view_percentiles[i]` percentile of its confidences. Above PERCENTILE_SAMPLE values the global
    percentile is taken on an evenly strided sample."""
    total = sum(len(c) for c in conf)
    stride = max(1, -(-total // PERCENTILE_SAMPLE))
    sample = np.concatenate([np.asarray(c, np.float32) for c in conf])[::stride]  # (<= PERCENTILE_SAMPLE,)
    shared = float(np.percentile(sample, percentile)) if percentile > 0 else -np.inf
    own = [float(np.percentile(np.asarray(c, np.float32), p)) if p > 0 else -np.inf
           for c, p in zip(conf, view_percentiles)]
    return np.maximum(shared, np.asarray(own))


def select_points(conf: Sequence[np.ndarray], visible: Sequence[bool], cutoffs: np.ndarray,
                  max_points: int | None) -> list[np.ndarray]:
    """Indices of the shown pixels per view: visible views, confidence >= the view's cutoff, and, when more than
    `max_points` pass (None: no budget), only the `max_points` most confident of them over all views."""
    keep = [np.flatnonzero(np.asarray(c) >= cut) if show else np.zeros(0, np.int64)
            for c, show, cut in zip(conf, visible, cutoffs)]
    total = sum(len(k) for k in keep)
    if max_points is None or total <= max_points:
        return keep
    values = np.concatenate([np.asarray(c)[k] for c, k in zip(conf, keep)])  # (total,)
    best = np.sort(np.argpartition(-values.astype(np.float32), max_points - 1)[:max_points]) if max_points else []
    offsets = np.cumsum([0] + [len(k) for k in keep])  # (V + 1,)
    split = np.searchsorted(best, offsets[1:-1])
    return [k[np.asarray(b, np.int64) - start] for k, b, start in zip(keep, np.split(best, split), offsets[:-1])]


def point_colors(mode: str, rgb: Sequence[np.ndarray], conf: Sequence[np.ndarray], indices: Sequence[np.ndarray],
                 conf_range: tuple[float, float]) -> np.ndarray:
    """Colours (N, 3) uint8 of the selected pixels: their RGB, their confidence on the export.colorize ramp over
    conf_range, or one ramp colour per view (first view dark)."""
    if mode == "rgb":
        return np.concatenate([r[k] for r, k in zip(rgb, indices)])
    if mode == "confidence":
        return export.colorize(np.concatenate([np.asarray(c, np.float32)[k] for c, k in zip(conf, indices)]),
                               *conf_range)
    if mode == "view":
        view = np.concatenate([np.full(len(k), i) for i, k in enumerate(indices)])  # (N,)
        return export.colorize(view, 0, max(len(indices) - 1, 1))
    raise ValueError(f"colour mode must be one of {COLOR_MODES}, got {mode!r}")


# ----------------------------------------------------------------------------
# The viewer.
# ----------------------------------------------------------------------------


class Viewer:
    """A viser server showing a Scene; the GUI handles are attributes so that scripts and tests can drive them."""

    def __init__(self, scene: Scene, host: str = "127.0.0.1", port: int = 8080,
                 max_points: int = DEFAULT_MAX_POINTS) -> None:
        import viser
        import viser.transforms as tf

        self.scene = scene
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction("-y")  # OpenCV world: y points down
        num = scene.num_groups
        self.visible = np.ones(num, bool)
        self.view_percentiles = np.zeros(num)
        self._lock = threading.Lock()
        sample = np.concatenate([p[::max(1, len(p) // 10000)] for p in scene.points["global"]])  # (~10k V, 3)
        sample = sample.astype(np.float32)
        low, high = np.nanpercentile(sample, [2, 98], axis=0) if len(sample) else (np.zeros(3), np.ones(3))
        diagonal = float(np.linalg.norm(high - low)) or 1.0
        self.conf_range = {h: (min(float(np.min(c)) for c in confs), max(float(np.max(c)) for c in confs))
                           for h, confs in scene.conf.items()}

        gui = self.server.gui
        if not scene.per_view:
            gui.add_markdown("No pointmaps.npz in this folder: showing points.ply (global head, already filtered); "
                             "per-view filtering, confidence and the local head are not available.")
        self.budget = gui.add_number("Point budget", max_points, min=1, step=1000)
        self.full = gui.add_checkbox("Full resolution", False, hint="show every point that passes the filters")
        self.percentile = gui.add_slider("Confidence %ile", 0.0, 100.0, 1.0, 10.0 if scene.per_view else 0.0,
                                         disabled=not scene.per_view)
        self.view = gui.add_dropdown("View", [ALL_VIEWS] + scene.names if scene.per_view else [ALL_VIEWS])
        self.show_view = gui.add_checkbox("Show view", True, disabled=not scene.per_view)
        self.view_percentile = gui.add_slider("View conf. %ile", 0.0, 100.0, 1.0, 0.0, disabled=not scene.per_view)
        self.color = gui.add_dropdown("Colour", COLOR_MODES if scene.per_view else ("rgb", "view"))
        self.head = gui.add_dropdown("Head", HEADS if scene.per_view else ("global",))
        self.point_size = gui.add_slider("Point size", diagonal / 4000, diagonal / 100, diagonal / 4000, diagonal / 600)
        self.download_ply = gui.add_button("Download PLY")
        self.download_glb = gui.add_button("Download GLB")
        self.status = gui.add_markdown("")

        for handle in (self.budget, self.full, self.percentile, self.color, self.head, self.point_size):
            handle.on_update(lambda _: self.refresh())
        self.view.on_update(lambda _: self._show_view_controls())
        self.show_view.on_update(lambda _: self._set_view(visible=self.show_view.value))
        self.view_percentile.on_update(lambda _: self._set_view(percentile=self.view_percentile.value))
        self.download_ply.on_click(lambda event: self._download(event.client, ".ply"))
        self.download_glb.on_click(lambda event: self._download(event.client, ".glb"))

        self.frustums = []
        colors = export.colorize(np.arange(len(scene.names)), 0, max(len(scene.names) - 1, 1))  # (V, 3)
        for i, (width, height) in enumerate(scene.image_sizes):
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=float(2 * np.arctan2(height / 2, scene.intrinsics[i, 1, 1])),
                aspect=float(width / height), scale=0.06 * diagonal, thickness=0.002 * diagonal,
                image=scene.thumbnails[i], wxyz=tf.SO3.from_matrix(scene.c2w[i, :3, :3]).wxyz,
                position=scene.c2w[i, :3, 3], color=tuple(int(v) for v in colors[i]))
            frustum.on_click(lambda event, i=i: self.fly_to(event.client, i))
            self.frustums.append(frustum)
        self.server.on_client_connect(lambda client: self.place_camera(client, 0, back=0.4 * diagonal))
        self.cloud = None
        self.refresh()

    @property
    def address(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def place_camera(self, client, index: int, back: float = 0.0) -> None:
        """Puts the client's camera onto camera `index`, moved `back` world units behind it."""
        forward = self.scene.c2w[index, :3, 2]  # (3,) the camera's viewing direction
        with client.atomic():
            client.camera.wxyz = self.frustums[index].wxyz
            client.camera.position = self.scene.c2w[index, :3, 3] - back * forward

    def fly_to(self, client, index: int) -> None:
        """Moves the client's camera onto camera `index` and selects that view in the per-view controls."""
        self.place_camera(client, index)
        if self.scene.per_view:
            self.view.value = self.scene.names[index]

    def _show_view_controls(self) -> None:
        if self.view.value == ALL_VIEWS:
            return
        i = self.scene.names.index(self.view.value)
        self.show_view.value = bool(self.visible[i])
        self.view_percentile.value = float(self.view_percentiles[i])

    def _set_view(self, visible: bool | None = None, percentile: float | None = None) -> None:
        """Applies the per-view controls to the selected view (to every view while 'all views' is selected)."""
        chosen = slice(None) if self.view.value == ALL_VIEWS else self.scene.names.index(self.view.value)
        if visible is not None:
            self.visible[chosen] = visible
        if percentile is not None:
            self.view_percentiles[chosen] = percentile
        self.refresh()

    def shown(self) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, 3) float32, colours (N, 3) uint8) that the current controls select."""
        head = self.head.value
        conf = self.scene.conf[head]
        cutoffs = confidence_cutoffs(conf, self.percentile.value, self.view_percentiles)
        budget = None if self.full.value else int(self.budget.value)
        indices = select_points(conf, self.visible, cutoffs, budget)
        points = np.concatenate([p[k] for p, k in zip(self.scene.points[head], indices)]).astype(np.float32)
        return points, point_colors(self.color.value, self.scene.rgb, conf, indices, self.conf_range[head])

    def refresh(self) -> None:
        """Redraws the point cloud from the current controls."""
        with self._lock:
            start = time.perf_counter()
            points, colors = self.shown()
            self.cloud = self.server.scene.add_point_cloud("/points", points, colors,
                                                           point_size=float(self.point_size.value))
            self.status.content = (f"{len(points):,} points of {sum(len(c) for c in self.scene.rgb):,} "
                                   f"({int(self.visible.sum())}/{len(self.visible)} views shown, "
                                   f"{time.perf_counter() - start:.2f} s)")

    def write_shown(self, path: str | pathlib.Path) -> None:
        """Writes the points on screen to `path`: PLY (.ply) or a GLB with the shown views' cameras (.glb)."""
        points, colors = self.shown()
        path = pathlib.Path(path)
        if path.suffix == ".ply":
            export.write_ply(path, points, colors)
        else:
            cams = np.flatnonzero(self.visible) if self.scene.per_view else np.arange(len(self.scene.names))
            if not len(cams):
                cams = np.arange(len(self.scene.names))
            s = self.scene
            export.write_glb(path, points, colors, s.c2w[cams], s.intrinsics[cams], s.image_sizes[cams])

    def _download(self, client, suffix: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / f"points{suffix}"
            self.write_shown(path)
            client.send_file_download(path.name, path.read_bytes(), save_immediately=True)

    def stop(self) -> None:
        self.server.stop()
