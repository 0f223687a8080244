"""Reconstruction outputs, each read back with an independent reader.

Readers: plyfile (PLY), pycolmap (COLMAP text model), pygltflib (GLB), PIL (PNG), json; scipy for quaternions.
"""

import json
import math
import os

import numpy as np
import plyfile
import pycolmap
import pygltflib
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from fast3r_jax.io import export

WIDTH, HEIGHT = 32, 24
NUM_VIEWS = 8
# Box interior faces: (axis, side, colour). Wall -z is the one behind camera 0, which looks along +z.
BOX_HALF = np.array([2.0, 1.0, 2.0])
FACES = [(1, +1, (60, 160, 60)),    # floor (OpenCV y points down)
         (1, -1, (200, 200, 200)),  # ceiling
         (0, -1, (200, 60, 60)), (0, +1, (220, 120, 40)),
         (2, -1, (140, 40, 160)),   # near wall, behind camera 0
         (2, +1, (50, 90, 210))]    # far wall, in front of camera 0


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV c2w (4, 4) at `eye` looking at `target`, image y pointing down (world +y)."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    pose[:3, 3] = eye
    return pose


@pytest.fixture(scope="module")
def cameras():
    """8 cameras on a circle of radius 1 at mid height, looking at the box centre (camera 0 looks along +z)."""
    angles = 2 * np.pi * np.arange(NUM_VIEWS) / NUM_VIEWS
    eyes = np.stack([np.sin(angles), np.zeros(NUM_VIEWS), -np.cos(angles)], axis=1)  # (V, 3)
    c2w = np.stack([_look_at(e, np.zeros(3)) for e in eyes])  # (V, 4, 4)
    focal = 0.9 * WIDTH
    intrinsics = np.tile(np.array([[focal, 0, WIDTH / 2], [0, focal, HEIGHT / 2], [0, 0, 1]]), (NUM_VIEWS, 1, 1))
    sizes = np.tile([WIDTH, HEIGHT], (NUM_VIEWS, 1))
    return c2w, intrinsics, sizes


@pytest.fixture(scope="module")
def box_points():
    """Points on a regular grid on the inside faces of the box, one colour per face."""
    points, colors = [], []
    for axis, side, color in FACES:
        others = [a for a in range(3) if a != axis]
        u, v = np.meshgrid(*(np.linspace(-BOX_HALF[a], BOX_HALF[a], int(40 * BOX_HALF[a])) for a in others))
        face = np.zeros(u.shape + (3,))
        face[..., axis], face[..., others[0]], face[..., others[1]] = side * BOX_HALF[axis], u, v
        points.append(face.reshape(-1, 3))
        colors.append(np.tile(np.array(color, np.uint8), (u.size, 1)))
    return np.concatenate(points).astype(np.float32), np.concatenate(colors)


def _random_cloud(num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num, 3)).astype(np.float32), rng.integers(0, 256, (num, 3), dtype=np.uint8)


def _quaternion_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit Hamilton quaternion (w, x, y, z), as COLMAP's spec defines it."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


# ------------------------------------------------------------------------------------------- point selection


def test_confidence_mask_percentile_threshold_and_both():
    conf = [np.arange(12.0).reshape(3, 4), np.arange(12.0, 24.0).reshape(3, 4)]  # 0..23 over both views
    median = export.confidence_mask(conf, percentile=50)  # cut at 11.5
    assert not median[0].any() and median[1].all()
    above = export.confidence_mask(conf, threshold=20)  # strictly above
    np.testing.assert_array_equal(np.concatenate([m.ravel() for m in above]), np.arange(24) > 20)
    both = export.confidence_mask(conf, percentile=25, threshold=7)  # >= 5.75 and > 7
    np.testing.assert_array_equal(np.concatenate([m.ravel() for m in both]), np.arange(24) > 7)
    np.testing.assert_array_equal(export.confidence_mask(conf, percentile=0)[0], np.ones((3, 4), bool))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_confidence_mask_cuts_at_numpys_float64_percentile(dtype):
    # float32 maps are cut without a float64 copy; the cut and the masks must be numpy's all the same, ties included.
    rng = np.random.default_rng(0)
    for trial in range(50):
        conf = [(1 + rng.exponential(2.0, (int(rng.integers(1, 9)), 7))).astype(dtype) for _ in range(3)]
        conf[0][0] = np.round(conf[0][0], 1) if trial % 2 else conf[0][0, 0]
        conf[1][0, 0] = np.nan
        values = np.concatenate([c.ravel() for c in conf]).astype(np.float64)
        for percentile in (0.0, 10.0, 33.3, float(rng.uniform(0, 100)), 100.0):
            cut = np.nanpercentile(values, percentile)
            masks = export.confidence_mask(conf, percentile)
            for c, m in zip(conf, masks):
                np.testing.assert_array_equal(m, np.asarray(c, np.float64) >= cut)


def test_confidence_mask_ignores_non_finite_and_rejects_bad_arguments():
    conf = [np.array([[1.0, np.nan], [np.inf, 3.0]])]
    np.testing.assert_array_equal(export.confidence_mask(conf)[0], [[True, False], [False, True]])
    np.testing.assert_array_equal(export.confidence_mask(conf, percentile=100)[0], [[False, False], [False, True]])
    with pytest.raises(ValueError, match="percentile"):
        export.confidence_mask(conf, percentile=101)
    with pytest.raises(ValueError, match="empty"):
        export.confidence_mask([])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        export.confidence_mask([np.ones(3)])


def test_gather_points_keeps_masked_pixels_in_order():
    pts = [np.arange(24.0).reshape(2, 4, 3), np.arange(24.0, 42.0).reshape(2, 3, 3)]
    cols = [np.full((2, 4, 3), 1, np.uint8), np.full((2, 3, 3), 2, np.uint8)]
    masks = [np.array([[True, False, False, False], [False, False, False, True]]), np.ones((2, 3), bool)]
    points, colors = export.gather_points(pts, cols, masks)
    np.testing.assert_array_equal(points, np.concatenate([pts[0][0, 0:1], pts[0][1, 3:4], pts[1].reshape(-1, 3)]))
    np.testing.assert_array_equal(colors[:, 0], [1, 1] + [2] * 6)
    with pytest.raises(ValueError, match="one entry per view"):
        export.gather_points(pts, cols[:1])
    with pytest.raises(ValueError, match="uint8"):
        export.gather_points(pts, [c.astype(np.float32) for c in cols])


# ------------------------------------------------------------------------------------------------ PLY


def test_ply_round_trip_with_plyfile(tmp_path):
    points, colors = _random_cloud(1000)
    points[[3, 500]] = [np.nan, 0, 0], [0, np.inf, 0]
    path = tmp_path / "cloud.ply"
    assert export.write_ply(path, points, colors) == 2
    ply = plyfile.PlyData.read(str(path))
    assert ply.text is False and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [(p.name, p.val_dtype) for p in vertex.properties] == [
        ("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    keep = np.ones(1000, bool)
    keep[[3, 500]] = False
    np.testing.assert_array_equal(np.stack([vertex[k] for k in "xyz"], 1), points[keep])  # exact float32
    np.testing.assert_array_equal(np.stack([vertex[k] for k in ("red", "green", "blue")], 1), colors[keep])


def test_ply_rejects_bad_inputs_without_leaving_files(tmp_path):
    points, colors = _random_cloud(10)
    with pytest.raises(ValueError, match="to match points"):
        export.write_ply(tmp_path / "a.ply", points, colors[:9])
    with pytest.raises(ValueError, match="uint8"):
        export.write_ply(tmp_path / "a.ply", points, colors / 255.0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        export.write_ply(tmp_path / "a.ply", points[:, :2], colors[:, :2])
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ COLMAP


def test_rotation_to_quaternion_closed_forms_and_scipy():
    half = math.sqrt(0.5)
    quarter_turn_z = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(export.rotation_to_quaternion(quarter_turn_z), [half, 0, 0, half], atol=1e-15)
    np.testing.assert_allclose(export.rotation_to_quaternion(np.diag([1.0, -1, -1])), [0, 1, 0, 0], atol=1e-15)
    np.testing.assert_allclose(export.rotation_to_quaternion(np.eye(3)), [1, 0, 0, 0], atol=1e-15)
    for rot in Rotation.random(50, random_state=0):
        expected = rot.as_quat(scalar_first=True)
        np.testing.assert_allclose(export.rotation_to_quaternion(rot.as_matrix()),
                                   expected if expected[0] >= 0 else -expected, atol=1e-12)


def test_colmap_model_read_back_with_pycolmap(tmp_path, cameras):
    c2w, intrinsics, sizes = cameras
    c2w = c2w.copy()
    c2w[:, :3, 3] += [0.3, -0.2, 0.5]  # a translation component along every axis
    intrinsics = intrinsics.copy()
    intrinsics[:, 0, 0] += np.arange(NUM_VIEWS)  # distinct fx per camera
    names = [f"frame_{i:03d}.png" for i in range(NUM_VIEWS)]
    points, colors = _random_cloud(500)
    points[7] = np.nan
    assert export.write_colmap(tmp_path, intrinsics, c2w, sizes, names, points, colors, max_points=200) == 1

    model = pycolmap.Reconstruction(str(tmp_path))
    assert len(model.images) == NUM_VIEWS and len(model.cameras) == NUM_VIEWS and len(model.points3D) == 200
    for image in model.images.values():
        i = names.index(image.name)
        w2c = np.linalg.inv(c2w[i])
        pose = np.asarray(image.cam_from_world().matrix())  # (3, 4)
        np.testing.assert_allclose(pose[:, :3], w2c[:3, :3], atol=1e-6)
        np.testing.assert_allclose(pose[:, 3], w2c[:3, 3], atol=1e-6)
        camera = model.cameras[image.camera_id]
        assert camera.model == pycolmap.CameraModelId.PINHOLE
        assert (camera.width, camera.height) == (WIDTH, HEIGHT)
        k = intrinsics[i]  # COLMAP's pixel centres sit half a pixel further than ours
        np.testing.assert_allclose(camera.params, [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5], rtol=1e-15)
    finite = np.delete(points, 7, axis=0)
    finite_colors = np.delete(colors, 7, axis=0)
    for point in model.points3D.values():
        index = np.flatnonzero((finite == point.xyz.astype(np.float32)).all(1))  # %.9g keeps float32 exact
        assert len(index) == 1
        np.testing.assert_array_equal(point.color, finite_colors[index[0]])
        assert point.track.length() == 0


def test_colmap_text_follows_the_spec(tmp_path, cameras):
    c2w, intrinsics, sizes = cameras
    export.write_colmap(tmp_path, intrinsics, c2w, sizes, [f"{i}.jpg" for i in range(NUM_VIEWS)])
    lines = [ln for ln in (tmp_path / "images.txt").read_text().split("\n")[:-1] if not ln.startswith("#")]
    assert len(lines) == 2 * NUM_VIEWS and all(ln == "" for ln in lines[1::2])  # empty POINTS2D lines
    for i, line in enumerate(lines[0::2]):
        fields = line.split()
        assert (fields[0], fields[8], fields[9]) == (str(i + 1), str(i + 1), f"{i}.jpg")
        q, t = np.array(fields[1:5], float), np.array(fields[5:8], float)
        c2w_back = np.eye(4)
        c2w_back[:3, :3] = _quaternion_matrix(q).T
        c2w_back[:3, 3] = -_quaternion_matrix(q).T @ t
        assert q[0] >= 0
        np.testing.assert_allclose(c2w_back, c2w[i], atol=1e-6)
    point_lines = [ln for ln in (tmp_path / "points3D.txt").read_text().splitlines() if not ln.startswith("#")]
    assert point_lines == []


def test_colmap_rejects_bad_inputs(tmp_path, cameras):
    c2w, intrinsics, sizes = cameras
    names = [f"{i}.png" for i in range(NUM_VIEWS)]
    with pytest.raises(ValueError, match="intrinsics must have shape"):
        export.write_colmap(tmp_path, intrinsics[:3], c2w, sizes, names)
    with pytest.raises(ValueError, match="8 image names"):
        export.write_colmap(tmp_path, intrinsics, c2w, sizes, names[:7])
    with pytest.raises(ValueError, match="whitespace"):
        export.write_colmap(tmp_path, intrinsics, c2w, sizes, ["my image.png"] + names[1:])
    with pytest.raises(ValueError, match="unique"):
        export.write_colmap(tmp_path, intrinsics, c2w, sizes, names[:1] * NUM_VIEWS)
    scaled = c2w.copy()
    scaled[:, :3, :3] *= 2
    with pytest.raises(ValueError, match="rigid"):
        export.write_colmap(tmp_path, intrinsics, scaled, sizes, names)
    skewed = intrinsics.copy()
    skewed[:, 0, 1] = 0.5
    with pytest.raises(ValueError, match="pinhole"):
        export.write_colmap(tmp_path, skewed, c2w, sizes, names)
    with pytest.raises(ValueError, match="both points and colors"):
        export.write_colmap(tmp_path, intrinsics, c2w, sizes, names, points=np.zeros((3, 3)))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------- cameras.json


def test_cameras_json_round_trip(tmp_path, cameras):
    c2w, intrinsics, sizes = cameras
    names = [f"v{i}" for i in range(NUM_VIEWS)]
    export.write_cameras_json(tmp_path / "cameras.json", c2w, intrinsics, sizes, names)
    doc = json.loads((tmp_path / "cameras.json").read_text())
    assert doc["camera_convention"] == "opencv"
    assert [cam["name"] for cam in doc["cameras"]] == names
    np.testing.assert_array_equal([cam["c2w"] for cam in doc["cameras"]], c2w)  # exact: floats survive JSON
    np.testing.assert_array_equal([cam["intrinsics"] for cam in doc["cameras"]], intrinsics)
    assert all((cam["width"], cam["height"]) == (WIDTH, HEIGHT) for cam in doc["cameras"])


# ------------------------------------------------------------------------------------------------ GLB


def _accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    """Reads an accessor of a binary glTF through pygltflib's parsed structure."""
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = {pygltflib.FLOAT: np.float32, pygltflib.UNSIGNED_BYTE: np.uint8,
             pygltflib.UNSIGNED_INT: np.uint32}[accessor.componentType]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[accessor.type]
    data = gltf.binary_blob()[view.byteOffset + (accessor.byteOffset or 0):][:accessor.count * width *
                                                                            np.dtype(dtype).itemsize]
    return np.frombuffer(data, dtype).reshape(accessor.count, width).squeeze()


def test_glb_read_back_with_pygltflib(tmp_path, cameras):
    c2w, intrinsics, sizes = cameras
    points, colors = _random_cloud(301)
    points[0] = np.nan
    path = tmp_path / "scene.glb"
    assert export.write_glb(path, points, colors, c2w, intrinsics, sizes, frustum_scale=0.25) == 1
    gltf = pygltflib.GLTF2().load(str(path))
    assert gltf.asset.version == "2.0"
    meshes = {m.name: m.primitives[0] for m in gltf.meshes}
    assert sorted(meshes) == ["cameras", "points"]
    assert meshes["points"].mode == pygltflib.POINTS and meshes["cameras"].mode == pygltflib.LINES

    cloud = meshes["points"]
    positions = _accessor(gltf, cloud.attributes.POSITION)
    np.testing.assert_array_equal(positions, points[1:] * np.float32([1, -1, -1]))  # (x, -y, -z)
    np.testing.assert_allclose(gltf.accessors[cloud.attributes.POSITION].min, positions.min(0), rtol=1e-6)
    rgba = _accessor(gltf, cloud.attributes.COLOR_0)
    assert gltf.accessors[cloud.attributes.COLOR_0].normalized
    np.testing.assert_array_equal(rgba, np.concatenate([colors[1:], np.full((300, 1), 255, np.uint8)], 1))

    lines = meshes["cameras"]
    vertices = _accessor(gltf, lines.attributes.POSITION).reshape(NUM_VIEWS, 5, 3) * [1, -1, -1]  # back to OpenCV
    np.testing.assert_allclose(vertices[:, 0], c2w[:, :3, 3], atol=1e-6)  # camera centres
    w2c = np.linalg.inv(c2w)
    local = np.einsum("vij,vkj->vki", w2c[:, :3, :3], vertices[:, 1:]) + w2c[:, None, :3, 3]  # (V, 4, 3)
    np.testing.assert_allclose(local[..., 2], 0.25, atol=1e-6)  # image plane at the frustum depth
    pixels = np.einsum("vij,vkj->vki", intrinsics, local)
    pixels = pixels[..., :2] / pixels[..., 2:]
    corners = [[-0.5, -0.5], [WIDTH - 0.5, -0.5], [WIDTH - 0.5, HEIGHT - 0.5], [-0.5, HEIGHT - 0.5]]
    np.testing.assert_allclose(pixels, np.broadcast_to(corners, pixels.shape), atol=1e-4)
    edges = _accessor(gltf, lines.indices).reshape(NUM_VIEWS, 8, 2)
    np.testing.assert_array_equal(edges - 5 * np.arange(NUM_VIEWS)[:, None, None],
                                  np.broadcast_to(export.FRUSTUM_EDGES, edges.shape))


def test_glb_rejects_bad_frustum_scale_and_mismatched_cameras(tmp_path, cameras):
    c2w, intrinsics, sizes = cameras
    points, colors = _random_cloud(10)
    with pytest.raises(ValueError, match="frustum_scale"):
        export.write_glb(tmp_path / "s.glb", points, colors, c2w, intrinsics, sizes, frustum_scale=-1.0)
    with pytest.raises(ValueError, match="image_sizes"):
        export.write_glb(tmp_path / "s.glb", points, colors, c2w, intrinsics, sizes[:, :1])
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ PNG maps


def test_depth_png_16_bit_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.1, 12.0, (HEIGHT, WIDTH))
    depth[0, :3] = [np.nan, -1.0, 0.0]  # invalid
    path = tmp_path / "depth.png"
    scale = export.write_depth_png(path, depth)
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I;16B", "I") and image.size == (WIDTH, HEIGHT)
        raw = np.asarray(image).astype(np.float64)
        stored_scale = float(image.text["depth_scale"])
    assert stored_scale == scale and scale == pytest.approx(np.nanmax(depth) / 65535)
    assert raw.max() == 65535 and (raw[0, :3] == 0).all()
    valid = np.ones(depth.shape, bool)
    valid[0, :3] = False
    assert np.abs(raw * scale - depth)[valid].max() <= scale / 2 + 1e-12
    np.testing.assert_allclose(export.read_depth_png(path), raw * scale, rtol=1e-7)


def test_depth_png_explicit_scale_and_overflow(tmp_path):
    depth = np.array([[0.0004, 1.0], [2.5, 65.535]])  # a valid depth never rounds to the "no depth" 0
    assert export.write_depth_png(tmp_path / "d.png", depth, scale=0.001) == 0.001
    with Image.open(tmp_path / "d.png") as image:
        np.testing.assert_array_equal(np.asarray(image), [[1, 1000], [2500, 65535]])
    with pytest.raises(ValueError, match="16 bits"):
        export.write_depth_png(tmp_path / "e.png", depth * 2, scale=0.001)
    assert sorted(os.listdir(tmp_path)) == ["d.png"]


def test_confidence_png_8_bit(tmp_path):
    conf = np.array([[1.0, 2.0, np.nan], [3.0, 5.0, 4.0]])
    assert export.write_confidence_png(tmp_path / "c.png", conf) == (1.0, 5.0)
    with Image.open(tmp_path / "c.png") as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), [[0, 64, 0], [128, 255, 191]])  # round(255 * t)
        assert (float(image.text["conf_min"]), float(image.text["conf_max"])) == (1.0, 5.0)
    export.write_confidence_png(tmp_path / "c.png", conf, vmin=2.0, vmax=3.0)  # clipped outside the range
    with Image.open(tmp_path / "c.png") as image:
        np.testing.assert_array_equal(np.asarray(image), [[0, 0, 0], [255, 255, 255]])


def test_colorize_ramp_ends_and_non_finite():
    rgb = export.colorize(np.array([0.0, 0.5, 1.0, np.nan]))
    np.testing.assert_array_equal(rgb, [[68, 1, 84], [33, 145, 140], [253, 231, 37], [0, 0, 0]])
    np.testing.assert_array_equal(export.colorize(np.array([5.0]), vmin=0, vmax=10), [[33, 145, 140]])


# ------------------------------------------------------------------------------------------------ preview


def _count(image: np.ndarray, color) -> int:
    return int((image == np.array(color, np.uint8)).all(-1).sum())


def test_preview_shows_the_room_from_behind_camera_0(tmp_path, cameras, box_points):
    c2w, intrinsics, sizes = cameras
    points, colors = box_points
    path = tmp_path / "preview.png"
    export.write_preview_png(path, points, colors, c2w, intrinsics, sizes, size=(320, 240))
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (320, 240)
        rgb = np.asarray(image)
    floor, near_wall, far_wall = FACES[0][2], FACES[4][2], FACES[5][2]
    assert _count(rgb, floor) > 0.05 * rgb[..., 0].size  # seen from above
    assert _count(rgb, far_wall) > 0.05 * rgb[..., 0].size
    assert _count(rgb, near_wall) == 0  # cut away by the near plane at the nearest camera
    for color in export._camera_colors(NUM_VIEWS):  # every frustum is drawn
        assert _count(rgb, color) > 10


def test_preview_of_a_subsample_looks_like_the_whole_cloud(cameras, box_points):
    # A tenth of the points: the splats grow with the subsample's spacing, so the faces stay closed and cover about
    # the same pixels. Measured: 93% of the pixels the same colour; each face's pixel count within 20% (the floor
    # 0.3%, grazing side walls 16-20%), the background's within 7%.
    c2w, intrinsics, sizes = cameras
    points, colors = box_points
    whole = export.render_preview(points, colors, c2w, intrinsics, sizes, size=(320, 240))
    some = export.render_preview(points, colors, c2w, intrinsics, sizes, size=(320, 240), max_points=len(points) // 10)
    assert not np.array_equal(some, whole)
    assert (some == whole).all(-1).mean() > 0.9
    for color in [c for _, _, c in FACES] + [(250, 250, 250)]:
        assert abs(_count(some, color) - _count(whole, color)) <= 0.25 * _count(whole, color)


def test_preview_without_finite_points_draws_only_frustums(cameras):
    c2w, intrinsics, sizes = cameras
    points = np.full((5, 3), np.nan, np.float32)
    rgb = export.render_preview(points, np.zeros((5, 3), np.uint8), c2w, intrinsics, sizes, size=(160, 120))
    background = _count(rgb, (250, 250, 250))
    drawn = sum(_count(rgb, c) for c in export._camera_colors(NUM_VIEWS))
    assert drawn > 0 and background + drawn == 160 * 120


def test_most_confident_keeps_the_budget_of_highest_confidence_in_order():
    conf = np.random.default_rng(0).permutation(1000).astype(np.float32)  # distinct values
    keep = export.most_confident(conf, 100)
    assert keep.tolist() == sorted(keep.tolist()) and len(keep) == 100
    assert set(conf[keep].tolist()) == set(range(900, 1000))
    assert export.most_confident(conf, 5000).tolist() == list(range(1000))
    assert len(export.most_confident(conf, 0)) == 0
