"""The synthetic scenes (fast3r_jax.data.synthetic) ray cast in JAX, for rendering training data on the accelerator.

`pack_scenes` turns numpy `Scene`s into fixed-size arrays (`SceneArrays`: solids padded to MAX_SOLIDS with a
validity mask, one texture row per surface: 6 room faces, then the solids), so `render` jit-compiles once per
resolution and vmaps over scenes and views. It computes the same ground truth as `synthetic.render_view`, in
float32: the texture and shading formulas are synthetic.py's own (written for numpy or jax.numpy), the
intersections are vectorised over the solids (the nearest hit wins, earlier surfaces on ties, as there).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fast3r_jax.data.synthetic import (
    EPS,
    HOLE_RGB,
    MAX_SOLIDS,
    PATTERN_MIX,
    PATTERNS,
    SOLID_KINDS,
    RenderedView,
    Scene,
    lit,
    palette_colour,
    pattern_coords,
)

_BOX, _SPHERE, _CYLINDER = (SOLID_KINDS.index(k) for k in ("box", "sphere", "cylinder"))
_OTHER_AXES = np.array([[1, 2], [0, 2], [0, 1]])  # the two in-face axes of a face normal to each axis


class SceneArrays(NamedTuple):
    """A scene as arrays (float32, int32, bool); a leading batch axis when packed from several scenes."""

    room_min: np.ndarray  # (3,)
    room_max: np.ndarray  # (3,)
    light: np.ndarray  # (3,)
    windows: np.ndarray  # (6, 4) per room face [u0, u1, v0, v1]
    solid_valid: np.ndarray  # (S,) bool: False for padding
    solid_kind: np.ndarray  # (S,) int32 index into SOLID_KINDS
    solid_center: np.ndarray  # (S, 3)
    solid_rotation: np.ndarray  # (S, 3, 3) local-to-world
    solid_half: np.ndarray  # (S, 3)
    pattern: np.ndarray  # (6 + S,) int32 index into PATTERNS, per surface (room faces, then solids)
    palette: np.ndarray  # (6 + S, 3, 3)
    frequency: np.ndarray  # (6 + S,)
    angle: np.ndarray  # (6 + S,)
    noise: np.ndarray  # (6 + S, G, G)


def pack_scene(scene: Scene, max_solids: int = MAX_SOLIDS) -> SceneArrays:
    """One scene as fixed-size arrays, its solids padded to `max_solids` (padding: invalid unit boxes)."""
    if len(scene.solids) > max_solids:
        raise ValueError(f"scene has {len(scene.solids)} solids, more than max_solids={max_solids}")
    pad = max_solids - len(scene.solids)
    textures = [*scene.room_textures, *(s.texture for s in scene.solids)]
    textures += [scene.room_textures[0]] * pad

    def solids(field: str, fill: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(getattr(s, field), np.float32) for s in scene.solids] + [fill] * pad)

    return SceneArrays(
        room_min=np.asarray(scene.room_min, np.float32),
        room_max=np.asarray(scene.room_max, np.float32),
        light=np.asarray(scene.light, np.float32),
        windows=np.asarray(scene.windows, np.float32),
        solid_valid=np.arange(max_solids) < len(scene.solids),
        solid_kind=np.array([SOLID_KINDS.index(s.kind) for s in scene.solids] + [_BOX] * pad, np.int32),
        solid_center=solids("center", np.zeros(3, np.float32)),
        solid_rotation=solids("rotation", np.eye(3, dtype=np.float32)),
        solid_half=solids("half_size", np.ones(3, np.float32)),
        pattern=np.array([PATTERNS.index(t.pattern) for t in textures], np.int32),
        palette=np.stack([t.palette for t in textures]).astype(np.float32),
        frequency=np.array([t.frequency for t in textures], np.float32),
        angle=np.array([t.angle for t in textures], np.float32),
        noise=np.stack([t.noise for t in textures]).astype(np.float32),
    )


def pack_scenes(scenes: Sequence[Scene], max_solids: int = MAX_SOLIDS) -> SceneArrays:
    """Scenes stacked along a leading batch axis."""
    packed = [pack_scene(s, max_solids) for s in scenes]
    return SceneArrays(*(np.stack(fields) for fields in zip(*packed)))


def _hit_solids(scene: SceneArrays, origin: jax.Array, dirs: jax.Array) -> jax.Array:
    """(S, M) nearest positive hit distance of each solid seen from outside; inf on a miss or for padding."""
    o = jnp.einsum("si,sij->sj", origin - scene.solid_center, scene.solid_rotation)  # (S, 3) local origins
    d = jnp.einsum("mi,sij->smj", dirs, scene.solid_rotation)  # (S, M, 3) local directions
    o3, half = o[:, None, :], scene.solid_half[:, None, :]  # (S, 1, 3)
    # Boxes: slabs.
    t1, t2 = (-half - o3) / d, (half - o3) / d
    t_near, t_far = jnp.minimum(t1, t2).max(axis=-1), jnp.maximum(t1, t2).min(axis=-1)
    t_box = jnp.where((t_near <= t_far) & (t_near > EPS), t_near, jnp.inf)
    # Spheres and cylinders: the quadric (the radial part only for cylinders).
    radial = jnp.where(scene.solid_kind[:, None] == _SPHERE, 1.0, jnp.array([1.0, 1.0, 0.0]))[:, None, :]
    a = jnp.sum(d * d * radial, axis=-1)
    b = jnp.sum(d * o3 * radial, axis=-1)
    c = jnp.sum(o3 * o3 * radial, axis=-1) - half[..., 0] ** 2
    t = (-b - jnp.sqrt(b * b - a * c)) / a  # NaN where the quadric is missed
    t_sphere = jnp.where(t > EPS, t, jnp.inf)
    dz, oz, hz = d[..., 2], o3[..., 2], half[..., 2]
    t_side = jnp.where((t > EPS) & (jnp.abs(oz + t * dz) <= hz), t, jnp.inf)
    t_cap = (-jnp.sign(dz) * hz - oz) / dz  # the cap facing the ray
    cap_xy = o3[..., :2] + t_cap[..., None] * d[..., :2]  # (S, M, 2)
    on_cap = (t_cap > EPS) & (jnp.sum(cap_xy * cap_xy, axis=-1) <= half[..., 0] ** 2)
    t_cylinder = jnp.minimum(t_side, jnp.where(on_cap, t_cap, jnp.inf))
    kind = scene.solid_kind[:, None]
    hit = jnp.where(kind == _BOX, t_box, jnp.where(kind == _SPHERE, t_sphere, t_cylinder))
    return jnp.where(scene.solid_valid[:, None], hit, jnp.inf)


def _solid_surface(scene: SceneArrays, index: jax.Array, points: jax.Array) -> tuple[jax.Array, jax.Array]:
    """World normals (M, 3) and surface coords (M, 2) of points on solid `index` (M,), as synthetic.py's."""
    rotation = scene.solid_rotation[index]  # (M, 3, 3)
    half = scene.solid_half[index]  # (M, 3)
    kind = scene.solid_kind[index][:, None]  # (M, 1)
    p = jnp.einsum("mi,mij->mj", points - scene.solid_center[index], rotation)  # (M, 3) local coords
    # Spheres.
    sphere_normal = p / half[:, :1]
    sphere_uv = half[:, :1] * jnp.stack(
        [jnp.arctan2(p[:, 1], p[:, 0]), jnp.arcsin(jnp.clip(sphere_normal[:, 2], -1, 1))], -1)
    # Box faces and cylinder caps: planar, each face in its own part of the noise.
    on_cap = jnp.abs(p[:, 2]) / half[:, 2] > jnp.hypot(p[:, 0], p[:, 1]) / half[:, 0]
    axis = jnp.where(kind[:, 0] == _BOX, jnp.argmax(jnp.abs(p) / half, axis=1), jnp.where(on_cap, 2, 0))
    sign = jnp.sign(jnp.take_along_axis(p, axis[:, None], axis=1))  # (M, 1)
    flat_normal = jnp.where(jnp.arange(3) == axis[:, None], sign, 0.0)
    flat_uv = jnp.take_along_axis(p, jnp.asarray(_OTHER_AXES)[axis], axis=1) + 5.0 * (2 * axis[:, None] + (sign > 0))
    # Cylinder sides.
    side = (kind == _CYLINDER) & ~on_cap[:, None]
    side_normal = jnp.concatenate([p[:, :2] / half[:, :1], jnp.zeros_like(p[:, :1])], axis=1)
    side_uv = jnp.stack([half[:, 0] * jnp.arctan2(p[:, 1], p[:, 0]), p[:, 2]], -1)
    normal = jnp.where(kind == _SPHERE, sphere_normal, jnp.where(side, side_normal, flat_normal))
    uv = jnp.where(kind == _SPHERE, sphere_uv, jnp.where(side, side_uv, flat_uv))
    return jnp.einsum("mij,mj->mi", rotation, normal), uv


def _surface_colour(scene: SceneArrays, surface: jax.Array, uv: jax.Array) -> jax.Array:
    """(M, 3) texture colour of surface `surface` (M,) at (M, 2) surface coords (every pattern, then selected)."""

    def lookup(iy: jax.Array, ix: jax.Array) -> jax.Array:
        return scene.noise[surface, iy, ix]

    pattern_uv = pattern_coords(jnp, uv, scene.angle[surface], scene.frequency[surface])
    pattern = scene.pattern[surface]
    mix = jnp.select([pattern == k for k in range(len(PATTERNS))],
                     [PATTERN_MIX[name](jnp, pattern_uv, lookup) for name in PATTERNS])
    return palette_colour(jnp, scene.palette[surface], mix, uv, lookup)


def render(scene: SceneArrays, K: jax.Array, c2w: jax.Array, resolution: tuple[int, int]) -> RenderedView:
    """Ray casts one pinhole view of a packed scene (float32); jit with `resolution` static, vmap over the rest.

    Args:
        scene: one packed scene (no batch axis); the camera centre inside the room and outside the solids.
        K: (3, 3) pinhole intrinsics in pixels (pixel (x, y) at integer coordinates).
        c2w: (4, 4) OpenCV camera-to-world pose.
        resolution: (W, H).

    Returns:
        img (H, W, 3) uint8, depthmap (H, W) z-depth (0 in windows), pts3d (H, W, 3) world points (the camera
        centre in windows), valid_mask (H, W) (False only in windows): synthetic.render_view's ground truth.
    """
    width, height = resolution
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                          indexing="ij")
    rays = jnp.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], jnp.ones_like(xs)], -1).reshape(-1, 3)
    origin = c2w[:3, 3]
    dirs = rays @ c2w[:3, :3].T  # (M, 3) world; a ray parameter is a z-depth

    # The room from inside: the face each ray leaves through.
    bound = jnp.where(dirs > 0, scene.room_max, scene.room_min)  # (M, 3)
    t_axes = jnp.where(dirs != 0, (bound - origin) / dirs, jnp.inf)
    axis = jnp.argmin(t_axes, axis=1)
    t_room = jnp.take_along_axis(t_axes, axis[:, None], axis=1)[:, 0]
    face = 2 * axis + (jnp.take_along_axis(dirs, axis[:, None], axis=1)[:, 0] > 0)
    hits = jnp.concatenate([t_room[None], _hit_solids(scene, origin, dirs)])  # (1 + S, M)
    nearest = jnp.argmin(hits, axis=0)  # 0: the room; ties keep the earlier surface
    depth = jnp.min(hits, axis=0)
    room = nearest == 0
    surface = jnp.where(room, face, 5 + nearest)  # room faces 0-5, solid i is 6 + i
    points = origin + depth[:, None] * dirs  # (M, 3)

    room_uv = jnp.take_along_axis(points, jnp.asarray(_OTHER_AXES)[axis], axis=1)  # (M, 2)
    room_normal = jnp.where(jnp.arange(3) == axis[:, None], jnp.where(face % 2 == 1, -1.0, 1.0)[:, None], 0.0)
    solid_normal, solid_uv = _solid_surface(scene, jnp.maximum(nearest - 1, 0), points)
    normals = jnp.where(room[:, None], room_normal, solid_normal)
    uv = jnp.where(room[:, None], room_uv, solid_uv)
    rgb = lit(jnp, _surface_colour(scene, surface, uv), normals, points, scene.light)

    u0, u1, v0, v1 = scene.windows[face].T  # (M,) each: the window of each ray's room face
    hole = room & (room_uv[:, 0] >= u0) & (room_uv[:, 0] < u1) & (room_uv[:, 1] >= v0) & (room_uv[:, 1] < v1)
    rgb = jnp.where(hole[:, None], jnp.asarray(HOLE_RGB, jnp.float32), rgb)
    depth = jnp.where(hole, 0.0, depth)
    points = jnp.where(hole[:, None], origin, points)
    return RenderedView(
        img=jnp.round(rgb * 255).astype(jnp.uint8).reshape(height, width, 3),
        depthmap=depth.reshape(height, width),
        pts3d=points.reshape(height, width, 3),
        valid_mask=~hole.reshape(height, width),
    )


def render_batch(scenes: SceneArrays, K: jax.Array, c2w: jax.Array, resolution: tuple[int, int]) -> RenderedView:
    """`render` over B scenes of V views each: K (B, V, 3, 3), c2w (B, V, 4, 4) -> fields (B, V, H, W, ...)."""
    per_view = jax.vmap(functools.partial(render, resolution=resolution), in_axes=(None, 0, 0))
    return jax.vmap(per_view)(scenes, K, c2w)
