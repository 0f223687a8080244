"""Procedural multi-view scenes with exact ground truth, rendered by numpy ray casting.

Each scene is a closed, textured room (floor, four walls, ceiling) holding a few
textured boxes, spheres and cylinders. Cameras orbit the objects on a smooth,
jittered path, looking at them with a small roll, so consecutive views overlap and
show real parallax. Everything is drawn from `(seed, split, index)`, so any sample
can be regenerated on its own. Shading is Lambertian under one point light without
shadows: a surface point has the same colour in every view.

World frame: z up, the floor at z = 0. Cameras follow the sample format (OpenCV).
"""

from __future__ import annotations

import colorsys
import dataclasses
import numbers
import operator
import os
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import PIL.Image

from fast3r_jax.data import geometry_np
from fast3r_jax.io import export

DATASET_NAME = "synthetic"
CAMERAS_FILE = "cameras.json"

NOISE_GRID = 32  # value-noise lattice size; the noise repeats every 32 lattice cells
SOLID_KINDS = ("box", "sphere", "cylinder")
MAX_SOLIDS = 5  # random_scene draws 2-5 solids
AMBIENT = 0.3
HOLE_RGB = np.array([0.55, 0.7, 0.9])  # colour of pixels that look through a window
EPS = 1e-9  # smallest positive ray hit distance

Lookup = Callable[[Any, Any], Any]  # (iy, ix) integer arrays -> values of a (G, G) noise lattice


# ----------------------------------------------------------------------------
# Textures.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Texture:
    """A procedural surface colour as a function of 2-D surface coordinates (metres)."""

    pattern: str  # one of PATTERNS: the main two-colour pattern
    palette: np.ndarray  # (3, 3) RGB in [0, 1]: the pattern's two colours, then a blotch colour
    frequency: float  # cycles of the main pattern per metre
    angle: float  # orientation of the main pattern on the surface (radians)
    noise: np.ndarray  # (G, G) value-noise lattice in [0, 1]


def _random_palette(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) RGB: a dark and a bright colour of different hues (contrast), and a free one."""
    hue = rng.uniform()
    dark = colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 0.9), rng.uniform(0.15, 0.5))
    bright = colorsys.hsv_to_rgb((hue + rng.uniform(0.15, 0.85)) % 1, rng.uniform(0.2, 0.9), rng.uniform(0.65, 1))
    free = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.4, 1), rng.uniform(0.3, 1))
    pair = [dark, bright] if rng.uniform() < 0.5 else [bright, dark]
    return np.array(pair + [free])


def random_texture(rng: np.random.Generator) -> Texture:
    """Draws a texture: a random pattern, palette, scale and orientation, and its own noise."""
    return Texture(
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        palette=_random_palette(rng),
        frequency=float(rng.uniform(1.0, 4.0)),
        angle=float(rng.uniform(0, np.pi)),
        noise=rng.uniform(size=(NOISE_GRID, NOISE_GRID)),
    )


def value_noise(xp: Any, lookup: Lookup, uv: Any) -> Any:
    """Smoothly interpolated lattice noise in [0, 1] at (M, 2) coordinates in lattice cells, (M,).

    `xp` is numpy or jax.numpy; `lookup(iy, ix)` reads the (G, G) lattice at (M,) integer indices.
    """
    cell = xp.floor(uv)
    f = uv - cell
    f = f * f * (3 - 2 * f)  # smoothstep: C1 across cell borders
    i0 = cell.astype(xp.int32) % NOISE_GRID  # (M, 2)
    i1 = (i0 + 1) % NOISE_GRID
    fx, fy = f[:, 0], f[:, 1]
    top = lookup(i0[:, 1], i0[:, 0]) * (1 - fx) + lookup(i0[:, 1], i1[:, 0]) * fx
    bottom = lookup(i1[:, 1], i0[:, 0]) * (1 - fx) + lookup(i1[:, 1], i1[:, 0]) * fx
    return top * (1 - fy) + bottom * fy


def _fbm(xp: Any, lookup: Lookup, uv: Any, octaves: int = 3) -> Any:
    """Fractal noise: octaves of value noise at doubling frequency, contrast-stretched to [0, 1], (M,)."""
    weights = 0.5 ** np.arange(octaves)
    total = sum(w * value_noise(xp, lookup, uv * 2**k + 7.3 * k) for k, w in enumerate(weights))
    return xp.clip((total / weights.sum() - 0.5) * 2.5 + 0.5, 0, 1)


def pattern_coords(xp: Any, uv: Any, angle: Any, frequency: Any) -> Any:
    """(M, 2) surface coords (metres) rotated by `angle` and scaled to pattern cycles (scalars or (M,))."""
    c, s = xp.cos(angle), xp.sin(angle)
    u, v = uv[:, 0], uv[:, 1]
    return xp.stack([u * c + v * s, v * c - u * s], axis=-1) * xp.asarray(frequency)[..., None]


# The main two-colour pattern: mix in [0, 1] between the first two palette colours at (M, 2) pattern coords.
PATTERN_MIX: dict[str, Callable[[Any, Any, Lookup], Any]] = {
    "checkers": lambda xp, uv, lookup: (xp.floor(uv[:, 0]) + xp.floor(uv[:, 1])) % 2,
    "stripes": lambda xp, uv, lookup: (xp.floor(2 * uv[:, 0]) % 2) * 0.8 + (xp.floor(uv[:, 1]) % 2) * 0.2,
    "noise": lambda xp, uv, lookup: _fbm(xp, lookup, uv),
    "gradient": lambda xp, uv, lookup: 0.5 + 0.5 * xp.sin(2 * np.pi * uv[:, 0] + 1.5 * xp.sin(np.pi * uv[:, 1])),
}
PATTERNS = tuple(PATTERN_MIX)


def palette_colour(xp: Any, palette: Any, mix: Any, uv: Any, lookup: Lookup) -> Any:
    """RGB in [0, 1], (M, 3): the pattern `mix` (M,) between palette colours 0 and 1, low-frequency
    blotches of colour 2 and fine grain, at (M, 2) surface coords; palette (3, 3) or (M, 3, 3)."""
    rgb = palette[..., 0, :] + mix[:, None] * (palette[..., 1, :] - palette[..., 0, :])  # (M, 3)
    blotch = 0.6 * _fbm(xp, lookup, uv * 0.8 + 11.0)[:, None]  # (M, 1)
    rgb = rgb + blotch * (palette[..., 2, :] - rgb)
    grain = 0.85 + 0.3 * value_noise(xp, lookup, uv * 6.0 + 3.0)[:, None]  # (M, 1)
    return xp.clip(rgb * grain, 0, 1)


def texture_colour(texture: Texture, uv: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of `texture` at (M, 2) surface coordinates in metres, (M, 3).

    The main pattern mixes the first two palette colours; low-frequency blotches of the
    third colour and fine grain make every location distinctive, even on checkers.
    """
    if texture.pattern not in PATTERN_MIX:
        raise ValueError(f"unknown texture pattern {texture.pattern!r}; expected one of {PATTERNS}")

    def lookup(iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        return texture.noise[iy, ix]

    mix = PATTERN_MIX[texture.pattern](np, pattern_coords(np, uv, texture.angle, texture.frequency), lookup)
    return palette_colour(np, texture.palette, mix, uv, lookup)


def lit(xp: Any, rgb: Any, normals: Any, points: Any, light: Any) -> Any:
    """(M, 3) surface colours under ambient light plus the Lambertian point `light` (3,), no shadows."""
    to_light = light - points
    to_light = to_light / xp.linalg.norm(to_light, axis=1, keepdims=True)
    lambert = xp.clip(xp.sum(normals * to_light, axis=1), 0, 1)
    return rgb * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]


# ----------------------------------------------------------------------------
# Scenes.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Solid:
    """A textured box, sphere or cylinder; points map to local coords as (p - center) @ rotation."""

    kind: str  # one of SOLID_KINDS
    center: np.ndarray  # (3,) world position
    rotation: np.ndarray  # (3, 3) local-to-world rotation
    half_size: np.ndarray  # (3,) box half extents; sphere (r, r, r); cylinder (r, r, half height) along local z
    texture: Texture


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """A closed room [room_min, room_max] with solids inside, lit by a point light.

    Room faces are numbered 2 * axis + (1 on the max side): 0/1 the x walls, 2/3 the
    y walls, 4 the floor and 5 the ceiling. A face's surface coordinates are the two
    world coordinates along it, in increasing axis order.
    """

    room_min: np.ndarray  # (3,)
    room_max: np.ndarray  # (3,)
    room_textures: tuple[Texture, ...]  # 6, one per room face
    windows: np.ndarray  # (6, 4) per face, [u0, u1, v0, v1] of a hole in surface coords; empty = none
    solids: tuple[Solid, ...]
    light: np.ndarray  # (3,) point light position
    focus: np.ndarray  # (3,) point the cameras circle around


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3-D rotation (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _random_solid(rng: np.random.Generator, focus_xy: np.ndarray) -> Solid:
    """A solid within 1.7 m (horizontally) of focus_xy, on the floor or floating a little."""
    kind = SOLID_KINDS[rng.integers(len(SOLID_KINDS))]
    angle, dist = rng.uniform(0, 2 * np.pi), 1.1 * np.sqrt(rng.uniform())
    xy = focus_xy + dist * np.array([np.cos(angle), np.sin(angle)])
    lift = rng.uniform(0.2, 0.8) if rng.uniform() < 0.25 else 0.0
    if kind == "box":
        half = rng.uniform([0.15, 0.15, 0.15], [0.4, 0.4, 0.6])
        rotation = _rotation_z(rng.uniform(0, 2 * np.pi))
    elif kind == "sphere":
        half = np.full(3, rng.uniform(0.2, 0.5))
        rotation = _random_rotation(rng)
    else:
        half = np.array([1, 1, 0]) * rng.uniform(0.15, 0.4) + np.array([0, 0, rng.uniform(0.2, 0.7)])
        rotation = _rotation_z(rng.uniform(0, 2 * np.pi))
    center = np.array([xy[0], xy[1], half[2] + lift])
    return Solid(kind, center, rotation, half, random_texture(rng))


def _windows(rng: np.random.Generator, room_min: np.ndarray, room_max: np.ndarray, hole_fraction: float) -> np.ndarray:
    """(6, 4) window rectangles: one per wall covering `hole_fraction` of it, none on floor/ceiling.

    Positions are drawn whatever the fraction, so the rest of the scene does not depend on it.
    """
    windows = np.zeros((6, 4))
    for face in range(4):
        axes = [a for a in range(3) if a != face // 2]
        lo, hi = room_min[axes], room_max[axes]  # (2,) extents of the wall in (u, v)
        size = (hi - lo) * np.sqrt(hole_fraction)
        start = lo + rng.uniform(size=2) * (hi - lo - size)
        windows[face] = [start[0], start[0] + size[0], start[1], start[1] + size[1]]
    return windows


def random_scene(rng: np.random.Generator, hole_fraction: float = 0.0) -> Scene:
    """Draws a room 6-9 m wide and 2.6-3.4 m high with 2-5 solids near its middle."""
    half = rng.uniform(3.0, 4.5, size=2)
    room_min = np.array([-half[0], -half[1], 0.0])
    room_max = np.array([half[0], half[1], rng.uniform(2.6, 3.4)])
    room_textures = tuple(random_texture(rng) for _ in range(6))
    focus_xy = rng.uniform(-0.3, 0.3, size=2)
    solids = tuple(_random_solid(rng, focus_xy) for _ in range(rng.integers(2, MAX_SOLIDS + 1)))
    focus = np.array([focus_xy[0], focus_xy[1], rng.uniform(0.4, 0.9)])
    light = np.array([*(rng.uniform(-0.5, 0.5, size=2) * half), room_max[2] * rng.uniform(0.6, 0.9)])
    windows = _windows(rng, room_min, room_max, hole_fraction)
    return Scene(room_min, room_max, room_textures, windows, solids, light, focus)


# ----------------------------------------------------------------------------
# Cameras.
# ----------------------------------------------------------------------------


def look_at(
    eye: np.ndarray, target: np.ndarray, roll: float = 0.0, up: tuple[float, float, float] = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world pose at `eye` looking at `target`, rolled about its axis.

    With roll 0 the image x axis is horizontal and image y points down the world `up`.
    """
    forward = np.asarray(target, np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    norm = np.linalg.norm(right)
    if norm < 1e-6:
        raise ValueError(f"viewing direction {forward.tolist()} is parallel to up {list(up)}")
    right /= norm
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([c * right + s * down, c * down - s * right, forward], axis=1)
    c2w[:3, 3] = eye
    return c2w


def intrinsics(focal: float, resolution: tuple[int, int]) -> np.ndarray:
    """(3, 3) pinhole K with square pixels and the principal point at the centre (W / 2, H / 2)."""
    width, height = resolution
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])


def random_trajectory(
    rng: np.random.Generator,
    scene: Scene,
    num_views: int,
    resolution: tuple[int, int],
    focal_range: tuple[float, float],
    span: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cameras on a jittered orbit around `scene.focus`, 6-16 degrees apart.

    Radii keep the cameras at least 2 m (horizontally) from the focus, outside every
    solid, and 0.3 m inside the walls; heights stay 0.75 m away from floor and ceiling.
    span: how far along the path the views reach, in those steps (None: num_views - 1, one
    step between consecutive views); the views are spread evenly over it, so a fixed span
    samples the same path more densely as num_views grows.

    Returns:
        K: (V, 3, 3) float32 with focal = U(focal_range) * W per view.
        c2w: (V, 4, 4) float32.
    """
    i = np.linspace(0.0, num_views - 1 if span is None else span, num_views)
    wall_gap = np.min(np.minimum(scene.focus[:2] - scene.room_min[:2], scene.room_max[:2] - scene.focus[:2]))
    r_max = min(wall_gap - 0.3, 3.6) - 0.1
    radius = rng.uniform(2.1, r_max) + 0.1 * np.sin(0.7 * i + rng.uniform(0, 2 * np.pi))
    theta = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(0.1, 0.28) * i
    height = rng.uniform(0.9, scene.room_max[2] - 0.9) + 0.15 * np.sin(0.5 * i + rng.uniform(0, 2 * np.pi))
    eyes = np.stack([scene.focus[0] + radius * np.cos(theta), scene.focus[1] + radius * np.sin(theta), height], -1)
    wobble = np.sin(np.outer(i, rng.uniform(0.3, 0.8, 3)) + rng.uniform(0, 2 * np.pi, 3))  # (V, 3)
    targets = scene.focus + rng.uniform(-0.5, 0.5, 3) * [1, 1, 0.5] + 0.25 * wobble
    rolls = np.clip(rng.normal(0, 0.05, num_views), -0.12, 0.12)
    focals = rng.uniform(*focal_range, size=num_views) * resolution[0]
    K = np.stack([intrinsics(f, resolution) for f in focals])
    c2w = np.stack([look_at(e, t, r) for e, t, r in zip(eyes, targets, rolls)])
    return K.astype(np.float32), c2w.astype(np.float32)


# ----------------------------------------------------------------------------
# Ray casting.
# ----------------------------------------------------------------------------


class RenderedView(NamedTuple):
    img: np.ndarray  # (H, W, 3) uint8
    depthmap: np.ndarray  # (H, W) float32 z-depth, 0 in holes
    pts3d: np.ndarray  # (H, W, 3) float32 world hit points; the camera centre in holes
    valid_mask: np.ndarray  # (H, W) bool


def _intersect_room(scene: Scene, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance (M,) and face (M,) of rays starting inside the room."""
    bound = np.where(dirs > 0, scene.room_max, scene.room_min)  # (M, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axes = np.where(dirs != 0, (bound - origin) / dirs, np.inf)  # (M, 3)
    axis = np.argmin(t_axes, axis=1)
    t = np.take_along_axis(t_axes, axis[:, None], axis=1)[:, 0]
    positive = np.take_along_axis(dirs, axis[:, None], axis=1)[:, 0] > 0
    return t, 2 * axis + positive


def _intersect_solid(solid: Solid, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Nearest positive hit distance (M,) of rays on a solid seen from outside; inf on a miss."""
    o = (origin - solid.center) @ solid.rotation  # (3,) ray origin in local coords
    d = dirs @ solid.rotation  # (M, 3)
    half = solid.half_size
    with np.errstate(divide="ignore", invalid="ignore"):
        if solid.kind == "box":  # slabs
            t1, t2 = (-half - o) / d, (half - o) / d
            t_near = np.minimum(t1, t2).max(axis=1)
            t_far = np.maximum(t1, t2).min(axis=1)
            return np.where((t_near <= t_far) & (t_near > EPS), t_near, np.inf)
        axes = slice(None) if solid.kind == "sphere" else slice(0, 2)  # cylinders: radial part only
        a = np.einsum("mi,mi->m", d[:, axes], d[:, axes])
        b = d[:, axes] @ o[axes]
        c = o[axes] @ o[axes] - half[0] ** 2
        t = (-b - np.sqrt(b * b - a * c)) / a  # NaN where the quadric is missed
        if solid.kind == "sphere":
            return np.where(t > EPS, t, np.inf)
        t_side = np.where((t > EPS) & (np.abs(o[2] + t * d[:, 2]) <= half[2]), t, np.inf)
        t_cap = (-np.sign(d[:, 2]) * half[2] - o[2]) / d[:, 2]  # the cap facing the ray
        cap_xy = o[:2] + t_cap[:, None] * d[:, :2]  # (M, 2)
        on_cap = (t_cap > EPS) & (np.einsum("mi,mi->m", cap_xy, cap_xy) <= half[0] ** 2)
        return np.minimum(t_side, np.where(on_cap, t_cap, np.inf))


def _room_surface(scene: Scene, points: np.ndarray, face: int) -> tuple[np.ndarray, np.ndarray]:
    """Inward normal (3,) and surface coords (M, 2) of points on one room face."""
    axis = face // 2
    normal = np.zeros(3)
    normal[axis] = -1.0 if face % 2 else 1.0
    return normal, np.delete(points, axis, axis=1)


def _solid_surface(solid: Solid, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward world normals (M, 3) and surface coords (M, 2) of points on a solid.

    Surface coords are local: planar per box face and cylinder cap (each face shifted to
    its own part of the noise), angle times radius (and height or latitude) on round parts.
    """
    p = (points - solid.center) @ solid.rotation  # (M, 3) local coords
    half = solid.half_size
    if solid.kind == "sphere":
        normal = p / half[0]
        uv = half[0] * np.stack([np.arctan2(p[:, 1], p[:, 0]), np.arcsin(np.clip(normal[:, 2], -1, 1))], -1)
        return normal @ solid.rotation.T, uv
    if solid.kind == "box":
        axis = np.argmax(np.abs(p) / half, axis=1)
    else:  # cylinder: cap where the hit is relatively further along z than out radially
        on_cap = np.abs(p[:, 2]) / half[2] > np.hypot(p[:, 0], p[:, 1]) / half[0]
        axis = np.where(on_cap, 2, 0)
    sign = np.sign(np.take_along_axis(p, axis[:, None], axis=1))  # (M, 1)
    normal = np.where(np.arange(3) == axis[:, None], sign, 0.0)  # (M, 3)
    others = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # (M, 2): the two in-face axes
    uv = np.take_along_axis(p, others, axis=1) + 5.0 * (2 * axis[:, None] + (sign > 0))
    if solid.kind == "cylinder":
        side = ~on_cap
        radial = p[side, :2] / half[0]
        normal[side] = np.concatenate([radial, np.zeros((radial.shape[0], 1))], axis=1)
        uv[side] = np.stack([half[0] * np.arctan2(p[side, 1], p[side, 0]), p[side, 2]], -1)
    return normal @ solid.rotation.T, uv


def _in_window(scene: Scene, points: np.ndarray, face: np.ndarray) -> np.ndarray:
    """(M,) bool: room hits inside their face's window."""
    hole = np.zeros(points.shape[0], bool)
    for f in range(6):
        sel = face == f
        u0, u1, v0, v1 = scene.windows[f]
        uv = np.delete(points[sel], f // 2, axis=1)
        hole[sel] = (uv[:, 0] >= u0) & (uv[:, 0] < u1) & (uv[:, 1] >= v0) & (uv[:, 1] < v1)
    return hole


def _check_resolution(resolution: Any) -> tuple[int, int]:
    try:
        width, height = (operator.index(s) for s in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be two integers (W, H), got {resolution!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"resolution (W, H) must be positive, got {(width, height)}")
    return width, height


def render_view(scene: Scene, K: np.ndarray, c2w: np.ndarray, resolution: tuple[int, int]) -> RenderedView:
    """Ray casts one pinhole view of `scene` (computed in float64).

    Args:
        scene: the scene; the camera centre must be inside the room and outside the solids.
        K: (3, 3) pinhole intrinsics in pixels (pixel (x, y) at integer coordinates).
        c2w: (4, 4) OpenCV camera-to-world pose.
        resolution: (W, H).

    Returns:
        The image, z-depth, world hit points and validity (False only in windows).
    """
    width, height = _check_resolution(resolution)
    geometry_np.check_pose(c2w)
    c2w = np.asarray(c2w, np.float64)
    origin = c2w[:3, 3]
    if np.any(origin <= scene.room_min) or np.any(origin >= scene.room_max):
        raise ValueError(f"camera centre {origin.tolist()} is outside the room")
    rays = geometry_np.camera_rays(K, height, width).reshape(-1, 3)  # (M, 3), unit z in the camera
    dirs = rays @ c2w[:3, :3].T  # (M, 3) world; a ray parameter is a z-depth
    depth, surface = _intersect_room(scene, origin, dirs)  # surface: room face 0-5, solid i is 6 + i
    for i, solid in enumerate(scene.solids):
        t = _intersect_solid(solid, origin, dirs)
        closer = t < depth
        depth = np.where(closer, t, depth)
        surface = np.where(closer, 6 + i, surface)
    points = origin + depth[:, None] * dirs  # (M, 3)

    rgb = np.empty_like(points)
    normals = np.empty_like(points)
    for s in np.unique(surface):
        sel = surface == s
        if s < 6:
            normals[sel], uv = _room_surface(scene, points[sel], s)
            texture = scene.room_textures[s]
        else:
            normals[sel], uv = _solid_surface(scene.solids[s - 6], points[sel])
            texture = scene.solids[s - 6].texture
        rgb[sel] = texture_colour(texture, uv)
    rgb = lit(np, rgb, normals, points, scene.light)

    room = surface < 6
    hole = np.zeros_like(room)
    hole[room] = _in_window(scene, points[room], surface[room])
    rgb[hole] = HOLE_RGB
    depth[hole] = 0.0
    points[hole] = origin
    img = np.round(rgb * 255).astype(np.uint8).reshape(height, width, 3)
    return RenderedView(
        img=img,
        depthmap=depth.astype(np.float32).reshape(height, width),
        pts3d=points.astype(np.float32).reshape(height, width, 3),
        valid_mask=~hole.reshape(height, width),
    )


# ----------------------------------------------------------------------------
# Dataset.
# ----------------------------------------------------------------------------


class SyntheticScenes:
    """Random-access dataset of procedural scenes; item i is a list of `num_views` view dicts.

    Sample i depends only on (seed, split, i, hole_fraction, num_views, resolution,
    focal_range, span, span_fraction); different splits draw from disjoint random streams.
    """

    def __init__(
        self,
        num_scenes: int,
        num_views: int,
        resolution: tuple[int, int] = (64, 48),
        seed: int = 0,
        focal_range: tuple[float, float] = (0.8, 1.2),
        split: str = "train",
        hole_fraction: float = 0.0,
        span: float | None = None,
        span_fraction: tuple[float, float] = (1.0, 1.0),
    ):
        """
        Args:
            num_scenes: dataset length.
            num_views: views per scene.
            resolution: (W, H); portrait (H > W) allowed.
            seed: base seed.
            focal_range: (low, high) focal length as a fraction of W, drawn per view.
            split: split name, mixed into the seed (e.g. "train", "val", "test").
            hole_fraction: fraction of each wall that is a window onto nothing (invalid pixels).
            span: how far along its camera path a scene's views reach, in steps of 6-16 degrees
                (`random_trajectory`; None: num_views - 1). With a fixed span, scene i has the
                same room and camera path at every num_views, sampled more densely.
            span_fraction: (low, high): scene i's span is (num_views - 1) times a fraction drawn
                log-uniformly from this range, from a stream of its own (so the room and path are those
                of the default); below 1, views closer together than one step. Not with `span`.
        """
        for name, value in (("num_scenes", num_scenes), ("num_views", num_views)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        try:
            low, high = (float(f) for f in focal_range)
        except (TypeError, ValueError):
            low = high = np.nan
        if not 0 < low <= high < np.inf:
            raise ValueError(f"focal_range must be (low, high) with 0 < low <= high, got {focal_range!r}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string, got {split!r}")
        if not isinstance(hole_fraction, numbers.Real) or not 0 <= hole_fraction < 1:
            raise ValueError(f"hole_fraction must be a number in [0, 1), got {hole_fraction!r}")
        if span is not None and (isinstance(span, bool) or not isinstance(span, numbers.Real)
                                 or not 0 <= span < np.inf):
            raise ValueError(f"span must be None or a number >= 0, got {span!r}")
        try:
            fraction = tuple(float(f) for f in span_fraction)
        except (TypeError, ValueError):
            fraction = (np.nan,)
        if len(fraction) != 2 or not 0 < fraction[0] <= fraction[1] < np.inf:
            raise ValueError(f"span_fraction must be (low, high) with 0 < low <= high, got {span_fraction!r}")
        if span is not None and fraction != (1.0, 1.0):
            raise ValueError(f"give span ({span}) or span_fraction ({span_fraction}), not both")
        self.num_scenes = int(num_scenes)
        self.num_views = int(num_views)
        self.resolution = _check_resolution(resolution)
        self.seed = int(seed)
        self.focal_range = (low, high)
        self.split = split
        self.hole_fraction = float(hole_fraction)
        self.span = None if span is None else float(span)
        self.span_fraction = fraction

    def __len__(self) -> int:
        return self.num_scenes

    def scene(self, index: int) -> tuple[Scene, np.ndarray, np.ndarray]:
        """Scene `index` and its cameras: (scene, K (V, 3, 3) float32, c2w (V, 4, 4) float32)."""
        index = operator.index(index)
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"scene index {index} out of range for {self.num_scenes} scenes")
        stream = [self.seed, zlib.crc32(self.split.encode()), index]
        rng = np.random.default_rng(stream)
        scene = random_scene(rng, self.hole_fraction)
        span = self.span
        if self.span_fraction != (1.0, 1.0):
            log_fraction = np.random.default_rng(stream + [1]).uniform(*np.log(self.span_fraction))
            span = float(np.exp(log_fraction)) * (self.num_views - 1)
        K, c2w = random_trajectory(rng, scene, self.num_views, self.resolution, self.focal_range, span)
        return scene, K, c2w

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        scene, K, c2w = self.scene(index)
        width, height = self.resolution
        views = []
        for v in range(self.num_views):
            rendered = render_view(scene, K[v], c2w[v], self.resolution)
            views.append(
                dict(
                    rendered._asdict(),
                    camera_intrinsics=K[v],
                    camera_pose=c2w[v],
                    true_shape=np.array([height, width], np.int32),
                    dataset=DATASET_NAME,
                    label=f"{self.split}/{index:06d}",
                    instance=str(v),
                )
            )
        return views


# ----------------------------------------------------------------------------
# Example folder for the reconstruction demo.
# ----------------------------------------------------------------------------


def write_example_scene(
    folder: str | os.PathLike,
    num_views: int = 8,
    resolution: tuple[int, int] = (512, 384),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Renders one scene (split "example") into `folder` as view_000.png, ... and cameras.json.

    cameras.json is the file `fast3r-jax reconstruct` writes (io.export.write_cameras_json), here with the
    ground-truth intrinsics (pixels) and OpenCV camera-to-world poses (metres), in view order; it serves as the
    ground truth of the pose errors and as known intrinsics (`--intrinsics`).

    Returns:
        The rendered views (sample format), e.g. to compare a reconstruction with depth.
    """
    views = SyntheticScenes(1, num_views, resolution, seed=seed, split="example")[0]
    os.makedirs(folder, exist_ok=True)
    names = [f"view_{int(view['instance']):03d}.png" for view in views]
    for name, view in zip(names, views):
        PIL.Image.fromarray(view["img"]).save(os.path.join(folder, name))
    export.write_cameras_json(os.path.join(folder, CAMERAS_FILE), np.stack([v["camera_pose"] for v in views]),
                              np.stack([v["camera_intrinsics"] for v in views]), [resolution] * len(views), names)
    return views


def read_example_cameras(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads `folder`/cameras.json: per image {"file": path in folder, "K": (3, 3) f32, "c2w": (4, 4) f32}."""
    path = os.path.join(folder, CAMERAS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CAMERAS_FILE} in {folder}")
    cameras = export.read_cameras_json(path)
    if not cameras:
        raise ValueError(f"{path} lists no cameras")
    return [dict(file=os.path.join(folder, c["name"]), K=c["intrinsics"].astype(np.float32),
                 c2w=c["c2w"].astype(np.float32)) for c in cameras]
