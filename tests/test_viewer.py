"""`fast3r-jax view`: the point selection (pure numpy), pointmaps.npz, and the viser viewer driven headlessly."""

import os
import shutil
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import plyfile
import pytest
import trimesh

from fast3r_jax import cli
from fast3r_jax import reconstruct as reconstruct_lib
from fast3r_jax.app import viewer
from fast3r_jax.geometry.cameras import Cameras
from fast3r_jax.io.images import Geometry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs(num: int = 3, height: int = 24, width: int = 32) -> tuple[list[dict], list[dict]]:
    """Views and model outputs of a bumpy wall seen by `num` cameras: the local head is the global one moved by a
    known similarity (so aligning it back is exact), confidences are random."""
    rng = np.random.default_rng(0)
    views, outputs = [], []
    for i in range(num):
        u, v = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-0.75, 0.75, height))
        glob_pts = np.stack([u + 0.3 * i, v, 2 + 0.2 * np.sin(3 * u) * np.cos(2 * v)], -1)  # (H, W, 3)
        angle = 0.2 * (i + 1)
        rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
        local = 0.5 * glob_pts @ rot.T + [0.1, -0.2, 0.3]  # (H, W, 3)
        views.append(dict(img=rng.uniform(-1, 1, (3, height, width)).astype(np.float32), path=f"view_{i}.png",
                          geometry=Geometry((width, height), (width, height), (0, 0, width, height))))
        outputs.append(dict(pts3d_in_other_view=glob_pts, pts3d_local=local, conf=1 + 9 * rng.random((height, width)),
                            conf_local=1 + 9 * rng.random((height, width))))
    return views, outputs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("view") / "out"
    out.mkdir()
    views, outputs = _outputs()
    num, height, width = len(views), *outputs[0]["conf"].shape
    c2w = np.tile(np.eye(4), (num, 1, 1))
    c2w[:, 0, 3] = 0.3 * np.arange(num)
    intrinsics = np.tile(np.array([[30.0, 0, width / 2], [0, 30.0, height / 2], [0, 0, 1]]), (num, 1, 1))
    cams = Cameras(c2w, intrinsics, np.tile([width, height], (num, 1)), ())
    config = reconstruct_lib.ReconstructConfig(outputs=reconstruct_lib.DEFAULT_OUTPUTS + ("pointmaps",))
    reconstruct_lib.write_outputs(out, views, outputs, cams, reconstruct_lib.image_names(views), config, {})
    return out


def test_confidence_cutoffs_take_the_larger_of_the_global_and_the_view_percentile():
    conf = [np.arange(100, dtype=np.float16), np.arange(100, 200, dtype=np.float16)]
    cut = viewer.confidence_cutoffs(conf, 25.0, [0.0, 50.0])
    everything = np.arange(200, dtype=np.float64)
    assert cut[0] == pytest.approx(np.percentile(everything, 25))
    assert cut[1] == pytest.approx(max(np.percentile(everything, 25), np.percentile(everything[100:], 50)))
    assert (viewer.confidence_cutoffs(conf, 0.0, [0.0, 0.0]) == -np.inf).all()


def test_select_points_keeps_the_most_confident_within_the_budget_and_skips_hidden_views():
    rng = np.random.default_rng(0)
    conf = [rng.random(50).astype(np.float16), rng.random(70).astype(np.float16), rng.random(30).astype(np.float16)]
    cutoffs = np.array([0.2, -np.inf, 0.0])
    everything = viewer.select_points(conf, [True, True, False], cutoffs, None)
    np.testing.assert_array_equal(everything[0], np.flatnonzero(conf[0] >= 0.2))
    np.testing.assert_array_equal(everything[1], np.arange(70))
    assert len(everything[2]) == 0
    picked = viewer.select_points(conf, [True, True, False], cutoffs, 40)
    values = np.concatenate([conf[0][everything[0]], conf[1]])
    chosen = np.concatenate([conf[0][picked[0]], conf[1][picked[1]]])
    assert len(chosen) == 40 and len(picked[2]) == 0
    np.testing.assert_array_equal(np.sort(chosen), np.sort(values)[-40:])  # the 40 most confident
    assert all(np.isin(p, e).all() for p, e in zip(picked, everything))


def test_point_colors_by_rgb_confidence_and_view():
    rgb = [np.full((4, 3), 10, np.uint8), np.full((3, 3), 200, np.uint8)]
    conf = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 1.0, 4.0])]
    idx = [np.array([0, 3]), np.array([2])]
    np.testing.assert_array_equal(viewer.point_colors("rgb", rgb, conf, idx, (1, 4)), [[10] * 3, [10] * 3, [200] * 3])
    by_conf = viewer.point_colors("confidence", rgb, conf, idx, (1.0, 4.0))
    np.testing.assert_array_equal(by_conf[1], by_conf[2])  # same confidence, same colour
    assert (by_conf[0] != by_conf[1]).any()
    by_view = viewer.point_colors("view", rgb, conf, idx, (1.0, 4.0))
    np.testing.assert_array_equal(by_view[0], by_view[1])
    assert (by_view[1] != by_view[2]).any()


def test_pointmaps_npz_holds_both_heads_and_the_local_head_is_aligned(folder):
    views, outputs = _outputs()
    with np.load(folder / "pointmaps.npz") as maps:
        assert sorted(maps.files) == sorted(f"{k}_{i}" for i in range(VIEWS)
                                            for k in ("global", "conf", "local", "conf_local", "rgb"))
        for i, out in enumerate(outputs):
            assert maps[f"global_{i}"].dtype == np.float16 and maps[f"rgb_{i}"].dtype == np.uint8
            np.testing.assert_allclose(maps[f"local_{i}"], out["pts3d_local"], rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(maps[f"conf_{i}"], out["conf"], rtol=1e-3)
            np.testing.assert_array_equal(maps[f"rgb_{i}"], reconstruct_lib.view_colors(views[i]))
    scene = viewer.load_scene(folder)
    assert scene.per_view and scene.num_groups == VIEWS and scene.thumbnails[0].shape == (24, 32, 3)
    for i, out in enumerate(outputs):  # the similarity is undone: local lands on global (float16 storage)
        np.testing.assert_allclose(scene.points["local"][i], out["pts3d_in_other_view"].reshape(-1, 3), atol=2e-2)


def test_viewer_serves_the_scene_and_its_controls_filter_the_points(folder, tmp_path):
    view = viewer.Viewer(viewer.load_scene(folder), port=free_port(), max_points=10**7)
    try:
        page = urllib.request.urlopen(view.address, timeout=30).read().decode()
        assert "<html" in page.lower()
        assert len(view.frustums) == VIEWS and view.frustums[1].image is not None
        conf = np.concatenate(view.scene.conf["global"]).astype(np.float32)  # (total,)
        assert len(view.cloud.points) == np.count_nonzero(conf >= np.percentile(conf, 10))
        view.percentile.value = 60.0
        shown = np.count_nonzero(conf >= np.percentile(conf, 60))
        assert len(view.cloud.points) == shown < 0.45 * len(conf)
        view.view.value = view.scene.names[1]
        view.show_view.value = False
        second = view.scene.conf["global"][1].astype(np.float32)
        assert len(view.cloud.points) == shown - np.count_nonzero(second >= np.percentile(conf, 60))
        view.budget.value = 200
        assert len(view.cloud.points) == 200
        view.head.value = "local"
        view.color.value = "view"
        colors = np.asarray(view.cloud.colors)
        assert len(np.unique(colors, axis=0)) == VIEWS - 1  # one colour per shown view
        view.write_shown(tmp_path / "shown.ply")
        view.write_shown(tmp_path / "shown.glb")
    finally:
        view.stop()
    ply = plyfile.PlyData.read(str(tmp_path / "shown.ply"))
    assert len(ply["vertex"]) == 200
    glb = trimesh.load(tmp_path / "shown.glb")
    clouds = [g for g in glb.geometry.values() if isinstance(g, trimesh.PointCloud)]
    assert len(clouds) == 1 and len(clouds[0].vertices) == 200


def test_without_pointmaps_the_viewer_shows_points_ply(folder, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain, ignore=shutil.ignore_patterns("pointmaps.npz"))
    scene = viewer.load_scene(plain)
    ply = plyfile.PlyData.read(str(plain / "points.ply"))
    assert not scene.per_view and scene.num_groups == 1 and len(scene.points["global"][0]) == len(ply["vertex"])
    np.testing.assert_array_equal(scene.rgb[0][:, 0], ply["vertex"]["red"])


def test_view_command_prints_the_address_and_serves_it(folder, tmp_path, capsys):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "fast3r_jax.cli", "view", str(folder), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in proc.stdout:
            if "open http" in line:
                break
        assert f"open http://127.0.0.1:{port}" in line
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=30).status == 200
    finally:
        proc.kill()
        proc.wait()
    assert cli.main(["view", str(tmp_path / "nowhere")]) == 2
    assert "cameras.json" in capsys.readouterr().err
