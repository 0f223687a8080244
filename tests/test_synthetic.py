"""Procedural synthetic scenes: format, determinism, exact geometry, cross-view consistency."""

import json

import numpy as np
import PIL.Image
import pytest

from fast3r_jax.data import geometry_np, synthetic
from fast3r_jax.geometry import cameras as cameras_lib

RES = (64, 48)  # (W, H)


@pytest.fixture(scope="module")
def sample():
    return synthetic.SyntheticScenes(8, 4, RES, seed=3)[2]


def _reprojection(view_j, view_i, c2w_i=None):
    """Projects view j's valid points into view i (pose c2w_i, default its own).

    Returns the fraction of points inside view i, the fraction of those whose depth matches
    view i's depth at the nearest pixel within 2 % (visible), the median 3-D distance of the
    visible ones to view i's point at that pixel in units of one pixel's footprint, and the
    median absolute colour difference (uint8 levels) there.
    """
    c2w_i = view_i["camera_pose"] if c2w_i is None else c2w_i
    K_i = view_i["camera_intrinsics"]
    pts = view_j["pts3d"][view_j["valid_mask"]]  # (N, 3)
    uv, z = geometry_np.world_to_pixels(pts, K_i, c2w_i)
    h, w = view_i["depthmap"].shape
    xy = np.round(uv).astype(np.int64)
    inside = (z > 0) & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    xy, z, pts = xy[inside], z[inside], pts[inside]
    visible = np.abs(view_i["depthmap"][xy[:, 1], xy[:, 0]] - z) < 0.02 * z
    x, y = xy[visible, 0], xy[visible, 1]
    footprint = z[visible] / K_i[0, 0]
    dist = np.linalg.norm(view_i["pts3d"][y, x] - pts[visible], axis=1) / footprint
    colours_j = view_j["img"][view_j["valid_mask"]][inside][visible].astype(np.int64)
    colour_diff = np.abs(view_i["img"][y, x].astype(np.int64) - colours_j)
    return inside.mean(), visible.mean(), np.median(dist), np.median(colour_diff)


# ----------------------------------------------------------------------------
# Sample format.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [(64, 48), (48, 64)])
def test_views_follow_the_sample_format(resolution):
    width, height = resolution
    views = synthetic.SyntheticScenes(3, 2, resolution, seed=1, split="val")[1]
    assert isinstance(views, list) and len(views) == 2
    for v, view in enumerate(views):
        assert view["img"].shape == (height, width, 3) and view["img"].dtype == np.uint8
        assert view["depthmap"].shape == (height, width) and view["depthmap"].dtype == np.float32
        assert view["pts3d"].shape == (height, width, 3) and view["pts3d"].dtype == np.float32
        assert view["valid_mask"].shape == (height, width) and view["valid_mask"].dtype == bool
        assert view["camera_intrinsics"].shape == (3, 3) and view["camera_intrinsics"].dtype == np.float32
        assert view["camera_pose"].shape == (4, 4) and view["camera_pose"].dtype == np.float32
        assert view["true_shape"].dtype == np.int32
        np.testing.assert_array_equal(view["true_shape"], [height, width])
        assert (view["dataset"], view["label"], view["instance"]) == ("synthetic", "val/000001", str(v))
        # A closed room without windows: every pixel sees a surface.
        assert view["valid_mask"].all() and (view["depthmap"] > 0).all()
        K = view["camera_intrinsics"]
        np.testing.assert_array_equal(K[:2, 2], [width / 2, height / 2])
        assert K[0, 0] == K[1, 1] and 0.8 * width <= K[0, 0] <= 1.2 * width
        rot = view["camera_pose"][:3, :3].astype(np.float64)
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-6)
        assert np.linalg.det(rot) > 0


def test_focal_range_is_a_fraction_of_the_width():
    ds = synthetic.SyntheticScenes(4, 6, (80, 40), focal_range=(0.5, 0.6))
    focals = np.stack([ds.scene(i)[1][:, 0, 0] for i in range(len(ds))])
    assert (focals >= 0.5 * 80 - 1e-4).all() and (focals <= 0.6 * 80 + 1e-4).all()
    assert np.unique(focals).size == focals.size  # drawn per view


def test_texture_variety(sample):
    for view in sample:
        img = view["img"].reshape(-1, 3)
        assert img.std(axis=0).mean() > 25  # measured 36-41 on this sample
        assert len(np.unique(img, axis=0)) > 0.5 * img.shape[0]  # no flat regions (measured 0.96)


# ----------------------------------------------------------------------------
# Determinism.
# ----------------------------------------------------------------------------


def _arrays(views):
    return [view[k] for view in views for k in ("img", "depthmap", "pts3d", "camera_intrinsics", "camera_pose")]


def test_random_access_is_deterministic():
    ds = synthetic.SyntheticScenes(10, 3, RES, seed=5)
    first = ds[7]
    ds[2], ds[9]  # other calls in between change nothing
    for a, b in zip(first, synthetic.SyntheticScenes(10, 3, RES, seed=5)[7]):
        assert a["label"] == b["label"]
    for a, b in zip(_arrays(first), _arrays(ds[7])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("other", [dict(index=6), dict(split="val"), dict(seed=6)])
def test_different_index_split_or_seed_give_different_scenes(other):
    args = dict(index=7, split="train", seed=5) | other
    views = synthetic.SyntheticScenes(10, 3, RES, seed=args["seed"], split=args["split"])[args["index"]]
    reference = synthetic.SyntheticScenes(10, 3, RES, seed=5)[7]
    for a, b in zip(_arrays(views), _arrays(reference)):
        assert not np.array_equal(a, b)


def test_fixed_span_samples_the_same_path_more_densely():
    few = synthetic.SyntheticScenes(1, 4, RES, seed=3)
    dense = synthetic.SyntheticScenes(1, 7, RES, seed=3, span=3)
    scene_few, _, c2w_few = few.scene(0)
    scene_dense, _, c2w_dense = dense.scene(0)
    np.testing.assert_array_equal(scene_few.focus, scene_dense.focus)  # the same room
    # every other dense camera stands where a camera of the sparse scene stands (rolls and focals are drawn per view)
    np.testing.assert_allclose(c2w_dense[::2, :3, 3], c2w_few[:, :3, 3], atol=1e-6)
    np.testing.assert_array_equal(synthetic.SyntheticScenes(1, 4, RES, seed=3, span=3).scene(0)[2], c2w_few)
    assert not np.allclose(c2w_dense[1::2, :3, 3], c2w_few[:3, :3, 3], atol=1e-3)  # the rest in between


def test_span_fraction_draws_each_scenes_span_from_its_range():
    """Same rooms and paths as the default; scene i's cameras are those of the fixed span f_i x (V - 1), with f_i
    inside the range and different between scenes (read back from the angle the path turns about the focus, which
    grows linearly along it)."""
    default = synthetic.SyntheticScenes(30, 5, RES, seed=3)
    drawn = synthetic.SyntheticScenes(30, 5, RES, seed=3, span_fraction=(0.1, 0.5))

    def turn(scene, c2w):  # angle (radians) from the first camera to the last about the focus
        xy = c2w[:, :2, 3] - scene.focus[:2]
        return abs(np.unwrap(np.arctan2(xy[:, 1], xy[:, 0]))[-1] - np.arctan2(xy[0, 1], xy[0, 0]))

    fractions = []
    for i in range(30):
        scene, _, c2w = drawn.scene(i)
        scene_default, _, c2w_default = default.scene(i)
        np.testing.assert_array_equal(scene.focus, scene_default.focus)
        fraction = turn(scene, c2w) / turn(scene_default, c2w_default)
        fixed = synthetic.SyntheticScenes(30, 5, RES, seed=3, span=fraction * 4).scene(i)[2]
        np.testing.assert_allclose(c2w, fixed, atol=1e-4)
        fractions.append(fraction)
    assert 0.1 - 1e-4 <= min(fractions) and max(fractions) <= 0.5 + 1e-4
    assert np.std(np.log(fractions)) > 0.25  # drawn per scene, not one span for all (log-uniform: 0.46)
    # (1, 1) is the default, and a fixed span excludes a range
    np.testing.assert_array_equal(synthetic.SyntheticScenes(4, 5, RES, seed=3, span_fraction=(1, 1)).scene(2)[2],
                                  default.scene(2)[2])
    with pytest.raises(ValueError, match="span"):
        synthetic.SyntheticScenes(4, 5, RES, span=2.0, span_fraction=(0.5, 1.0))


def test_iteration_stops_at_the_end():
    ds = synthetic.SyntheticScenes(2, 1, (16, 12))
    assert [views[0]["label"] for views in ds] == ["train/000000", "train/000001"]
    with pytest.raises(IndexError):
        ds[2]


# ----------------------------------------------------------------------------
# Geometry.
# ----------------------------------------------------------------------------


def test_pts3d_is_the_unprojected_depth(sample):
    for view in sample:
        pts, valid = geometry_np.depthmap_to_world(view["depthmap"], view["camera_intrinsics"], view["camera_pose"])
        np.testing.assert_array_equal(valid, view["valid_mask"])
        # Coordinates are <= 4 m here: float32 rounding of depth and points is ~2.4e-7 m each.
        # Measured max abs error: 2.4e-7 m.
        np.testing.assert_allclose(pts, view["pts3d"], rtol=0, atol=2e-6)


def test_points_project_back_onto_their_own_pixels(sample):
    h, w = RES[1], RES[0]
    for view in sample:
        uv, z = geometry_np.world_to_pixels(view["pts3d"], view["camera_intrinsics"], view["camera_pose"])
        np.testing.assert_allclose(uv, geometry_np.pixel_grid(h, w), rtol=0, atol=1e-3)
        np.testing.assert_allclose(z, view["depthmap"], rtol=1e-5)


@pytest.mark.parametrize("resolution", [(64, 48), (48, 64)])
def test_points_reproject_onto_matching_pixels_of_other_views(resolution):
    views = synthetic.SyntheticScenes(3, 4, resolution, seed=3, split="test")[1]
    for j in range(3):
        for a, b in ((j, j + 1), (j + 1, j)):
            inside, visible, dist, colour_diff = _reprojection(views[a], views[b])
            assert inside > 0.4  # consecutive views overlap (measured 0.5-1.0)
            assert visible > 0.7  # the rest is occluded or at a depth edge (measured 0.80-0.96)
            # Nearest-pixel rounding gives ~0.4-0.5 pixel footprints; a wrong pose gives several.
            assert dist < 0.75
            assert colour_diff <= 6  # Lambertian shading: same colour in every view (measured 1-5)
    # Negative control: with another view's pose the same check fails.
    _, visible, dist, _ = _reprojection(views[0], views[1], views[3]["camera_pose"])
    assert visible < 0.5 and dist > 2


def _probe_scene(solid: synthetic.Solid | None) -> synthetic.Scene:
    texture = synthetic.random_texture(np.random.default_rng(0))
    return synthetic.Scene(
        room_min=np.array([-2.0, -3.0, 0.0]),
        room_max=np.array([2.0, 3.0, 3.0]),
        room_textures=(texture,) * 6,
        windows=np.zeros((6, 4)),
        solids=() if solid is None else (solid,),
        light=np.array([0.0, 0.0, 2.8]),
        focus=np.array([0.0, 0.0, 1.0]),
    )


def test_wall_facing_the_camera_has_constant_depth():
    """Camera at (0, 0, 1.4) looking along +x at the wall x = 2: z-depth is 2 everywhere."""
    K = synthetic.intrinsics(40.0, (64, 48))
    c2w = synthetic.look_at(np.array([0.0, 0.0, 1.4]), np.array([1.0, 0.0, 1.4]))
    out = synthetic.render_view(_probe_scene(None), K, c2w, (64, 48))
    np.testing.assert_allclose(out.depthmap, 2.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.pts3d[..., 0], 2.0, rtol=0, atol=1e-6)
    assert out.valid_mask.all()


@pytest.mark.parametrize(
    "kind, half_size, look_down, expected",
    [
        ("sphere", [0.5, 0.5, 0.5], False, 0.5),
        ("box", [0.3, 0.4, 0.2], False, 0.7),
        ("cylinder", [0.25, 0.25, 0.3], False, 0.75),
        ("cylinder", [0.25, 0.25, 0.3], True, 1.0),  # the top cap at z = 1.7 seen from z = 2.7
    ],
)
def test_centre_pixel_depth_on_each_solid(kind, half_size, look_down, expected):
    """A solid centred at (1, 0, 1.4) seen along +x from (0, 0, 1.4), or from above."""
    center = np.array([1.0, 0.0, 1.4])
    solid = synthetic.Solid(kind, center, synthetic._rotation_z(0.0), np.array(half_size),
                            synthetic.random_texture(np.random.default_rng(1)))
    eye = center + [0, 0, 1.3] if look_down else np.array([0.0, 0.0, 1.4])
    c2w = synthetic.look_at(eye, center + [1e-3, 0, 0] if look_down else center)
    K = synthetic.intrinsics(40.0, (64, 48))  # pixel (32, 24) is the optical axis
    out = synthetic.render_view(_probe_scene(solid), K, c2w, (64, 48))
    np.testing.assert_allclose(out.depthmap[24, 32], expected, rtol=0, atol=1e-4)
    assert out.depthmap.max() > 1.5  # the room is visible around the solid


def test_cameras_stay_outside_solids_and_inside_the_room():
    ds = synthetic.SyntheticScenes(20, 12, RES, seed=11)
    for i in range(len(ds)):
        scene, _, c2w = ds.scene(i)
        eyes = c2w[:, :3, 3].astype(np.float64)  # (V, 3)
        assert (eyes > scene.room_min + 0.3).all() and (eyes < scene.room_max - 0.3).all()
        for solid in scene.solids:
            reach = np.linalg.norm(solid.half_size[:2]) if solid.kind == "box" else solid.half_size[0]
            assert (np.linalg.norm(eyes[:, :2] - solid.center[:2], axis=1) > reach + 0.2).all()


def test_holes_are_invalid_and_leave_the_rest_unchanged():
    closed = synthetic.SyntheticScenes(6, 2, RES, seed=2)
    holed = synthetic.SyntheticScenes(6, 2, RES, seed=2, hole_fraction=0.4)
    pairs = [(a, b) for i in range(6) for a, b in zip(closed[i], holed[i])]
    holes = np.stack([~b["valid_mask"] for _, b in pairs])
    # Windows are visible in some scenes only (measured 0.0-0.26 per scene, 0.09 overall).
    assert 0.02 < holes.mean() < 0.5
    for a, b in pairs:
        hole = ~b["valid_mask"]
        assert (b["depthmap"][hole] == 0).all()
        np.testing.assert_allclose(b["pts3d"][hole], np.broadcast_to(b["camera_pose"][:3, 3], b["pts3d"][hole].shape))
        pts, valid = geometry_np.depthmap_to_world(b["depthmap"], b["camera_intrinsics"], b["camera_pose"])
        np.testing.assert_array_equal(valid, b["valid_mask"])
        np.testing.assert_allclose(pts, b["pts3d"], rtol=0, atol=2e-6)
        for key in ("depthmap", "pts3d", "img"):
            np.testing.assert_array_equal(a[key][~hole], b[key][~hole])


# ----------------------------------------------------------------------------
# Camera helpers (closed form).
# ----------------------------------------------------------------------------


def test_depthmap_to_world_closed_form():
    depth = np.array([[2.0, 0.0], [np.nan, 4.0]], np.float32)
    K = np.array([[2.0, 0, 1.0], [0, 4.0, 0.5], [0, 0, 1]])
    c2w = np.eye(4)
    c2w[:3, 3] = [10, 20, 30]
    pts, valid = geometry_np.depthmap_to_world(depth, K, c2w)
    np.testing.assert_array_equal(valid, [[True, False], [False, True]])
    # pixel (x, y) -> ((x - 1) / 2 * z, (y - 0.5) / 4 * z, z) + t
    np.testing.assert_allclose(pts[0, 0], [10 - 1.0, 20 - 0.25, 32])
    np.testing.assert_allclose(pts[1, 1], [10, 20 + 0.5, 34])
    np.testing.assert_allclose(pts[0, 1], [10, 20, 30])  # invalid -> camera centre


def test_look_at_points_the_optical_axis_at_the_target():
    eye, target = np.array([1.0, 2.0, 1.5]), np.array([-1.0, 0.5, 0.7])
    c2w = synthetic.look_at(eye, target, roll=0.1)
    uv, z = geometry_np.world_to_pixels(target, synthetic.intrinsics(50.0, (64, 48)), c2w)
    np.testing.assert_allclose(uv, [32, 24], atol=1e-9)
    np.testing.assert_allclose(z, np.linalg.norm(target - eye))
    # With no roll, world up projects upwards (negative image y) and the image x axis is level.
    level = synthetic.look_at(eye, target)
    assert level[2, 0] == pytest.approx(0, abs=1e-12) and level[2, 1] < 0


# ----------------------------------------------------------------------------
# Example folder.
# ----------------------------------------------------------------------------


def test_write_and_read_example_scene(tmp_path):
    views = synthetic.write_example_scene(tmp_path, num_views=3, resolution=(40, 32), seed=4)
    cameras = synthetic.read_example_cameras(tmp_path)
    assert len(cameras) == 3
    for view, camera in zip(views, cameras):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(camera["file"])), view["img"])
        np.testing.assert_array_equal(camera["K"], view["camera_intrinsics"])
        np.testing.assert_array_equal(camera["c2w"], view["camera_pose"])
    # the file reconstruct writes: its sizes, and known intrinsics for --intrinsics
    meta = json.loads((tmp_path / "cameras.json").read_text())
    assert [(c["name"], c["width"], c["height"]) for c in meta["cameras"]] == [
        (f"view_00{i}.png", 40, 32) for i in range(3)]
    known = cameras_lib.read_intrinsics(tmp_path / "cameras.json", {f"view_00{i}.png": (40, 32) for i in range(3)})
    for i, view in enumerate(views):
        np.testing.assert_allclose(known[f"view_00{i}.png"], view["camera_intrinsics"], rtol=1e-7)


def test_read_example_cameras_rejects_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="cameras.json"):
        synthetic.read_example_cameras(tmp_path)
    path = tmp_path / "cameras.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        synthetic.read_example_cameras(tmp_path)
    entry = dict(name="a.png", width=4, height=4, intrinsics=[[1, 0, 0], [0, 1, 0]], c2w=np.eye(4).tolist())
    path.write_text(json.dumps(dict(cameras=[entry])))
    with pytest.raises(ValueError, match=r"cameras\[0\]: field 'intrinsics' or 'width'/'height' is not valid"):
        synthetic.read_example_cameras(tmp_path)
    entry |= dict(intrinsics=np.eye(3).tolist(), c2w=np.eye(3).tolist())
    path.write_text(json.dumps(dict(cameras=[entry])))
    with pytest.raises(ValueError, match=r"cameras\[0\]: field 'c2w' is not valid"):
        synthetic.read_example_cameras(tmp_path)
    del entry["c2w"]
    path.write_text(json.dumps(dict(cameras=[entry])))
    with pytest.raises(ValueError, match=r"cameras\[0\]: field 'c2w' is missing"):  # ground truth needs the poses
        synthetic.read_example_cameras(tmp_path)
    path.write_text(json.dumps(dict(cameras=[])))
    with pytest.raises(ValueError, match="lists no cameras"):
        synthetic.read_example_cameras(tmp_path)


# ----------------------------------------------------------------------------
# Bad arguments.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_scenes=0), "num_scenes"),
        (dict(num_views=0), "num_views"),
        (dict(num_views=2.0), "num_views"),
        (dict(resolution=(64,)), "resolution"),
        (dict(resolution=(64, 0)), "resolution"),
        (dict(resolution=(64.5, 48)), "resolution"),
        (dict(seed=-1), "seed"),
        (dict(focal_range=(1.2, 0.8)), "focal_range"),
        (dict(focal_range=(0.0, 1.0)), "focal_range"),
        (dict(focal_range=0.8), "focal_range"),
        (dict(split=""), "split"),
        (dict(hole_fraction=1.0), "hole_fraction"),
        (dict(hole_fraction=-0.1), "hole_fraction"),
        (dict(span=-1.0), "span"),
        (dict(span=float("inf")), "span"),
        (dict(span="7"), "span"),
        (dict(span_fraction=(0.0, 1.0)), "span_fraction"),
        (dict(span_fraction=(0.5, 0.2)), "span_fraction"),
        (dict(span_fraction=0.5), "span_fraction"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(num_scenes=2, num_views=2) | kwargs
    with pytest.raises(ValueError, match=match):
        synthetic.SyntheticScenes(**args)


def test_render_view_rejects_bad_cameras():
    scene = _probe_scene(None)
    K = synthetic.intrinsics(40.0, RES)
    inside = synthetic.look_at(np.array([0.0, 0.0, 1.4]), np.array([1.0, 0.0, 1.4]))
    outside = synthetic.look_at(np.array([5.0, 0.0, 1.4]), np.array([1.0, 0.0, 1.4]))
    with pytest.raises(ValueError, match="outside the room"):
        synthetic.render_view(scene, K, outside, RES)
    with pytest.raises(ValueError, match="K must have shape"):
        synthetic.render_view(scene, K[:2], inside, RES)
    with pytest.raises(ValueError, match="camera pose"):
        synthetic.render_view(scene, K, inside[:3], RES)
    with pytest.raises(ValueError, match="depth must have shape"):
        geometry_np.depthmap_to_world(np.ones(5), K, inside)
