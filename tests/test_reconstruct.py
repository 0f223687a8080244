"""`fast3r-jax reconstruct`: outputs read back by independent readers, cameras from ground-truth pointmaps, errors."""

import concurrent.futures
import errno
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import PIL.Image
import plyfile
import pycolmap
import pygltflib
import pytest
from scipy.spatial.transform import Rotation

from fast3r_jax import cli, reconstruct
from fast3r_jax.checkpoint import save_pretrained
from fast3r_jax.data.synthetic import SyntheticScenes, write_example_scene
from fast3r_jax.geometry.cameras import estimate_cameras
from fast3r_jax.geometry.metrics import align_cameras, pose_errors
from fast3r_jax.inference.engine import Engine
from fast3r_jax.io.files import MARKER
from fast3r_jax.io.images import Geometry
from tests.helpers.small_model import small_config, small_params, with_image_size

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_VIEWS = 4
SIZE = 224  # the 64x48 example images become 224x224 centre crops
# Cameras from ground-truth pointmaps, about 10x the float32 errors measured per solver: focal (relative),
# rotation (degrees), camera centre (error / largest camera distance from view 0).
# Measured: pnp 0, 1.3e-6, 4.0e-8; procrustes 9.0e-8, 1.2e-4, 3.2e-6.
CAMERA_TOLS = {"pnp": (1e-6, 1e-5, 4e-7), "procrustes": (1e-6, 1e-3, 3e-5)}
POINT_ATOL = 1e-5  # PLY points against the same engine run again (float32, world units ~1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = small_config()
    return save_pretrained(tmp_path_factory.mktemp("ckpt") / "small", cfg, small_params(cfg))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    write_example_scene(folder, num_views=NUM_VIEWS, resolution=(64, 48))
    return folder


def _run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------------------- the command


def test_reconstruct_writes_every_output_and_each_reads_back(tmp_path, capsys, checkpoint, scene):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "reconstruct", scene, "--checkpoint", checkpoint, "--out", out,
                                "--size", SIZE, "--conf-percentile", 25, "--colmap-text")
    assert code == 0, stderr
    assert str(out) in stdout and "pose errors vs ground truth (4 views, pnp)" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind
    summary = json.loads((out / "summary.json").read_text())
    names = [f"view_{i:03d}.png" for i in range(NUM_VIEWS)]
    assert summary["images"] == names and summary["num_views"] == NUM_VIEWS
    assert summary["image_ids"][0] == 0 and len(set(summary["image_ids"])) == NUM_VIEWS
    assert {"RRA_at_5", "RTA_at_5", "mAA_30", "rotation_error_deg", "translation_error"} <= set(summary["pose_errors"])

    ply = plyfile.PlyData.read(str(out / "points.ply"))["vertex"]
    assert len(ply) == summary["points"]
    assert 0.74 * summary["pixels"] <= len(ply) <= summary["pixels"]  # the 25th percentile filter
    xyz = np.stack([ply[k] for k in "xyz"], -1)
    assert np.isfinite(xyz).all() and ply["red"].dtype == np.uint8

    doc = json.loads((out / "cameras.json").read_text())
    c2w = np.array([c["c2w"] for c in doc["cameras"]])
    intrinsics = np.array([c["intrinsics"] for c in doc["cameras"]])
    assert [c["name"] for c in doc["cameras"]] == names
    assert all((c["width"], c["height"]) == (SIZE, SIZE) for c in doc["cameras"])
    np.testing.assert_allclose(intrinsics[:, 0, 0], summary["focals"])

    assert sorted(p.name for p in (out / "colmap").iterdir()) == ["cameras.txt", "images.txt", "points3D.txt"]
    model = pycolmap.Reconstruction(str(out / "colmap"))
    assert len(model.images) == NUM_VIEWS
    assert len(model.points3D) == min(len(ply), reconstruct.ReconstructConfig().max_colmap_points)
    for image in model.images.values():
        i = names.index(image.name)
        np.testing.assert_allclose(np.asarray(image.cam_from_world().matrix()), np.linalg.inv(c2w[i])[:3],
                                   atol=1e-5)
        camera = model.cameras[image.camera_id]
        assert (camera.width, camera.height) == (64, 48)  # the original images' size
        scale = np.array([round(64 * SIZE / 48) / 64, SIZE / 48])  # the resize (299x224), per axis
        np.testing.assert_allclose(camera.params[:2], intrinsics[i, 0, 0] / scale, rtol=1e-9)

    glb = pygltflib.GLTF2().load(str(out / "scene.glb"))
    assert [n.name for n in glb.nodes] == ["points", "cameras"]
    assert glb.accessors[glb.meshes[0].primitives[0].attributes.POSITION].count == len(ply)

    for kind, mode, key in (("depth", "I;16", "depth_scale"), ("confidence", "L", "conf_max")):
        files = sorted((out / kind).iterdir())
        assert [f.name for f in files] == [f"{i:04d}_view_{i:03d}.png" for i in range(NUM_VIEWS)]
        with PIL.Image.open(files[0]) as png:
            assert png.mode == mode and png.size == (SIZE, SIZE) and float(png.text[key]) > 0

    # contents: the model's pointmaps and the input pixels, recomputed here from the same inputs and ids
    views = reconstruct.load_inputs([scene], size=SIZE)
    cfg, params = reconstruct.load_model(checkpoint)
    outputs = Engine(cfg, params, "float32", encoder_chunk=16, head_chunk=8)(views, np.array(summary["image_ids"]))
    pts = [np.asarray(o["pts3d_in_other_view"], np.float64) for o in outputs]  # (H, W, 3) each
    conf = np.stack([np.asarray(o["conf"]) for o in outputs])  # (V, H, W)
    keep = conf >= np.percentile(conf, 25)  # (V, H, W)
    pixels = [np.clip(np.round((np.asarray(v["img"])[0] * 0.5 + 0.5) * 255), 0, 255).transpose(1, 2, 0)
              for v in views]  # (H, W, 3) each: the normalised input back in 0..255
    np.testing.assert_allclose(xyz, np.concatenate([p[k] for p, k in zip(pts, keep, strict=True)]), rtol=0,
                               atol=POINT_ATOL)
    np.testing.assert_array_equal(np.stack([ply[k] for k in ("red", "green", "blue")], -1),
                                  np.concatenate([p[k] for p, k in zip(pixels, keep, strict=True)]))
    for i, file in enumerate(sorted((out / "depth").iterdir())):
        with PIL.Image.open(file) as png:
            scale, stored = float(png.text["depth_scale"]), np.asarray(png, np.float64)  # (H, W)
        z = (pts[i] - c2w[i, :3, 3]) @ c2w[i, :3, 2]  # (H, W) depth in the estimated camera
        assert stored.max() == 65535  # the scale maps the farthest depth to the top code
        np.testing.assert_array_equal(stored == 0, z <= 0)
        near = z >= scale / 2  # nearer depths are stored as code 1
        assert np.abs(stored * scale - z)[near].max() <= scale / 2 * (1 + 1e-6), file.name
        assert (stored[(z > 0) & ~near] == 1).all()
    with PIL.Image.open(out / "preview.png") as png:
        assert png.mode == "RGB" and png.size == (1024, 768)
        assert len(np.unique(np.asarray(png).reshape(-1, 3), axis=0)) > 1  # more than the background


def test_default_checkpoint_procrustes_and_overwrite(tmp_path, capsys, monkeypatch, checkpoint, scene):
    out = tmp_path / "out"
    monkeypatch.setattr(reconstruct, "DEFAULT_CHECKPOINT", tmp_path / "not-installed")
    code, _, stderr = _run(capsys, "reconstruct", scene, "--out", out)
    assert code == 2 and "no --checkpoint given and the built-in default checkpoint is not installed" in stderr
    assert not out.exists()

    builtin = with_image_size(checkpoint, tmp_path / "builtin", 128)  # as the shipped model's config.json says
    monkeypatch.setattr(reconstruct, "DEFAULT_CHECKPOINT", builtin)
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    code, _, stderr = _run(capsys, "reconstruct", scene, "--out", out, "--overwrite")
    assert code == 2 and "was not written by fast3r-jax" in stderr  # a folder of someone else's is never replaced
    assert (out / "stale.txt").read_text() == "old run"
    (out / MARKER).write_text("{}")  # as an earlier run leaves it
    code, stdout, stderr = _run(capsys, "reconstruct", scene, "--out", out, "--overwrite", "--pose-solver",
                                "procrustes", "--image-ids", "sequential", "--max-views", 3)
    assert code == 0, stderr
    assert f"using the built-in default checkpoint {builtin}" in stderr
    assert "pose errors vs ground truth (3 views, procrustes)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["default_checkpoint"] and summary["image_ids"] == [0, 1, 2]
    assert summary["size"] == 128  # the built-in model's training resolution (its config's image_size)
    assert json.loads((out / "cameras.json").read_text())["cameras"][0]["width"] == 128
    assert summary["images"] == ["view_000.png", "view_002.png", "view_003.png"]  # spread over the 4 inputs
    assert not (out / "stale.txt").exists() and (out / "points.ply").is_file()
    # the built-in folder named explicitly is still the built-in model; a copy is not
    assert reconstruct.resolve_checkpoint(str(builtin)) == (builtin, True)
    copy = with_image_size(builtin, tmp_path / "copy", 64)
    assert reconstruct.resolve_checkpoint(copy) == (copy, False)
    # any checkpoint's images default to the size in its config (image_size), built-in or not
    code, _, stderr = _run(capsys, "reconstruct", scene, "--out", tmp_path / "out64", "--checkpoint", copy,
                           "--max-views", 2, "--outputs", "cameras")
    assert code == 0, stderr
    assert json.loads((tmp_path / "out64" / "summary.json").read_text())["size"] == 64


# ----------------------------------------------------------------------------------------------- errors


def _png(path, size=(32, 24)):
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, size[::-1] + (3,), np.uint8)).save(path)
    return path


def _truncated(path):
    _png(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _incompatible(tmp_path, checkpoint):
    bad = tmp_path / "incompatible"
    shutil.copytree(checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    config["encoder"]["embed_dim"] = 48
    (bad / "config.json").write_text(json.dumps(config))
    return bad


@pytest.mark.parametrize("case, message", [
    ("existing_out", "already exists; pass --overwrite"),
    ("missing_checkpoint", "checkpoint folder not found"),
    ("not_a_checkpoint", "config.json not found"),
    ("incompatible_checkpoint", "does not match its config.json"),
    ("bad_size", "--size must be 224 or a multiple of 16"),
    ("missing_input", "image path not found"),
    ("empty_folder", "no image files"),
    ("truncated_image", "truncated.png"),
    ("too_small_image", "too small"),
    ("only_bad_images_skipped", "no readable images"),
])
def test_errors_give_one_clear_message(tmp_path, capsys, checkpoint, scene, case, message):
    out, ckpt, inputs, extra = tmp_path / "out", checkpoint, [scene], []
    if case == "existing_out":
        out.mkdir()
    elif case == "missing_checkpoint":
        ckpt = tmp_path / "nowhere"
    elif case == "not_a_checkpoint":
        ckpt = tmp_path
    elif case == "incompatible_checkpoint":
        ckpt = _incompatible(tmp_path, checkpoint)
    elif case == "bad_size":
        extra = ["--size", "100"]
    elif case == "missing_input":
        inputs = [tmp_path / "nothing.png"]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        inputs = [tmp_path / "empty"]
    elif case == "truncated_image":
        inputs = [scene / "view_000.png", _truncated(tmp_path / "truncated.png")]
    elif case == "too_small_image":
        inputs = [_png(tmp_path / "sliver.png", size=(640, 8))]
    else:
        inputs = [_truncated(tmp_path / "a.png"), _truncated(tmp_path / "b.png")]
        extra = ["--on-bad-image", "skip"]
    code, stdout, stderr = _run(capsys, "reconstruct", *inputs, "--checkpoint", ckpt, "--out", out, *extra)
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0], stderr
    assert stdout == ""
    assert case == "existing_out" or not out.exists()


def test_bad_images_are_named_and_skipped_on_request(tmp_path, scene):
    notes = []
    bad = _truncated(tmp_path / "broken.png")
    views = reconstruct.load_inputs([scene / "view_000.png", bad, scene / "view_001.png"], size=SIZE,
                                    on_bad_image="skip", notify=notes.append)
    assert [v["path"] for v in views] == [str(scene / "view_000.png"), str(scene / "view_001.png")]
    assert len(notes) == 1 and str(bad) in notes[0]
    with pytest.raises(reconstruct.ReconstructError, match="broken.png"):
        reconstruct.load_inputs([bad], size=SIZE)


def test_video_frames_and_images_together(tmp_path, scene):
    import imageio_ffmpeg

    video = tmp_path / "my clip.mp4"
    writer = imageio_ffmpeg.write_frames(str(video), (64, 48), fps=4, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(8):
        writer.send(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.close()
    views = reconstruct.load_inputs([scene / "view_000.png", video], size=SIZE, video_frames=3)
    assert [v.get("frame_index") for v in views] == [None, 0, 4, 7]
    assert reconstruct.image_names(views) == ["view_000.png", "my_clip_frame000000.png", "my_clip_frame000004.png",
                                              "my_clip_frame000007.png"]
    assert len(reconstruct.load_inputs([video], size=SIZE)) == 2  # one frame per second by default
    assert len(reconstruct.load_inputs([scene, video], size=SIZE, video_fps=4, max_views=5)) == 5


# ----------------------------------------------------------------------------------------------- cameras


def _ground_truth_outputs(views):
    """Exact pointmaps of a rendered scene: global in camera 0's frame, local in each camera's, confidence 2."""
    w2c0 = np.linalg.inv(views[0]["camera_pose"].astype(np.float64))
    outputs = []
    for view in views:
        pts = view["pts3d"].astype(np.float64)  # (H, W, 3) world
        w2c = np.linalg.inv(view["camera_pose"].astype(np.float64))
        conf = np.full(pts.shape[:2], 2.0, np.float32)
        outputs.append(dict(pts3d_in_other_view=(pts @ w2c0[:3, :3].T + w2c0[:3, 3]).astype(np.float32),
                            pts3d_local=(pts @ w2c[:3, :3].T + w2c[:3, 3]).astype(np.float32),
                            conf=conf, conf_local=conf))
    gt_c2w = np.stack([w2c0 @ v["camera_pose"].astype(np.float64) for v in views])  # in camera 0's frame
    return outputs, gt_c2w


@pytest.mark.parametrize("solver, focal_range, resolution", [
    ("pnp", (1.0, 1.0), (64, 48)),  # upstream's estimator shares view 0's focal, so the views share one
    ("procrustes", (1.0, 1.0), (64, 48)),
    ("procrustes", (0.8, 1.2), (48, 64)),  # per-view focals, portrait
])
def test_ground_truth_pointmaps_give_exact_cameras(solver, focal_range, resolution):
    views = SyntheticScenes(1, 6, resolution, seed=3, focal_range=focal_range, split="test")[0]
    outputs, gt_c2w = _ground_truth_outputs(views)
    cams = estimate_cameras(outputs, solver)
    gt_focal = np.array([v["camera_intrinsics"][0, 0] for v in views])
    focal_rtol, rotation_deg, centre_rtol = CAMERA_TOLS[solver]
    assert cams.failed == ()
    assert np.abs(cams.focals / gt_focal - 1).max() <= focal_rtol
    relative = np.einsum("vij,vkj->vik", cams.c2w[:, :3, :3], gt_c2w[:, :3, :3])
    assert np.rad2deg(Rotation.from_matrix(relative).magnitude()).max() <= rotation_deg
    spread = np.linalg.norm(gt_c2w[:, :3, 3], axis=-1).max()
    assert np.linalg.norm(cams.c2w[:, :3, 3] - gt_c2w[:, :3, 3], axis=-1).max() <= centre_rtol * spread
    np.testing.assert_array_equal(cams.image_sizes, [resolution] * 6)
    np.testing.assert_allclose(cams.intrinsics[:, :2, 2], [np.array(resolution) / 2] * 6)


def test_export_writes_what_needs_no_camera_while_the_cameras_are_solved(tmp_path):
    """write_outputs given a pending camera future writes the PLY and the confidence maps at once, the files that
    need cameras once the future resolves, and then the same files as with the cameras given up front."""
    views = SyntheticScenes(1, 4, (64, 48), seed=3, split="test")[0]
    outputs, _ = _ground_truth_outputs(views)
    rng = np.random.default_rng(0)
    views = [dict(img=rng.uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32), path=f"view_{i}.png",
                  geometry=Geometry((64, 48), (64, 48), (0, 0, 64, 48))) for i in range(len(views))]
    cams = estimate_cameras(outputs, "procrustes")
    names = reconstruct.image_names(views)
    config = reconstruct.ReconstructConfig()
    (tmp_path / "overlap").mkdir(), (tmp_path / "given").mkdir()  # as atomic_folder hands them over
    pending = concurrent.futures.Future()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        export = pool.submit(reconstruct.write_outputs, tmp_path / "overlap", views, outputs, pending, names, config)
        ply, confidence = tmp_path / "overlap" / "points.ply", tmp_path / "overlap" / "confidence"
        deadline = time.monotonic() + 60
        while not (ply.exists() and len(list(confidence.glob("*.png"))) == 4 or export.done()
                   or time.monotonic() > deadline):
            time.sleep(0.01)
        assert not export.done(), export.exception()  # still waiting for the cameras, not failed
        assert ply.exists() and len(list(confidence.glob("*.png"))) == 4
        assert not (tmp_path / "overlap" / "cameras.json").exists()
        assert not (tmp_path / "overlap" / "depth").exists() or not any((tmp_path / "overlap" / "depth").iterdir())
        pending.set_result(cams)
        export.result(timeout=60)
    reconstruct.write_outputs(tmp_path / "given", views, outputs, cams, names, config)
    overlap = sorted(p.relative_to(tmp_path / "overlap") for p in (tmp_path / "overlap").rglob("*") if p.is_file())
    assert overlap == sorted(p.relative_to(tmp_path / "given") for p in (tmp_path / "given").rglob("*") if p.is_file())
    for path in overlap:
        assert (tmp_path / "overlap" / path).read_bytes() == (tmp_path / "given" / path).read_bytes(), path


def test_unusable_pointmaps_fall_back_to_identity_and_a_60_degree_focal():
    flat = np.zeros((48, 64, 3), np.float32)  # every point at the camera centre: no focal, no pose
    conf = np.full((48, 64), 2.0, np.float32)
    cams = estimate_cameras([dict(pts3d_in_other_view=flat, conf=conf, pts3d_local=flat,
                                  conf_local=conf)] * 2, "pnp")
    assert cams.failed == (0, 1)
    np.testing.assert_array_equal(cams.c2w, np.tile(np.eye(4), (2, 1, 1)))
    np.testing.assert_allclose(cams.focals, 64 / (2 * np.tan(np.radians(30))))


def test_pose_errors_vanish_for_a_similarity_of_the_ground_truth():
    rng = np.random.default_rng(1)
    gt = np.tile(np.eye(4), (5, 1, 1))
    gt[:, :3, :3] = Rotation.random(5, random_state=2).as_matrix()
    gt[:, :3, 3] = rng.normal(size=(5, 3))
    sim = np.eye(4)
    sim[:3, :3] = 2.5 * Rotation.random(random_state=3).as_matrix()
    sim[:3, 3] = [1.0, -2.0, 0.5]
    pred = sim @ gt
    pred[:, :3, :3] /= 2.5  # c2w rotations stay rotations; centres carry the scale
    np.testing.assert_allclose(align_cameras(pred, gt), gt, atol=1e-9)
    errors = pose_errors(pred, gt)
    assert errors["rotation_error_deg"] < 1e-6 and errors["translation_error"] < 1e-9
    assert errors["RRA_at_5"] == errors["RTA_at_5"] == errors["mAA_30"] == 1.0
    pred[2, :3, :3] = pred[2, :3, :3] @ Rotation.from_euler("z", 20, degrees=True).as_matrix()
    assert pose_errors(pred, gt)["RRA_at_15"] < 1.0


# ----------------------------------------------------------------------------------------------- new formats


def test_binary_colmap_tracks_pointmaps_and_glb_budget(tmp_path, capsys, checkpoint, scene):
    """The binary COLMAP model (pycolmap) is at the original 64x48 images with their names; every point's track is
    the pixel it came from (mapped back through our resize and crop, the pointmap there is the point); the GLB
    holds the budget's count of points (pygltflib), all of them points of the PLY (plyfile)."""
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, "reconstruct", scene, "--checkpoint", checkpoint, "--out", out, "--size", SIZE,
                           "--outputs", "ply,colmap,glb,pointmaps", "--max-glb-points", 500,
                           "--max-colmap-points", 2000, "--pnp-focal", "per-view")
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())  # each view's own focal (shared: all alike)
    assert summary["pnp_focal"] == "per-view" and len(set(summary["focals"])) > 1
    assert sorted(p.name for p in out.iterdir()) == [".fast3r-jax", "colmap", "pointmaps.npz", "points.ply",
                                                      "scene.glb", "summary.json"]
    assert sorted(p.name for p in (out / "colmap").iterdir()) == ["cameras.bin", "images.bin", "points3D.bin"]
    maps = np.load(out / "pointmaps.npz")
    assert sorted(maps.files) == sorted(f"{k}_{i}" for k in ("global", "conf", "local", "conf_local", "rgb")
                                        for i in range(NUM_VIEWS))
    assert maps["global_0"].dtype == np.float16 and maps["global_0"].shape == (SIZE, SIZE, 3)
    assert maps["rgb_0"].dtype == np.uint8 and maps["conf_local_0"].shape == (SIZE, SIZE)

    model = pycolmap.Reconstruction(str(out / "colmap"))
    names = [f"view_{i:03d}.png" for i in range(NUM_VIEWS)]
    assert sorted(image.name for image in model.images.values()) == names
    assert len(model.points3D) == 2000
    # Our resize and crop, inverted here from first principles: 64x48 -> 299x224 (short side to 224), centre crop.
    scale = SIZE / 48
    left = (round(64 * scale) - SIZE) // 2
    for image in model.images.values():
        camera = model.cameras[image.camera_id]
        assert (camera.width, camera.height) == (64, 48)
        view = names.index(image.name)
        for point2d_idx, point2d in enumerate(image.points2D):
            if point2d_idx % 50:
                continue  # a sample keeps the test quick
            point = model.points3D[point2d.point3D_id]
            assert [(e.image_id, e.point2D_idx) for e in point.track.elements] == [(image.image_id, point2d_idx)]
            col, row = np.round(point2d.xy * scale - 0.5 - [left, 0]).astype(int)  # COLMAP pixel -> view pixel
            np.testing.assert_allclose(maps[f"global_{view}"][row, col], point.xyz, rtol=2e-3, atol=2e-3)

    glb = pygltflib.GLTF2().load(str(out / "scene.glb"))
    accessor = glb.accessors[glb.meshes[0].primitives[0].attributes.POSITION]
    assert glb.nodes[0].name == "points" and accessor.count == 500
    view = glb.bufferViews[accessor.bufferView]
    glb_points = np.frombuffer(glb.binary_blob()[view.byteOffset:view.byteOffset + view.byteLength],
                               np.float32).reshape(-1, 3) * [1, -1, -1]
    ply = plyfile.PlyData.read(str(out / "points.ply"))["vertex"]
    ply_points = {tuple(p) for p in np.stack([ply[k] for k in "xyz"], -1).astype(np.float32).tolist()}
    assert len(ply) > 500 and all(tuple(p) in ply_points for p in glb_points.astype(np.float32).tolist())


def test_reconstructor_keeps_its_engine_between_calls(tmp_path, checkpoint, scene, monkeypatch):
    """Two calls of one Reconstructor load the checkpoint once and reuse one engine (no second build)."""
    loads = []
    real_load = reconstruct.load_model
    monkeypatch.setattr(reconstruct, "load_model", lambda path, *args: loads.append(path) or real_load(path, *args))
    rec = reconstruct.Reconstructor(checkpoint, compilation_cache_dir="off")
    config = reconstruct.ReconstructConfig(size=64, outputs=("ply",), pose_solver="procrustes")
    first = rec([scene], tmp_path / "a", config)
    built = dict(rec._engines)
    second = rec([scene], tmp_path / "b", config)
    assert len(loads) == 1 and rec._engines == built and len(built) == 1
    assert first["points"] == second["points"] and (tmp_path / "b" / "points.ply").is_file()


# ----------------------------------------------------------------------------------------------- hostile input


def _snapshot(*folders) -> dict:
    """Every file under the folders with its bytes: what a failed run must leave as it was."""
    return {p: p.read_bytes() for folder in folders for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def _png_header(path, width: int, height: int):
    """A PNG whose header claims width x height pixels (a decompression bomb of a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def _one_error(code: int, stderr: str, *culprits: str) -> str:
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, stderr
    assert all(c in errors[0] for c in culprits), errors[0]
    return errors[0]


@pytest.mark.parametrize("case", ["bomb", "dot", "huge_size", "corrupt_video", "no_point_kept", "no_space",
                                  "disk_full_while_writing", "parent_is_a_file"])
def test_hostile_input_fails_with_one_line_and_touches_nothing(tmp_path, capsys, checkpoint, scene, monkeypatch,
                                                               case):
    inputs, extra, culprits = [scene], ["--size", 64], []
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    if case == "bomb":
        inputs, culprits = [scene / "view_000.png", _png_header(work / "bomb.png", 100_000, 100_000)], ["bomb.png"]
    elif case == "dot":
        PIL.Image.new("RGB", (1, 1)).save(work / "dot.png")
        inputs, culprits = [scene / "view_000.png", work / "dot.png"], ["dot.png", "too small"]
    elif case == "huge_size":
        extra, culprits = ["--size", 1_600_000], ["--size 1600000", "memory"]
    elif case == "corrupt_video":
        (work / "clip.mp4").write_bytes(np.random.default_rng(0).integers(0, 255, 4000, np.uint8).tobytes())
        inputs, culprits = [scene, work / "clip.mp4"], ["clip.mp4"]
    elif case == "no_point_kept":
        extra, culprits = ["--size", 64, "--conf-threshold", 1e30], ["no point kept"]
    elif case == "no_space":
        monkeypatch.setattr(reconstruct.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
        culprits = [str(out), "free"]
    elif case == "disk_full_while_writing":
        def full(*_, **__):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "scene.glb")
        monkeypatch.setattr(reconstruct.export, "write_glb", full)
        culprits = ["No space left on device"]
    else:
        (work / "notes.txt").write_text("a file, not a folder")
        out, culprits = work / "notes.txt" / "out", ["cannot write into"]
    before = _snapshot(scene, work)
    code, stdout, stderr = _run(capsys, "reconstruct", *inputs, "--checkpoint", checkpoint, "--out", out, *extra)
    message = _one_error(code, stderr, *culprits)
    assert "ffmpeg version" not in message and stdout == ""
    assert not out.exists() and _snapshot(scene, work) == before  # nothing left, nothing touched


def test_a_bomb_and_a_dot_are_skipped_on_request(tmp_path, capsys, checkpoint, scene):
    images = tmp_path / "images"
    shutil.copytree(scene, images)
    _png_header(images / "bomb.png", 100_000, 100_000)
    PIL.Image.new("RGB", (1, 1)).save(images / "dot.png")
    code, _, stderr = _run(capsys, "reconstruct", images, "--checkpoint", checkpoint, "--out", tmp_path / "out",
                           "--size", 64, "--on-bad-image", "skip", "--outputs", "ply")
    assert code == 0, stderr
    assert "skipping bad input" in stderr and "bomb.png" in stderr and "dot.png" in stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["num_views"] == NUM_VIEWS


def test_malformed_ground_truth_is_noted_and_ignored(tmp_path, capsys, checkpoint, scene):
    images = tmp_path / "images"
    shutil.copytree(scene, images)
    cameras = json.loads((images / "cameras.json").read_text())
    (images / "cameras.json").write_text(json.dumps(dict(cameras, cameras=5)))
    code, stdout, stderr = _run(capsys, "reconstruct", images, "--checkpoint", checkpoint, "--out", tmp_path / "out",
                                "--size", 64, "--outputs", "cameras")
    assert code == 0, stderr
    assert f"ignoring {images / 'cameras.json'}" in stderr and "pose errors" not in stdout


@pytest.mark.parametrize("flag, value", [("--video-fps", "0"), ("--video-fps", "-2"), ("--conf-threshold", "nan"),
                                         ("--outputs", "ply,mesh"), ("--max-glb-points", "-1"),
                                         ("--max-pnp-points", "3"), ("--max-pnp-points", "many")])
def test_bad_flag_values_name_the_flag(tmp_path, capsys, scene, flag, value):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["reconstruct", str(scene), "--out", str(tmp_path / "out"), flag, value])
    assert exit_.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value", [("video_fps", 0.0), ("conf_threshold", float("nan")),
                                          ("outputs", ("ply", "mesh")), ("max_views", 0), ("max_pnp_points", 3),
                                          ("dtype", "float16")])
def test_config_check_names_the_setting(field, value):
    with pytest.raises(reconstruct.ReconstructError, match=field.replace("_", "-")):
        reconstruct.ReconstructConfig(**{field: value}).check()


# ----------------------------------------------------------------------------------------------- compilation cache


def test_second_run_hits_the_compilation_cache(tmp_path, checkpoint, scene):
    """Two runs as separate processes: the first fills JAX_COMPILATION_CACHE_DIR, the second compiles nothing new."""
    cache = tmp_path / "xla"
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def run(out: str) -> None:
        subprocess.run([sys.executable, "-m", "fast3r_jax.cli", "reconstruct", str(scene), "--checkpoint",
                        str(checkpoint), "--out", str(tmp_path / out), "--size", "64", "--outputs", "ply"],
                       env=env, check=True, capture_output=True)

    run("first")
    entries = sorted(p.name for p in cache.iterdir())
    assert entries  # the first run filled the cache
    run("second")
    assert sorted(p.name for p in cache.iterdir()) == entries  # every compilation of the second run was a hit


def test_warm_run_builds_no_model_and_writes_the_same_files(tmp_path, checkpoint, scene):
    """Two processes on one cache folder: the second takes the parameter tree and every engine program from it, so
    it never builds (traces) the model, and writes the same bytes. Our entries lost while XLA's cache stays: they
    are compiled and saved again (not re-serialized from XLA's, which would not run back). With the cache off
    nothing is kept."""
    cache = tmp_path / "xla"
    script = ("import sys; from fast3r_jax import reconstruct; from fast3r_jax.model import params; "
              "reconstruct.reconstruct([sys.argv[1]], sys.argv[2], reconstruct.ReconstructConfig(size=64), "
              "checkpoint=sys.argv[3], compilation_cache_dir=sys.argv[4]); "
              "print(params._abstract_model.cache_info().currsize)")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def run(out: str, cache_dir: str) -> int:
        done = subprocess.run([sys.executable, "-c", script, str(scene), str(tmp_path / out), str(checkpoint),
                               cache_dir], env=env, check=True, capture_output=True, text=True)
        return int(done.stdout.split()[-1])  # models built

    def files(out: str) -> dict:
        found = {p.relative_to(tmp_path / out): p.read_bytes() for p in (tmp_path / out).rglob("*") if p.is_file()}
        summary = json.loads(found.pop(pathlib.Path("summary.json")))
        return found | {"summary": {k: v for k, v in summary.items() if k not in ("timings", "out")}}

    assert run("cold", str(cache)) == 1
    entries = sorted(p.name for p in (cache / "fast3r-jax").iterdir())
    assert len(entries) == 4  # the parameter tree, the encoder, the fusion, the heads
    assert run("warm", str(cache)) == 0
    assert sorted(p.name for p in (cache / "fast3r-jax").iterdir()) == entries
    assert files("warm") == files("cold")
    shutil.rmtree(cache / "fast3r-jax")
    assert run("rebuilt", str(cache)) == 1 and sorted(p.name for p in (cache / "fast3r-jax").iterdir()) == entries
    assert run("warm again", str(cache)) == 0 and files("warm again") == files("cold")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "env")
    assert run("off", "off") == 1 and not (tmp_path / "env" / "fast3r-jax").exists()
