"""Evaluation dataset readers on tiny fixtures written in each dataset's layout.

Every fixture shows the world plane z = PLANE_Z from a few posed 32x24 cameras, so
the expected intrinsics, poses, depth and world points are known in closed form.
`eval_datasets_goldens.npz` holds the reference loaders' output on the same fixtures
(written by these functions), at small target sizes that exercise the LANCZOS /
BICUBIC rescale and the rounded centre crop: the reference SevenScenes / NRGBD / DTU /
Co3d_Multiview classes (7-Scenes and NRGBD with their fixed intrinsics set to the
fixture's, CO3D combinations drawn after random.seed(4)) and the RealEstate10K script's
parsing and crop function on the frames our reader picked. Portrait views were
transposed back to their true orientation.
"""

import re
from pathlib import Path

import numpy as np
import pytest

from fast3r_jax.data import eval_datasets as ed
from tests.helpers.eval_fixtures import (
    CO3D_SEQS,
    DTU_K,
    GL_FLIP,
    NRGBD_FRAMES,
    NRGBD_K,
    NRGBD_NAN_FRAME,
    PLANE_Z,
    RE10K_H,
    RE10K_NORM,
    RE10K_SEQS,
    RE10K_W,
    SEVEN_K,
    WRITERS,
    H,
    W,
    camera_pose,
    co3d_camera,
    depth_mm,
    pinhole,
    plane_depth,
    re10k_timestamp,
    texture,
    write_co3d,
    write_dtu,
)

DATA = Path(__file__).parent / "data"
GOLDENS = DATA / "eval_datasets_goldens.npz"
FIELDS = ("img", "depthmap", "camera_intrinsics", "camera_pose", "valid_mask", "true_shape")  # + pts3d of s0/v0


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """Each fixture written once, read-only for the tests."""
    out = {}
    for name, write in WRITERS.items():
        out[name] = tmp_path_factory.mktemp(name)
        write(out[name])
    return out


# ----------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------


def check_view(view: dict, K: np.ndarray, c2w: np.ndarray, plane_tol: float) -> None:
    """Format, intrinsics, pose, and world points: on the plane and equal to the unprojected depth."""
    h, w = view["img"].shape[:2]
    assert view["img"].dtype == np.uint8 and view["img"].shape == (h, w, 3)
    assert view["depthmap"].dtype == np.float32 and view["depthmap"].shape == (h, w)
    assert view["pts3d"].dtype == np.float32 and view["pts3d"].shape == (h, w, 3)
    assert view["valid_mask"].dtype == bool and view["valid_mask"].shape == (h, w)
    assert view["true_shape"].dtype == np.int32 and view["true_shape"].tolist() == [h, w]
    assert all(isinstance(view[k], str) for k in ("dataset", "label", "instance"))
    np.testing.assert_allclose(view["camera_intrinsics"], K, atol=1e-5)
    np.testing.assert_allclose(view["camera_pose"], c2w, atol=1e-6)
    valid = view["valid_mask"]
    np.testing.assert_array_equal(valid, view["depthmap"] > 0)
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((h, w))], -1)  # (H, W, 3)
    cam = rays * view["depthmap"][..., None]
    expected = cam @ c2w[:3, :3].T + c2w[:3, 3]
    np.testing.assert_allclose(view["pts3d"][valid], expected[valid], atol=1e-5)
    np.testing.assert_allclose(view["pts3d"][valid][:, 2], PLANE_Z, atol=plane_tol)


# ----------------------------------------------------------------------------
# 7-Scenes.
# ----------------------------------------------------------------------------


def test_seven_scenes_full_video_native_size(roots):
    data = ed.SevenScenes(roots["seven"], resolution=(W, H), kf_every=3, intrinsics=SEVEN_K)
    assert data.sequences == ["chess/seq-01", "chess/seq-02"] and len(data) == 2
    views = data[0]
    assert [v["label"] for v in views] == ["chess/seq-01/000000", "chess/seq-01/000003", "chess/seq-01/000006"]
    for view, k in zip(views, (0, 3, 6)):
        assert view["dataset"] == "7scenes" and view["instance"] == f"frame-{k:06d}.color.png"
        np.testing.assert_array_equal(view["img"], texture(k))  # PNG and no resampling: exact
        mm = depth_mm(pinhole(*SEVEN_K), camera_pose(k))
        kept = np.where((mm < 65535) & (mm <= 10000), mm, 0).astype(np.float32)
        np.testing.assert_array_equal(view["depthmap"], kept / np.float32(1000))
        assert not view["valid_mask"][:3, :3].diagonal().any()  # invalid code, > 10 m, 0
        check_view(view, pinhole(*SEVEN_K), camera_pose(k), plane_tol=1e-3)  # mm quantisation


def test_seven_scenes_benchmark_size_intrinsics(roots):
    """Default 512: 32x24 is scaled by 512/24 (to 682x512) and centre-cropped to 512x512."""
    view = ed.SevenScenes(roots["seven"], kf_every=4, intrinsics=SEVEN_K, seq_id="seq-02")[0][0]
    scale = 512 / 24 + 1e-8
    residue = 0.5 * (np.array([32, 24]) * scale - [682, 512])  # floor of the scaled size, split on both sides
    cx, cy = 16.5 * scale - 0.5 - residue[0] - 85, 12.5 * scale - 0.5 - residue[1]  # crop (682 - 512) / 2 columns
    K = pinhole(30 * scale, 30 * scale, cx, cy)
    assert view["true_shape"].tolist() == [512, 512]
    check_view(view, K, camera_pose(10), plane_tol=0.05)  # nearest depth: off the plane by a pixel's depth change
    source = depth_mm(pinhole(*SEVEN_K), camera_pose(10)).astype(np.float32) / np.float32(1000)
    assert set(np.unique(view["depthmap"])) <= set(np.unique(source)) | {0}


def test_seven_scenes_sampled_frames(roots):
    data = ed.SevenScenes(roots["seven"], resolution=(W, H), full_video=False, num_frames=3, max_thresh=2,
                          intrinsics=SEVEN_K, seed=3)
    views = data[0]
    frames = [int(v["label"].rsplit("/", 1)[1]) for v in views]
    steps = np.diff(sorted(frames))
    assert len(frames) == 3 and ((steps >= 1) & (steps <= 2)).all()
    assert frames in (sorted(frames), sorted(frames)[::-1])
    assert [v["label"] for v in data[0]] == [v["label"] for v in views]  # same seed, same sample
    for view, k in zip(views, frames):
        check_view(view, pinhole(*SEVEN_K), camera_pose(k), plane_tol=1e-3)


def test_sample_frames_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        picked = ed.sample_frames(20, 4, rng, min_thresh=3, max_thresh=3)
        ordered = sorted(picked)
        assert picked in (ordered, ordered[::-1]) and len(set(picked)) == 4
        assert 0 <= ordered[0] and ordered[-1] < 20 and (np.diff(ordered) <= 3).all()
    assert ed.sample_frames(4, 4, rng) in ([0, 1, 2, 3], [3, 2, 1, 0])
    with pytest.raises(ValueError, match="cannot sample 5 frames from a sequence of 4"):
        ed.sample_frames(4, 5, rng)


# ----------------------------------------------------------------------------
# Neural RGB-D.
# ----------------------------------------------------------------------------


def test_nrgbd_poses_opengl_to_opencv(roots):
    data = ed.NRGBD(roots["nrgbd"], resolution=(W, H), kf_every=1, intrinsics=NRGBD_K)
    views = data[0]
    assert len(data) == 1 and [v["instance"] for v in views] == [f"img{i}.png" for i in range(NRGBD_FRAMES)]
    for i, view in enumerate(views):
        assert view["label"] == f"breakfast_room/{i}" and view["dataset"] == "nrgbd"
        if i == NRGBD_NAN_FRAME:  # invalid pose: identity in OpenGL axes, as the reference does
            np.testing.assert_array_equal(view["camera_pose"], GL_FLIP)
            continue
        check_view(view, pinhole(*NRGBD_K), camera_pose(i), plane_tol=1e-3)


def test_load_nrgbd_poses_validity(roots):
    poses, valid = ed.load_nrgbd_poses(str(roots["nrgbd"] / "breakfast_room" / "poses.txt"))
    assert poses.shape == (NRGBD_FRAMES, 4, 4) and valid.tolist() == [i != NRGBD_NAN_FRAME for i in range(NRGBD_FRAMES)]
    np.testing.assert_allclose(poses[1], camera_pose(1) @ GL_FLIP, atol=1e-7)


# ----------------------------------------------------------------------------
# DTU.
# ----------------------------------------------------------------------------


def test_dtu_full_video_last_first_masked(roots):
    views = ed.DTU(roots["dtu"], resolution=(W, H), kf_every=2)[0]
    assert [v["instance"] for v in views] == ["00000004.jpg", "00000002.jpg", "00000000.jpg"]
    for view, k in zip(views, (4, 2, 0)):
        assert view["label"] == f"scan1/{k:08d}.jpg" and view["dataset"] == "dtu"
        depth = plane_depth(DTU_K, camera_pose(k)).astype(np.float32)
        # mask columns 0..7 eroded by the 10x10 box (offsets -5..4): columns 0..12 lose their depth
        np.testing.assert_array_equal(view["depthmap"][:, :13], 0)
        np.testing.assert_array_equal(view["depthmap"][:, 13:], depth[:, 13:])
        check_view(view, DTU_K, camera_pose(k), plane_tol=1e-5)
        assert np.abs(view["img"].astype(int) - texture(k)).max() <= 3  # JPEG at quality 100, no chroma subsampling


def test_dtu_pairs(roots):
    data = ed.DTU(roots["dtu"], resolution=(W, H), full_video=False, num_frames=2, num_seq=2)
    assert len(data) == 2
    assert [v["instance"] for v in data[0]] == ["00000000.jpg", "00000002.jpg", "00000001.jpg"]
    assert [v["instance"] for v in data[1]] == ["00000001.jpg", "00000003.jpg", "00000000.jpg"]
    assert ed.load_dtu_pairs(str(roots["dtu"] / "scan1" / "pair.txt"), 0, 3) == [0, 2, 1, 4]


def test_load_mvsnet_cam(roots):
    K, w2c = ed.load_mvsnet_cam(str(roots["dtu"] / "scan1" / "cams" / "00000003_cam.txt"))
    np.testing.assert_array_equal(K, DTU_K)
    np.testing.assert_allclose(w2c, np.linalg.inv(camera_pose(3)), atol=1e-7)


# ----------------------------------------------------------------------------
# CO3D.
# ----------------------------------------------------------------------------


def co3d_expected(view: dict) -> tuple[np.ndarray, np.ndarray]:
    """(K, c2w) written for the frame a CO3D view came from."""
    frame = int(re.fullmatch(r"frame(\d{6})\.jpg", view["instance"]).group(1))
    category, seq = view["label"].split("/")
    return co3d_camera(frame, CO3D_SEQS[category, seq][1])


def test_co3d_views(roots):
    data = ed.Co3dPoseEval(roots["co3d"], num_views=3, resolution=(W, H), num_samples=6, combo_seed=1)
    assert data.sequences == list(CO3D_SEQS) and len(data) == 6  # the empty category is dropped
    assert data.first_combination == (0, 2, 34)  # random.Random(1) draws it like the reference's sampler
    shapes = set()
    for i in range(len(data)):
        views = data[i]
        assert len(views) == 3 and all(v["dataset"] == "Co3d_v2" for v in views)
        for view in views:
            K, c2w = co3d_expected(view)
            if view["label"].startswith("apple"):  # 32x24 at its own size
                check_view(view, K, c2w, plane_tol=1e-4)  # 16-bit depth quantisation
                assert not view["valid_mask"][:, :5].any() and view["valid_mask"][:, 5:].all()  # mask > 0.1
                continue
            # square 24x24 frames: scaled by 4/3 to 32x32, then 4 rows (landscape) or 4 columns
            # (portrait, a coin flip like the reference) are cropped away
            shape = tuple(view["true_shape"].tolist())
            shapes.add(shape)
            s = 4 / 3 + 1e-8
            c = 12.5 * s - 0.5 - 0.5 * (24 * s - 32)
            K = pinhole(28 * s, 28 * s, c - 4 * (shape == (32, 24)), c - 4 * (shape == (24, 32)))
            check_view(view, K, c2w, plane_tol=0.05)
    assert shapes == {(24, 32), (32, 24)}


def co3d_positions(data: ed.Co3dPoseEval, item: int, num_frames: int) -> list[int]:
    """Pool positions of a sample, in loading order: the first combination jittered by -4..4 and clipped."""
    rng = np.random.default_rng(777 + item)
    positions = [max(0, min(p + int(rng.integers(-4, 5)), num_frames - 1)) for p in data.first_combination]
    return positions[::-1]


def test_co3d_first_combination_jitter(roots):
    """Views are the first combination's indices moved by -4..4, clipped, loaded last index first."""
    data = ed.Co3dPoseEval(roots["co3d"], num_views=3, resolution=(W, H), num_samples=4, combo_seed=0)
    frames = CO3D_SEQS["apple", "110_13051"][0]
    apple = [i for i in range(len(data)) if int(data.items[i]) % 2 == 0]  # odd items: the cup sequence
    assert apple
    for i in apple:
        expected = [f"frame{frames[p]:06d}.jpg" for p in co3d_positions(data, int(data.items[i]), len(frames))]
        assert [v["instance"] for v in data[i]] == expected


def test_co3d_empty_depth_frames_are_replaced(tmp_path):
    """Frames whose masked depth is empty are skipped; the missing views repeat valid ones;
    a sequence without any valid frame passes the sample on to the next sequence."""
    frames = CO3D_SEQS["apple", "110_13051"][0]
    write_co3d(tmp_path, empty_masks=(frames[0],))
    data = ed.Co3dPoseEval(tmp_path, num_views=3, resolution=(W, H), num_samples=8, combo_seed=0)
    replaced = 0
    for i in range(len(data)):
        if int(data.items[i]) % 2:
            continue
        valid = [f"frame{frames[p]:06d}.jpg" for p in co3d_positions(data, int(data.items[i]), len(frames)) if p > 0]
        names = [v["instance"] for v in data[i]]
        assert len(names) == 3 and names[: len(valid)] == valid and set(names[len(valid) :]) <= set(valid)
        replaced += len(valid) < 3
    assert replaced > 0

    write_co3d(tmp_path, empty_masks=tuple(frames))
    data = ed.Co3dPoseEval(tmp_path, num_views=3, resolution=(W, H), num_samples=4, combo_seed=0)
    assert all(v["label"] == "cup/58_3353" for i in range(len(data)) for v in data[i])


def test_co3d_no_valid_frame_anywhere(tmp_path):
    write_co3d(tmp_path, empty_masks=tuple(range(20)))
    with pytest.raises(ValueError, match="no valid views"):
        ed.Co3dPoseEval(tmp_path, num_views=3, resolution=(W, H), num_samples=1)[0]


# ----------------------------------------------------------------------------
# RealEstate10K.
# ----------------------------------------------------------------------------


def test_re10k_cameras_and_images(roots):
    data = ed.RealEstate10KPoses(roots["re10k"], num_views=4, resolution=(RE10K_W, RE10K_H), seed=2)
    assert data.sequences == ["00ab", "01cd"]  # the video without frames is left out
    fx, fy, cx, cy = RE10K_NORM
    K = pinhole(fx * RE10K_W, fy * RE10K_H, cx * RE10K_W, cy * RE10K_H)
    for index, s in ((0, 0), (1, 1)):
        views = data[index]
        stamps = [v["instance"][:-4] for v in views]
        assert len(views) == min(4, list(RE10K_SEQS.values())[s]) and stamps == sorted(stamps)
        for view in views:
            i = [re10k_timestamp(s, j) for j in range(10)].index(view["instance"][:-4])
            assert view["dataset"] == "RealEstate10K" and view["label"] == list(RE10K_SEQS)[s]
            np.testing.assert_allclose(view["camera_intrinsics"], K, atol=1e-5)
            np.testing.assert_allclose(view["camera_pose"], camera_pose(i + s), atol=1e-6)
            assert not view["valid_mask"].any() and not view["depthmap"].any() and not view["pts3d"].any()
            assert view["img"].shape == (RE10K_H, RE10K_W, 3)


def test_re10k_resized_and_subset(roots, tmp_path):
    (tmp_path / "subset.txt").write_text("01cd\nmissing\n")
    data = ed.RealEstate10KPoses(roots["re10k"], num_views=10, resolution=(16, 8), sequences=tmp_path / "subset.txt")
    assert data.sequences == ["01cd"]
    views = data[0]
    assert len(views) == 3
    # 32x18 -> 16x9 (scale 1/2 + 1e-8), then crop 16x8: the offset 0.5 rounds to 0
    s = 0.5 + 1e-8
    fx, fy = RE10K_NORM[0] * RE10K_W, RE10K_NORM[1] * RE10K_H
    K = pinhole(fx * s, fy * s, 16.5 * s - 0.5 - 0.5 * (32 * s - 16), 9.5 * s - 0.5 - 0.5 * (18 * s - 9))
    for view in views:
        assert view["true_shape"].tolist() == [8, 16]
        np.testing.assert_allclose(view["camera_intrinsics"], K, atol=1e-5)


def test_load_re10k_cameras(roots):
    cams = ed.load_re10k_cameras(str(roots["re10k"] / "test" / "00ab.txt"))
    assert list(cams) == [re10k_timestamp(0, i) for i in range(6)]
    norm, w2c = cams[re10k_timestamp(0, 2)]
    np.testing.assert_array_equal(norm, RE10K_NORM)
    np.testing.assert_allclose(w2c, np.linalg.inv(camera_pose(2)), atol=1e-8)


# ----------------------------------------------------------------------------
# Crop / resize rules.
# ----------------------------------------------------------------------------


def test_bad_resolution():
    with pytest.raises(ValueError, match="W >= H"):
        ed.as_resolution((16, 32))
    assert ed.as_resolution(512) == (512, 512)


# ----------------------------------------------------------------------------
# Missing and malformed inputs: one clear error naming the file.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda p: ed.SevenScenes(p), "7-Scenes root folder not found"),
        (lambda p: ed.NRGBD(p), "NRGBD root folder not found"),
        (lambda p: ed.DTU(p), "DTU root folder not found"),
        (lambda p: ed.Co3dPoseEval(p, 3), "CO3D root folder not found"),
        (lambda p: ed.RealEstate10KPoses(p), "RealEstate10K root folder not found"),
    ],
)
def test_missing_root(tmp_path, make, what):
    with pytest.raises(FileNotFoundError, match=f"{what}: .*nowhere"):
        make(tmp_path / "nowhere")


def _fresh(tmp_path: Path, name: str) -> Path:
    WRITERS[name](tmp_path)
    return tmp_path


def test_seven_scenes_malformed_and_missing(tmp_path):
    root = _fresh(tmp_path, "seven")
    pose = root / "chess" / "seq-01" / "frame-000000.pose.txt"
    pose.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    data = ed.SevenScenes(root, resolution=(W, H), intrinsics=SEVEN_K)
    with pytest.raises(ValueError, match=f"7-Scenes pose file {re.escape(str(pose))} must hold 16 numbers, got 12"):
        data[0]
    pose.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 x 1\n")
    with pytest.raises(ValueError, match="malformed 7-Scenes pose file .*frame-000000.pose.txt"):
        data[0]
    (root / "chess" / "seq-02" / "frame-000000.depth.proj.png").unlink()
    with pytest.raises(FileNotFoundError, match="7scenes: depth map not found: .*seq-02/frame-000000.depth.proj.png"):
        data[1]
    (root / "chess" / "TestSplit.txt").unlink()
    with pytest.raises(FileNotFoundError, match="7-Scenes split file not found: .*chess/TestSplit.txt"):
        ed.SevenScenes(root)


def test_nrgbd_malformed(tmp_path):
    root = _fresh(tmp_path, "nrgbd")
    poses = root / "breakfast_room" / "poses.txt"
    poses.write_text("\n".join(poses.read_text().splitlines()[:-1]))
    with pytest.raises(ValueError, match="NRGBD poses file .*poses.txt has 23 lines, not a multiple of 4"):
        ed.NRGBD(root, resolution=(W, H), intrinsics=NRGBD_K)[0]
    poses.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n" * 2)
    with pytest.raises(ValueError, match="poses file .*poses.txt has 2 poses for 6 images"):
        ed.NRGBD(root, resolution=(W, H), intrinsics=NRGBD_K)[0]
    (root / "breakfast_room" / "images" / "img2.png").write_bytes(b"not a png")
    poses.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n" * 6)
    with pytest.raises(ValueError, match="nrgbd: cannot decode image .*img2.png"):
        ed.NRGBD(root, resolution=(W, H), kf_every=1, intrinsics=NRGBD_K)[0]


def test_dtu_malformed(tmp_path):
    root = _fresh(tmp_path, "dtu")
    cam = root / "scan1" / "cams" / "00000002_cam.txt"
    cam.write_text(cam.read_text().replace("intrinsic", "intrinsics"))
    with pytest.raises(ValueError, match="malformed DTU camera file .*00000002_cam.txt"):
        ed.DTU(root, resolution=(W, H), kf_every=1)[0]
    (root / "scan1" / "pair.txt").write_text("5\n0\n")
    with pytest.raises(ValueError, match="malformed DTU pair file .*pair.txt for view 0"):
        ed.DTU(root, resolution=(W, H), full_video=False)[0]
    np.save(root / "scan1" / "depths" / "00000000.npy", np.zeros((H, W + 1), np.float32))
    with pytest.raises(ValueError, match="has shape \\(24, 32\\) but its depth map has shape \\(24, 33\\)"):
        ed.DTU(root, resolution=(W, H))[0]
    write_dtu(root)
    cam = root / "scan1" / "cams" / "00000000_cam.txt"
    cam.write_text(cam.read_text().replace("30 0 16", "30 0 4"))  # principal point 4 px from the border
    with pytest.raises(ValueError, match="00000000.jpg: principal point \\(4, 12\\) is too close to the border"):
        ed.DTU(root, resolution=(W, H))[0]


def test_co3d_malformed(tmp_path):
    root = _fresh(tmp_path, "co3d")
    table = root / "selected_seqs_test.json"
    table.write_text('{"apple": [1, 2]}')
    with pytest.raises(ValueError, match="malformed CO3D sequence list .*selected_seqs_test.json"):
        ed.Co3dPoseEval(root, 3)
    with pytest.raises(FileNotFoundError, match="CO3D sequence list file not found: .*selected_seqs_train.json"):
        ed.Co3dPoseEval(root, 3, split="train")
    write_co3d(root)
    for f in CO3D_SEQS["apple", "110_13051"][0]:
        np.savez(root / "apple" / "110_13051" / "images" / f"frame{f:06d}.npz", camera_pose=np.eye(4))
    data = ed.Co3dPoseEval(root, 3, resolution=(W, H), num_samples=4, combo_seed=0)
    apple = next(i for i in range(len(data)) if int(data.items[i]) % 2 == 0)
    missing_keys = "Co3d_v2: .*110_13051/images/frame0000\\d\\d.npz lacks \\['camera_intrinsics'"
    with pytest.raises(ValueError, match=missing_keys):
        data[apple]


def test_re10k_malformed(tmp_path):
    root = _fresh(tmp_path, "re10k")
    cams = root / "test" / "01cd.txt"
    lines = cams.read_text().splitlines()
    cams.write_text("\n".join(lines[:2] + [lines[2].rsplit(" ", 1)[0]] + lines[3:]))
    data = ed.RealEstate10KPoses(root)
    message = "malformed line 3 of RealEstate10K camera file .*01cd.txt: expected 19 columns, got 18"
    with pytest.raises(ValueError, match=message):
        data[1]
    cams.unlink()
    with pytest.raises(FileNotFoundError, match="RealEstate10K camera file not found: .*01cd.txt"):
        data[1]


def test_index_out_of_range(roots):
    data = ed.DTU(roots["dtu"], resolution=(W, H))
    with pytest.raises(IndexError):
        data[1]
    assert len(list(data)) == 1


# ----------------------------------------------------------------------------
# Reference loaders' output on the same fixtures.
# ----------------------------------------------------------------------------

GOLDEN_CASES = {
    "seven_full": lambda r: ed.SevenScenes(r["seven"], resolution=(20, 16), kf_every=3, intrinsics=SEVEN_K),
    "seven_sampled": lambda r: ed.SevenScenes(r["seven"], resolution=(40, 32), full_video=False, num_frames=3,
                                              intrinsics=SEVEN_K, seed=5),
    "nrgbd_full": lambda r: ed.NRGBD(r["nrgbd"], resolution=(20, 16), kf_every=2, intrinsics=NRGBD_K),
    "nrgbd_sampled": lambda r: ed.NRGBD(r["nrgbd"], resolution=(40, 32), full_video=False, num_frames=4,
                                        intrinsics=NRGBD_K, seed=9),
    "dtu_full": lambda r: ed.DTU(r["dtu"], resolution=(20, 16), kf_every=2),
    "dtu_pairs": lambda r: ed.DTU(r["dtu"], resolution=(40, 32), full_video=False, num_frames=2, num_seq=2),
    "co3d": lambda r: ed.Co3dPoseEval(r["co3d"], num_views=3, resolution=(24, 16), num_samples=4, combo_seed=4),
    "re10k": lambda r: ed.RealEstate10KPoses(r["re10k"], num_views=4, resolution=(20, 8), seed=1),
}
JPEG_CASES = ("dtu", "co3d", "re10k")  # decoded by the same OpenCV, but an encoder change could move pixels


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_matches_reference_loaders(roots, case):
    golden = np.load(GOLDENS)
    data = GOLDEN_CASES[case](roots)
    num_samples = int(golden[f"{case}/num_samples"])
    assert len(data) == num_samples
    for s in range(num_samples):
        views = data[s]
        prefix = f"{case}/s{s}"
        assert [v["label"] + "|" + v["instance"] for v in views] == golden[f"{prefix}/names"].tolist()
        for v, view in enumerate(views):
            ref = {f: golden[f"{prefix}/v{v}/{f}"] for f in FIELDS}
            np.testing.assert_array_equal(view["true_shape"], ref["true_shape"])
            if case.startswith(JPEG_CASES):
                assert np.abs(view["img"].astype(int) - ref["img"]).max() <= 2
            else:
                np.testing.assert_array_equal(view["img"], ref["img"])
            np.testing.assert_array_equal(view["depthmap"], ref["depthmap"])
            np.testing.assert_allclose(view["camera_intrinsics"], ref["camera_intrinsics"], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(view["camera_pose"], ref["camera_pose"], rtol=0, atol=2e-6)
            np.testing.assert_array_equal(view["valid_mask"], ref["valid_mask"])
            if s == v == 0:
                np.testing.assert_allclose(view["pts3d"], golden[f"{prefix}/v0/pts3d"], rtol=0, atol=1e-5)
