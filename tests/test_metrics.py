"""Tests of the evaluation metrics against the upstream goldens and closed forms."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree

from fast3r_jax.geometry import metrics
from fast3r_jax.geometry.transforms import fit_similarity

DATA = pathlib.Path(__file__).parent / "data"
POSE_KEYS = ("RRA_at_5", "RRA_at_15", "RRA_at_30", "RTA_at_5", "RTA_at_15", "RTA_at_30", "mAA_30")

ANGLE_ATOL_DEG = 1e-5  # float32 angles: measured 0 except one translation angle off by one ulp (3.8e-6 at 52 deg)
# float32 rounding floors of "identical" inputs: each ulp of a trace near 3 moves the rotation angle on the acos
# tangent line by 4.8e-4 degrees; a cosine a few ulp below 1 gives a translation angle of 0.02-0.04 degrees.
IDENTICAL_ROT_ATOL_DEG_F32 = 2e-3
IDENTICAL_TRANS_MAX_DEG_F32 = 0.05
# float64: acos(sqrt(1 - 1e-15)) = 1.8e-6 degrees is the translation floor, plus rounding.
IDENTICAL_TRANS_ATOL_DEG_F64 = 1e-5
FRACTION_ATOL = 0.0  # RRA / RTA: k / P in float32, measured exact
MAA_ATOL = 1e-6  # measured 6e-8 (one ulp: float32 summation order of the 31 bins)
RECON_ATOL = 1e-10  # float64, measured 0
ALIGN_ATOL = 1e-5  # float32 aligned points, measured 2.7e-7
CLOSED_FORM_ATOL_DEG = 1e-6  # float64 closed forms

# Angle reported for identical rotations: tangent line of acos at 1 - 1e-4, evaluated at cosine 1.
_BOUND = 1.0 - 1e-4
ROTATION_FLOOR_DEG = math.degrees(math.acos(_BOUND) - (1.0 - _BOUND) / math.sqrt(1.0 - _BOUND**2))


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(DATA / "metric_goldens.npz"))


def _rot_z(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation(axis, deg):
    """Rodrigues rotation about a unit axis."""
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rad = math.radians(deg)
    return np.eye(3) + math.sin(rad) * k + (1 - math.cos(rad)) * k @ k


def _poses(rotations, centers):
    c2w = np.tile(np.eye(4), (len(rotations), 1, 1))
    c2w[:, :3, :3] = rotations
    c2w[:, :3, 3] = centers
    return c2w


def _random_poses(rng, n):
    rotations = [_rotation(rng.standard_normal(3), rng.uniform(10, 170)) for _ in range(n)]
    return _poses(np.stack(rotations), rng.standard_normal((n, 3)) * 2)


# ---------------------------------------------------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["cams5", "synthpnp"])
def test_relative_pose_errors_match_golden(golden, case):
    r_err, t_err = metrics.relative_pose_errors(golden[f"{case}_pred_c2w"], golden[f"{case}_gt_c2w"])
    assert r_err.dtype == np.float32 and r_err.shape == golden[f"{case}_rel_rangle_deg"].shape
    np.testing.assert_allclose(r_err, golden[f"{case}_rel_rangle_deg"], rtol=0, atol=ANGLE_ATOL_DEG)
    np.testing.assert_allclose(t_err, golden[f"{case}_rel_tangle_deg"], rtol=0, atol=ANGLE_ATOL_DEG)


def test_relative_pose_errors_inside_a_larger_jit(golden):
    # Fused with the caller's ops, the float32 rounding must stay the reference's (no FMA contraction).
    @jax.jit
    def errors(pred, gt):
        r_err, t_err = metrics.relative_pose_errors(pred * 1.0, gt * 1.0)
        return r_err * 1.0, t_err + 0.0

    r_err, t_err = errors(golden["synthpnp_pred_c2w"], golden["synthpnp_gt_c2w"])
    np.testing.assert_allclose(r_err, golden["synthpnp_rel_rangle_deg"], rtol=0, atol=ANGLE_ATOL_DEG)
    np.testing.assert_allclose(t_err, golden["synthpnp_rel_tangle_deg"], rtol=0, atol=ANGLE_ATOL_DEG)


@pytest.mark.parametrize("case", ["cams5", "synthpnp"])
def test_camera_pose_metrics_match_golden(golden, case):
    result = metrics.camera_pose_metrics(golden[f"{case}_pred_c2w"], golden[f"{case}_gt_c2w"])
    assert tuple(result) == POSE_KEYS
    for key in POSE_KEYS:
        atol = MAA_ATOL if key.startswith("mAA") else FRACTION_ATOL
        np.testing.assert_allclose(result[key], golden[f"{case}_{key}"], rtol=0, atol=atol, err_msg=key)


def test_mean_average_accuracy_golden_from_golden_errors(golden):
    maa = metrics.mean_average_accuracy(golden["cams5_rel_rangle_deg"], golden["cams5_rel_tangle_deg"])
    np.testing.assert_allclose(maa, golden["cams5_mAA_30"], rtol=0, atol=MAA_ATOL)
    # Closed form: max errors 3.0, 8.0, 20.0, 8.66, 21.3, 27.2 fall in bins 3, 8, 20, 8, 22, 28 of 31; the other
    # four pairs exceed 30 degrees. mAA = sum(31 - bin) / (31 * 10).
    np.testing.assert_allclose(maa, 97 / 310, rtol=0, atol=MAA_ATOL)


def test_recon_metrics_match_golden(golden):
    gt, rec = golden["recon_gt_points"], golden["recon_rec_points"]
    gt_n, rec_n = golden["recon_gt_normals"], golden["recon_rec_normals"]
    np.testing.assert_allclose(
        metrics.accuracy(gt, rec, gt_n, rec_n), golden["recon_accuracy"], rtol=0, atol=RECON_ATOL)
    np.testing.assert_allclose(
        metrics.completion(gt, rec, gt_n, rec_n), golden["recon_completion"], rtol=0, atol=RECON_ATOL)
    np.testing.assert_allclose(metrics.accuracy(gt, rec), golden["recon_accuracy"][:2], rtol=0, atol=RECON_ATOL)
    np.testing.assert_allclose(metrics.completion(gt, rec), golden["recon_completion"][:2], rtol=0, atol=RECON_ATOL)


@pytest.mark.parametrize("view", [0, 1, 2])
def test_fit_similarity_matches_reference_registration(view):
    # Upstream's align_local_pts3d_to_global (roma.rigid_points_registration with scale, all pixels): views 0 and 1
    # need the reflection fix (det(U V^T) < 0), view 2 does not.
    pose = np.load(DATA / "pose_goldens.npz")
    local = pose[f"tiny_pred_v{view}_pts3d_local"].reshape(-1, 3)
    glob = pose[f"tiny_pred_v{view}_pts3d_in_other_view"].reshape(-1, 3)
    scale, rot, trans = fit_similarity(local, glob)
    aligned = scale * local @ np.asarray(rot).T + trans
    np.testing.assert_allclose(aligned, pose[f"tiny_v{view}_pts3d_local_aligned_to_global"].reshape(-1, 3),
                               rtol=0, atol=ALIGN_ATOL)


# ---------------------------------------------------------------------------------------------------------------------
# Camera-pose closed forms
# ---------------------------------------------------------------------------------------------------------------------


def test_pair_order_is_torch_combinations():
    first, second = metrics.pair_indices(4)
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_identical_poses_float64():
    poses = _random_poses(np.random.default_rng(0), 5)
    with jax.enable_x64(True):
        r_err, t_err = metrics.relative_pose_errors(poses, poses)
        assert r_err.dtype == np.float64
        # Identical rotations sit on the linear extension of acos: the floor, not 0.
        np.testing.assert_allclose(r_err, ROTATION_FLOOR_DEG, rtol=0, atol=CLOSED_FORM_ATOL_DEG)
        np.testing.assert_allclose(t_err, 0.0, rtol=0, atol=IDENTICAL_TRANS_ATOL_DEG_F64)
        assert metrics.camera_pose_metrics(poses, poses) == dict.fromkeys(POSE_KEYS, 1.0)


def test_identical_poses_float32():
    poses = _random_poses(np.random.default_rng(1), 6).astype(np.float32)
    r_err, t_err = metrics.relative_pose_errors(poses, poses)
    np.testing.assert_allclose(r_err, ROTATION_FLOOR_DEG, rtol=0, atol=IDENTICAL_ROT_ATOL_DEG_F32)
    assert np.all(np.asarray(t_err) < IDENTICAL_TRANS_MAX_DEG_F32)
    assert metrics.camera_pose_metrics(poses, poses) == dict.fromkeys(POSE_KEYS, 1.0)


def test_one_camera_rotated_by_ten_degrees():
    # Camera 0 turns 10 degrees about its z axis in the prediction. Pairs (0, j) then have a 10-degree relative
    # rotation error; their translation inv(R_0) (c_j - c_0) keeps its direction along z (camera 1) and turns by
    # 10 degrees in the xy plane (camera 2). Pair (1, 2) is untouched.
    gt = _poses(np.stack([np.eye(3)] * 3), [[0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [4.0, 0.0, 0.0]])
    pred = gt.copy()
    pred[0, :3, :3] = _rot_z(10.0)
    with jax.enable_x64(True):
        r_err, t_err = metrics.relative_pose_errors(pred, gt)
        result = metrics.camera_pose_metrics(pred, gt)
    np.testing.assert_allclose(r_err, [10.0, 10.0, ROTATION_FLOOR_DEG], rtol=0, atol=CLOSED_FORM_ATOL_DEG)
    np.testing.assert_allclose(t_err, [0.0, 10.0, 0.0], rtol=0, atol=IDENTICAL_TRANS_ATOL_DEG_F64)
    # mAA: max errors 10, 10, 0.405 fall in bins 10, 10, 0 -> (21 + 21 + 31) / (31 * 3).
    expected = {"RRA_at_5": 1 / 3, "RRA_at_15": 1.0, "RRA_at_30": 1.0,
                "RTA_at_5": 2 / 3, "RTA_at_15": 1.0, "RTA_at_30": 1.0, "mAA_30": 73 / 93}
    assert result.keys() == expected.keys()
    np.testing.assert_allclose([result[k] for k in expected], list(expected.values()), rtol=0, atol=1e-12)


def test_rotation_angle_about_arbitrary_axis():
    rng = np.random.default_rng(2)
    base = np.stack([_rotation(rng.standard_normal(3), 40.0) for _ in range(4)])
    degrees = np.array([1.0, 25.0, 120.0, 179.0])
    turned = np.stack([b @ _rotation(rng.standard_normal(3), d) for b, d in zip(base, degrees)])
    with jax.enable_x64(True):
        np.testing.assert_allclose(metrics.rotation_angle_deg(base, turned), degrees, rtol=0, atol=1e-6)


def test_small_rotations_use_the_float32_tangent_line_exactly():
    # Below ~0.81 degrees the cosine exceeds 1 - 1e-4 and the angle is the tangent line of acos there. Against
    # I, Rz(a) gives trace (c + c) + 1 exactly; numpy float32 rounds every op on its own, like the reference.
    angles = np.linspace(0.0, 0.8, 201)
    rot_b = np.stack([_rot_z(a) for a in angles]).astype(np.float32)
    got = np.asarray(metrics.rotation_angle_deg(np.tile(np.eye(3, dtype=np.float32), (len(angles), 1, 1)), rot_b))
    c = rot_b[:, 0, 0]
    cos = ((c + c + np.float32(1)) - np.float32(1)) * np.float32(0.5)
    slope = np.float32(-1.0 / math.sqrt(1.0 - _BOUND**2))
    expected = ((cos - np.float32(_BOUND)) * slope + np.float32(math.acos(_BOUND))) * np.float32(180) / np.float32(
        math.pi)
    np.testing.assert_array_equal(got, expected)


def test_small_translation_angles_follow_float32_rounding():
    # The angle is acos(sqrt(1 - d^2)) with d the rounded cosine; near 0 one ulp of d moves it by ~0.02 degrees.
    # Every op must round like the reference: numpy float32 rounds each op on its own (no FMA); acos is taken from
    # jnp since libraries differ in its last ulp.
    angles = np.radians(np.concatenate([np.linspace(0.0, 0.5, 101), np.linspace(0.5, 89.5, 1001)]))
    t_a = np.tile(np.float32([1.0, 0.0, 0.0]), (len(angles), 1))
    t_b = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], -1).astype(np.float32)
    got = np.asarray(metrics.translation_angle_deg(t_a, t_b))
    x, y = t_b[:, 0], t_b[:, 1]
    d = x / np.sqrt((x * x + y * y) + np.float32(0))
    sin_sq = np.maximum(np.float32(1) - d * d, np.float32(1e-15))
    expected = np.asarray(jnp.arccos(np.sqrt(np.float32(1) - sin_sq))) * np.float32(180) / np.float32(math.pi)
    np.testing.assert_array_equal(got, expected)


def test_translation_angle_is_sign_blind_and_handles_nan():
    t = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [np.nan, 0.0, 0.0]])
    other = np.array([[-3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    with jax.enable_x64(True):
        angles = metrics.translation_angle_deg(t, other)
    np.testing.assert_allclose(angles, [0.0, 45.0, 90.0, math.degrees(1e6)], rtol=1e-12, atol=1e-5)


def test_accuracy_at_is_strict():
    errors = np.array([5.0, 4.999, 15.0, 30.0], np.float32)
    np.testing.assert_allclose(metrics.accuracy_at(errors, (5, 15, 30)), [0.25, 0.5, 0.75], rtol=0, atol=0)


def test_mean_average_accuracy_histc_edges():
    # 31 bins of width 30/31 over [0, 30]: 0 -> bin 0, 29.5 -> bin 30, exactly 30 -> last bin (30), above 30,
    # below 0 and NaN are not counted but still divide: (31 + 1 + 1) / (31 * 6).
    errors = np.array([0.0, 29.5, 30.0, 30.001, -1.0, np.nan], np.float32)
    maa = metrics.mean_average_accuracy(errors, errors)
    np.testing.assert_allclose(maa, 33 / 186, rtol=0, atol=MAA_ATOL)
    # The larger of the two errors decides: rotation 1 with translation 40 is not counted.
    np.testing.assert_allclose(metrics.mean_average_accuracy(np.float32([1.0]), np.float32([40.0])), 0.0, atol=0)
    np.testing.assert_allclose(metrics.mean_average_accuracy(np.float32([40.0]), np.float32([1.0])), 0.0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Alignment and reconstruction closed forms
# ---------------------------------------------------------------------------------------------------------------------


def test_fit_similarity_recovers_known_similarity():
    rng = np.random.default_rng(3)
    src = rng.standard_normal((50, 3))
    rot = _rotation([1.0, -2.0, 0.5], 73.0)
    scale, trans = 2.5, np.array([0.3, -1.0, 4.0])
    dst = scale * src @ rot.T + trans
    # Zero-weight outliers must not move the fit.
    src_all = np.concatenate([src, rng.standard_normal((10, 3))])
    dst_all = np.concatenate([dst, rng.standard_normal((10, 3)) * 100])
    weights = np.concatenate([rng.uniform(0.5, 2.0, 50), np.zeros(10)])
    with jax.enable_x64(True):
        for got in (fit_similarity(src, dst), fit_similarity(src_all, dst_all, weights)):
            np.testing.assert_allclose(got[0], scale, rtol=0, atol=1e-10)
            np.testing.assert_allclose(got[1], rot, rtol=0, atol=1e-10)
            np.testing.assert_allclose(got[2], trans, rtol=0, atol=1e-10)


def test_fit_similarity_returns_a_rotation_for_mirrored_points():
    src = np.random.default_rng(4).standard_normal((30, 3))
    with jax.enable_x64(True):
        _, rot, _ = fit_similarity(src, src * np.array([1.0, 1.0, -1.0]))
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, rtol=0, atol=1e-10)


def completion_ratio(gt_points: np.ndarray, rec_points: np.ndarray, dist_th: float = 0.05) -> float:
    """Fraction of GT points whose nearest reconstructed point is closer than dist_th."""
    distances, _ = cKDTree(rec_points).query(gt_points)  # (N,)
    return float(np.mean(distances < dist_th))


def _grid(spacing=1.0, size=6):
    axis = np.arange(size) * spacing
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)  # (size^3, 3)


def test_shifted_grid_distances_equal_offset_norm():
    gt = _grid()
    offset = np.array([0.1, -0.2, 0.15])  # every component below half the spacing: the source point stays nearest
    rec = gt + offset
    normals = np.random.default_rng(5).standard_normal(gt.shape)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    expected = [np.linalg.norm(offset)] * 2 + [1.0, 1.0]
    np.testing.assert_allclose(metrics.accuracy(gt, rec, normals, normals), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.completion(gt, rec, normals, -normals), expected, rtol=0, atol=1e-12)
    assert completion_ratio(gt, rec, dist_th=0.3) == 1.0  # |offset| = 0.269
    assert completion_ratio(gt, rec, dist_th=0.25) == 0.0


def test_normal_consistency_of_orthogonal_normals_is_zero():
    gt = _grid(size=3)
    up = np.tile([0.0, 0.0, 1.0], (len(gt), 1))
    side = np.tile([1.0, 0.0, 0.0], (len(gt), 1))
    np.testing.assert_allclose(metrics.accuracy(gt, gt, up, side), [0.0, 0.0, 0.0, 0.0], rtol=0, atol=0)


def test_accuracy_and_completion_are_directional():
    # GT has an extra far point: it hurts completion (GT -> rec) but not accuracy (rec -> GT).
    rec = _grid(size=2)
    gt = np.concatenate([rec, [[10.0, 0.0, 0.0]]])
    assert metrics.accuracy(gt, rec) == (0.0, 0.0)
    np.testing.assert_allclose(metrics.completion(gt, rec), [9.0 / 9, 0.0], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_pose_inputs():
    poses = np.tile(np.eye(4), (3, 1, 1))
    with pytest.raises(ValueError, match=r"pred_c2w must have shape \(N, 4, 4\)"):
        metrics.relative_pose_errors(poses[:, :3], poses)
    with pytest.raises(ValueError, match=r"gt_c2w must have shape \(N, 4, 4\)"):
        metrics.camera_pose_metrics(poses, poses[0])
    with pytest.raises(ValueError, match="different numbers of cameras: 3 vs 2"):
        metrics.relative_pose_errors(poses, poses[:2])
    with pytest.raises(ValueError, match="at least 2 cameras"):
        metrics.camera_pose_metrics(poses[:1], poses[:1])
    scaled = poses.copy()
    scaled[1, :3, :3] *= 2.0
    with pytest.raises(ValueError, match=r"not rotations.*\(0, 1\), \(1, 2\)"):
        metrics.camera_pose_metrics(scaled, poses)


def test_bad_error_inputs():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        metrics.accuracy_at(np.zeros((2, 2)), (5,))
    with pytest.raises(ValueError, match="equal length"):
        metrics.mean_average_accuracy(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"rotations must both have shape \(\.\.\., 3, 3\)"):
        metrics.rotation_angle_deg(np.zeros((2, 3, 3)), np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match=r"translations must both have shape \(\.\.\., 3\)"):
        metrics.translation_angle_deg(np.zeros((2, 2)), np.zeros((2, 2)))


def test_bad_cloud_inputs():
    points = _grid(size=2)
    with pytest.raises(ValueError, match=r"gt_points must have shape \(N, 3\)"):
        metrics.accuracy(points[:, :2], points)
    with pytest.raises(ValueError, match=r"rec_points must have shape \(N, 3\) with N > 0"):
        metrics.completion(points, np.zeros((0, 3)))
    with pytest.raises(ValueError, match="rec_normals shape"):
        metrics.accuracy(points, points, points, points[:-1])
    with pytest.raises(ValueError, match=r"src and dst must both have shape \(N, 3\)"):
        fit_similarity(points, points[:-1])
    with pytest.raises(ValueError, match=r"weights must have shape \(8,\)"):
        fit_similarity(points, points, np.ones(7))
