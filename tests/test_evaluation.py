"""fast3r_jax.evaluation.protocols without a model: ground-truth pointmaps through the pose and reconstruction pipelines give
perfect scores, and the geometric helpers recover known answers."""

import numpy as np
import pytest

from fast3r_jax.data.eval_datasets import Co3dPoseEval
from fast3r_jax.data.synthetic import SyntheticScenes
from fast3r_jax.evaluation import protocols as ev
from fast3r_jax.geometry.metrics import pair_indices
from tests.helpers.eval_fixtures import oracle, oracle_prediction, write_co3d


def check_perfect(scores: dict, tasks=ev.TASKS) -> None:
    if "pose" in tasks:
        assert {k: scores[k] for k in ev.POSE_METRICS} == dict.fromkeys(ev.POSE_METRICS, 1.0)
    if "recon" in tasks:
        for head in ev.HEADS:
            for key in ("acc", "acc_med", "comp", "comp_med"):
                assert scores[f"{head}/{key}"] < 1e-4, (head, key)
            for key in ("nc1", "nc1_med", "nc2", "nc2_med"):
                assert scores[f"{head}/{key}"] > 0.999, (head, key)


@pytest.fixture(scope="module")
def synthetic():
    return SyntheticScenes(2, 4, (48, 32), split="test", hole_fraction=0.2)


def test_ground_truth_pointmaps_score_perfectly(synthetic):
    results = ev.evaluate(oracle, synthetic, ev.TASKS, "procrustes", progress=False)
    assert [r.name for r in results] == ["test/000000", "test/000001"]
    for result in results:
        assert result.num_views == 4 and result.rot_err.shape == result.trans_err.shape == (6,)
        check_perfect(result.scores)
    check_perfect(ev.mean_scores(results))


# PnP on the CO3D fixture's ground-truth frames (32x16, one focal shared from view 0): measured worst 0.41 degrees
# rotation and 0.67 degrees translation direction.
PNP_ROT_DEG, PNP_TRANS_DEG = 1.0, 1.5


def test_pnp_on_ground_truth_co3d_frames(tmp_path):
    """PnP (shared focal of view 0, principal point at the centre) recovers the fixture's cameras; a frame that the
    CO3D sampler repeats has no baseline to its copy, so that pair's translation direction is undefined (90 degrees)."""
    write_co3d(tmp_path)
    data = Co3dPoseEval(tmp_path, 3, resolution=(32, 16), num_samples=4)
    repeats = 0
    for index in range(len(data)):
        views = data[index]
        result = ev.evaluate_sample(views, oracle(views, index), ("pose",), "pnp")
        distinct = np.array([views[a]["instance"] != views[b]["instance"] for a, b in zip(*pair_indices(3))])
        assert (result.rot_err < PNP_ROT_DEG).all() and (result.trans_err[distinct] < PNP_TRANS_DEG).all()
        np.testing.assert_allclose(result.trans_err[~distinct], 90.0)
        repeats += (~distinct).sum()
    assert repeats > 0


def test_scores_worsen_with_noise(synthetic):
    views = synthetic[0]
    rng = np.random.default_rng(0)
    noisy = [dict(p, pts3d_in_other_view=p["pts3d_in_other_view"] + rng.normal(0, 0.05, p["pts3d_in_other_view"].shape)
                  .astype(np.float32)) for p in oracle_prediction(views, global_scale=1.0)]
    scores = ev.evaluate_sample(views, noisy, ("recon",)).scores
    assert 0.02 < scores["global/acc"] < 0.2 and 0.02 < scores["global/comp"] < 0.2
    assert scores["global/nc1"] < 0.95
    assert scores["local_aligned/acc"] < 0.1 * scores["global/acc"]  # exact local maps, fitted to the noisy global


def test_bad_solver_and_task_are_rejected():
    with pytest.raises(ValueError, match="pose solver must be one of"):
        ev.evaluate(oracle, [], ("pose",), "icp")
    with pytest.raises(ValueError, match="tasks must be"):
        ev.evaluate(oracle, [], ("depth",))


def test_estimate_normals_plane_and_sphere():
    rng = np.random.default_rng(1)
    plane = np.c_[rng.uniform(-1, 1, (500, 2)), np.zeros(500)]
    normals = ev.estimate_normals(plane)
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0, atol=1e-9)
    sphere = rng.normal(size=(4000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    cosine = np.abs(np.sum(ev.estimate_normals(sphere) * sphere, axis=1))
    assert np.median(cosine) > 0.99
    np.testing.assert_allclose(np.linalg.norm(ev.estimate_normals(sphere[:2]), axis=1), 1.0)  # fewer than k points


def test_local_heads_are_moved_onto_the_global_ones(synthetic):
    views = synthetic[1]
    pred = oracle_prediction(views)
    for moved, p in zip(ev.local_in_global_frame(pred, views), pred):
        np.testing.assert_allclose(moved, p["pts3d_in_other_view"], atol=1e-4)


def test_aligned_camera_centres_undo_a_similarity(synthetic):
    gt = np.stack([v["camera_pose"] for v in synthetic[0]])  # (V, 4, 4)
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    pred = gt.copy()
    pred[:, :3, 3] = 3.0 * gt[:, :3, 3] @ rot.T + 1.0
    moved, target = ev.aligned_camera_centres(pred, gt)
    np.testing.assert_allclose(moved, target, atol=1e-5)


def test_scene_name_is_the_shared_label_prefix():
    assert ev.scene_name([{"label": "chess/seq-01/000000"}, {"label": "chess/seq-01/000020"}]) == "chess/seq-01"
    assert ev.scene_name([{"label": "test/000003"}] * 3) == "test/000003"
    assert ev.scene_name([{"label": "a"}, {"label": "b"}]) == "a"
