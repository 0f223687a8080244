"""Tiny evaluation-dataset fixtures in each dataset's on-disk layout, and an oracle predictor.

Every fixture shows the world plane z = PLANE_Z from a few posed cameras, so the expected intrinsics, poses, depth
and world points are known in closed form (the readers' tests and the evaluate.py end-to-end tests share them).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from fast3r_jax.evaluation import protocols as ev

W, H = 32, 24
PLANE_Z = 3.0

# ----------------------------------------------------------------------------
# Scene: cameras near the origin looking at the plane z = PLANE_Z.
# ----------------------------------------------------------------------------


def camera_pose(k: int) -> np.ndarray:
    """(4, 4) float64 camera-to-world pose of camera k: a small rotation and a shift."""
    axis = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
    rot, _ = cv2.Rodrigues(0.02 * (k + 1) * axis)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = (0.1 * k, -0.05 * k, 0.02 * k)
    return pose.astype(np.float32).astype(np.float64)  # values exactly representable in float32


def plane_depth(K: np.ndarray, c2w: np.ndarray, height: int = H, width: int = W) -> np.ndarray:
    """(H, W) z-depth of the plane z = PLANE_Z seen by a pinhole camera."""
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    dir_z = rays @ c2w[2, :3]  # world z of each ray
    return (PLANE_Z - c2w[2, 3]) / dir_z


def texture(k: int, height: int = H, width: int = W) -> np.ndarray:
    """(H, W, 3) uint8 test pattern, different for every k."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // (width - 1) + 37 * k) % 256
    g = (y * 255 // (height - 1) + 11 * k) % 256
    b = ((x // 4 + y // 4 + k) % 2) * 200 + 20
    return np.stack([r, g, b], -1).astype(np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """PNG, or JPEG at quality 100 without chroma subsampling (pixels within 3 levels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), jpeg if path.suffix == ".jpg" else [])


def write_plane(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def pinhole(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)


def depth_mm(K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """16-bit millimetre depth of the plane, with an invalid code, a far and a zero pixel."""
    mm = np.round(plane_depth(K, c2w) * 1000).astype(np.uint16)
    mm[0, 0], mm[1, 1], mm[2, 2] = 65535, 12000, 0
    return mm


# ----------------------------------------------------------------------------
# Layouts.
# ----------------------------------------------------------------------------

SEVEN_K = (30.0, 30.0, 16.0, 12.0)  # the fixture's intrinsics (the real dataset's are 525, 320, 240)
SEVEN_SEQS = {"seq-01": 8, "seq-02": 4}


def write_seven_scenes(root: Path) -> None:
    scene = root / "chess"
    scene.mkdir(parents=True)
    (scene / "TestSplit.txt").write_text("sequence1\nsequence2\n")
    (scene / "TrainSplit.txt").write_text("sequence3\n")
    (root / "notes.txt").write_text("not a scene")
    for s, (seq, n) in enumerate(SEVEN_SEQS.items()):
        for i in range(n):
            k = 10 * s + i
            stem = scene / seq / f"frame-{i:06d}"
            write_rgb(stem.with_name(stem.name + ".color.png"), texture(k))
            write_plane(stem.with_name(stem.name + ".depth.proj.png"), depth_mm(pinhole(*SEVEN_K), camera_pose(k)))
            np.savetxt(stem.with_name(stem.name + ".pose.txt"), camera_pose(k))


NRGBD_K = (28.0, 28.0, 16.0, 12.0)
NRGBD_FRAMES = 6
NRGBD_NAN_FRAME = 3
GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes


def write_nrgbd(root: Path) -> None:
    scene = root / "breakfast_room"
    lines = []
    for i in range(NRGBD_FRAMES):
        write_rgb(scene / "images" / f"img{i}.png", texture(i))
        write_plane(scene / "depth" / f"depth{i}.png", depth_mm(pinhole(*NRGBD_K), camera_pose(i)))
        pose_gl = camera_pose(i) @ GL_FLIP
        rows = [" ".join(f"{x:.9g}" for x in row) for row in pose_gl]
        lines += ["nan nan nan nan"] * 4 if i == NRGBD_NAN_FRAME else rows
    (scene / "poses.txt").write_text("\n".join(lines) + "\n")


DTU_K = pinhole(30.0, 31.0, 16.0, 12.0)
DTU_FRAMES = 5
DTU_PAIRS = {0: [2, 1, 4], 1: [3, 0, 2]}  # reference view: neighbours, best first


def write_dtu(root: Path) -> None:
    scan = root / "scan1"
    for i in range(DTU_FRAMES):
        name = f"{i:08d}"
        write_rgb(scan / "images" / f"{name}.jpg", texture(i))
        (scan / "depths").mkdir(parents=True, exist_ok=True)
        np.save(scan / "depths" / f"{name}.npy", plane_depth(DTU_K, camera_pose(i)).astype(np.float32))
        mask = np.full((H, W), 255, np.uint8)
        mask[:, :8] = 0
        write_plane(scan / "binary_masks" / f"{name}.png", mask)
        w2c = np.linalg.inv(camera_pose(i))
        text = "extrinsic\n" + "\n".join(" ".join(f"{x:.9g}" for x in row) for row in w2c)
        text += "\n\nintrinsic\n" + "\n".join(" ".join(f"{x:g}" for x in row) for row in DTU_K) + "\n\n425.0 2.5\n"
        (scan / "cams").mkdir(exist_ok=True)
        (scan / "cams" / f"{name}_cam.txt").write_text(text)
    pairs = [str(DTU_FRAMES)]
    for i in range(DTU_FRAMES):
        neighbours = DTU_PAIRS.get(i, [(i + 1) % DTU_FRAMES])
        pairs += [str(i), f"{len(neighbours)} " + " ".join(f"{n} {100.0 - j:.1f}" for j, n in enumerate(neighbours))]
    (scan / "pair.txt").write_text("\n".join(pairs) + "\n")


CO3D_SEQS = {("apple", "110_13051"): (list(range(1, 8)), W), ("cup", "58_3353"): ([10, 12, 14, 16, 18], H)}
CO3D_MAX_DEPTH = 8.0


def co3d_camera(frame: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, c2w) of a CO3D fixture frame; `width` 24 makes a square image."""
    return pinhole(28.0, 28.0, width / 2, H / 2), camera_pose(frame)


def write_co3d(root: Path, empty_masks: tuple[int, ...] = ()) -> None:
    """CO3D fixture; frames listed in `empty_masks` get an all-background mask (no valid depth)."""
    table = {"apple": {}, "ball": {}, "cup": {}}
    for (category, seq), (frames, width) in CO3D_SEQS.items():
        table[category][seq] = frames
        folder = root / category / seq
        for f in frames:
            K, c2w = co3d_camera(f, width)
            depth = plane_depth(K, c2w, H, width)
            write_rgb(folder / "images" / f"frame{f:06d}.jpg", texture(f, H, width))
            np.savez(
                folder / "images" / f"frame{f:06d}.npz",
                camera_pose=c2w.astype(np.float32),
                camera_intrinsics=K.astype(np.float32),
                maximum_depth=np.float32(CO3D_MAX_DEPTH),
            )
            write_plane(
                folder / "depths" / f"frame{f:06d}.jpg.geometric.png",
                np.round(depth / CO3D_MAX_DEPTH * 65535).astype(np.uint16),
            )
            mask = np.full((H, width), 255, np.uint8)
            mask[:, :4], mask[:, 4], mask[:, 5] = 0, 20, 30  # 20/255 is background, 30/255 foreground
            write_plane(folder / "masks" / f"frame{f:06d}.png", mask * (f not in empty_masks))
    (root / "selected_seqs_test.json").write_text(json.dumps(table))


RE10K_W, RE10K_H = 32, 18
RE10K_SEQS = {"00ab": 6, "01cd": 3}
RE10K_NORM = (0.9, 1.6, 0.5, 0.5)  # fx / W, fy / H, cx / W, cy / H


def re10k_timestamp(s: int, i: int) -> str:
    return str(1000000 * (s + 1) + 33367 * i)


def write_re10k(root: Path) -> None:
    for s, (seq, n) in enumerate(RE10K_SEQS.items()):
        lines = [f"https://www.youtube.com/watch?v={seq}"]
        for i in range(n):
            w2c = np.linalg.inv(camera_pose(i + s))
            columns = [re10k_timestamp(s, i), *map(str, RE10K_NORM), "0", "0"] + [f"{x:.9g}" for x in w2c[:3].ravel()]
            lines.append(" ".join(columns))
            write_rgb(root / "videos" / "test" / seq / f"{re10k_timestamp(s, i)}.jpg", texture(i + s, RE10K_H, RE10K_W))
        (root / "test").mkdir(parents=True, exist_ok=True)
        (root / "test" / f"{seq}.txt").write_text("\n".join(lines) + "\n")
    write_rgb(root / "videos" / "test" / "00ab" / "999.jpg", texture(0, RE10K_H, RE10K_W))  # no camera line
    (root / "videos" / "test" / "02ef").mkdir()  # a video without frames
    (root / "test" / "02ef.txt").write_text("https://x\n")


WRITERS = dict(seven=write_seven_scenes, nrgbd=write_nrgbd, dtu=write_dtu, co3d=write_co3d, re10k=write_re10k)


# ----------------------------------------------------------------------------
# An oracle model.
# ----------------------------------------------------------------------------


def camera_points(view) -> np.ndarray:
    """(H, W, 3) float64 points in the view's camera frame: the ground truth where valid, elsewhere the pixel's ray at
    the median valid depth (a model predicts some point for every pixel, on its ray)."""
    valid = view["valid_mask"]
    w2c = np.linalg.inv(view["camera_pose"].astype(np.float64))
    gt = view["pts3d"].astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    K = view["camera_intrinsics"].astype(np.float64)
    u, v = np.meshgrid(np.arange(valid.shape[1]), np.arange(valid.shape[0]))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(valid.shape)], axis=-1)
    return np.where(valid[..., None], gt, rays * np.median(gt[valid][:, 2]))


def oracle_prediction(views, global_scale: float = 2.5, local_scale: float = 0.7) -> ev.Prediction:
    """The model's four maps made from the ground truth: global points in view 0's camera frame and local points in
    each camera's frame, each at its own arbitrary scale (the model's frames and scale are its own too); conf is 2 on
    valid pixels and 1 elsewhere (PnP takes conf > 1)."""
    to_first = np.linalg.inv(views[0]["camera_pose"].astype(np.float64))
    pred = []
    for v in views:
        local = camera_points(v)
        c2w = to_first @ v["camera_pose"]
        glob = local @ c2w[:3, :3].T + c2w[:3, 3]
        conf = 1.0 + v["valid_mask"].astype(np.float32)
        pred.append({"pts3d_in_other_view": (global_scale * glob).astype(np.float32), "conf": conf,
                     "pts3d_local": (local_scale * local).astype(np.float32), "conf_local": conf})
    return pred


def oracle(views, index):
    return oracle_prediction(views)
