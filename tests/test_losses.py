"""Tests of the multi-view training criterion against the upstream golden and closed forms."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast3r_jax.geometry import transforms as geometry
from fast3r_jax.train import losses

DATA = pathlib.Path(__file__).parent / "data" / "tiny_loss.npz"
NUM_VIEWS = 3
RTOL = 1e-5  # float32 port vs the torch golden; measured max relative error 6e-7
GT_KEYS = ("pts3d", "valid_mask", "camera_pose")
PRED_KEYS = ("pts3d_in_other_view", "conf", "pts3d_local", "conf_local")
# golden details name -> our details name
DETAIL_NAMES = {
    f"detail/{upstream}_loss_{kind}/{i:02d}": f"{ours}_loss_{kind}/{i:02d}"
    for upstream, ours in (("Regr3DMultiviewV3_pts3d", "pts3d"),
                           ("ConfLossMultiviewV2_conf", "conf"))
    for kind in ("global", "local") for i in range(NUM_VIEWS)}
# compiled once per input structure and shared by the closed-form tests (eager is slow)
multiview_loss = jax.jit(losses.multiview_loss, static_argnames="alpha")
pred_grads = jax.jit(jax.grad(lambda gts, preds: losses.multiview_loss(gts, preds)[0],
                              argnums=1))


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(DATA))


@pytest.fixture()
def views(golden):
    gts = [{k: golden[f"gt_v{i}_{k}"] for k in GT_KEYS} for i in range(NUM_VIEWS)]
    preds = [{k: golden[f"pred_v{i}_{k}"] for k in PRED_KEYS} for i in range(NUM_VIEWS)]
    return gts, preds


def _to_float(details):
    return {k: float(v) for k, v in details.items()}


def _assert_details_close(actual, expected, rtol=RTOL):
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, err_msg=key)


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)  # proper rotation


def test_matches_golden(golden, views):
    loss, details = losses.multiview_loss(*views, alpha=0.2)
    np.testing.assert_allclose(float(loss), golden["loss"], rtol=RTOL)
    assert set(details) == set(DETAIL_NAMES.values())
    for golden_name, name in DETAIL_NAMES.items():
        np.testing.assert_allclose(float(details[name]), golden[golden_name], rtol=RTOL,
                                   err_msg=name)
    # the total is the mean of the six confidence losses
    conf_terms = [float(v) for k, v in details.items() if k.startswith("conf_loss")]
    np.testing.assert_allclose(float(loss), np.mean(conf_terms), rtol=1e-6)


def test_jit_matches_eager(views):
    loss, details = losses.multiview_loss(*views)
    jit_loss, jit_details = multiview_loss(*views)
    np.testing.assert_allclose(float(jit_loss), float(loss), rtol=1e-6)
    _assert_details_close(_to_float(jit_details), _to_float(details), rtol=1e-6)


def test_gradient_finite_and_zero_at_invalid_pixels(views):
    gts, preds = views
    grads = pred_grads(gts, preds)
    for i, (gt, grad) in enumerate(zip(gts, grads)):
        invalid = ~gt["valid_mask"]
        for key in PRED_KEYS:
            g = np.asarray(grad[key])
            assert np.all(np.isfinite(g)), (i, key)
            assert np.any(g != 0), (i, key)
            assert np.all(g[invalid] == 0), (i, key)


def test_invariant_to_similarity_of_gt_world(views):
    gts, preds = views
    loss, details = multiview_loss(gts, preds)
    rng = np.random.default_rng(0)
    rot, shift, scale = _random_rotation(rng), rng.standard_normal(3), 2.7
    moved = []
    for gt in gts:
        pose = gt["camera_pose"].astype(np.float64)
        new_pose = pose.copy()
        new_pose[:, :3, :3] = rot @ pose[:, :3, :3]
        new_pose[:, :3, 3] = scale * pose[:, :3, 3] @ rot.T + shift
        pts = scale * gt["pts3d"].astype(np.float64) @ rot.T + shift
        moved.append(dict(gt, pts3d=pts.astype(np.float32),
                          camera_pose=new_pose.astype(np.float32)))
    moved_loss, moved_details = multiview_loss(moved, preds)
    np.testing.assert_allclose(float(moved_loss), float(loss), rtol=1e-5)
    _assert_details_close(_to_float(moved_details), _to_float(details), rtol=1e-5)


@pytest.mark.parametrize("factor", [0.01, 3.7])
def test_invariant_to_prediction_scale(views, factor):
    gts, preds = views
    _, details = multiview_loss(gts, preds)
    scaled = [dict(p, pts3d_in_other_view=p["pts3d_in_other_view"] * np.float32(factor),
                   pts3d_local=p["pts3d_local"] * np.float32(factor)) for p in preds]
    _, scaled_details = multiview_loss(gts, scaled)
    # distances are unchanged, hence so are the confidence terms and the total
    _assert_details_close(_to_float(scaled_details), _to_float(details), rtol=1e-5)


def test_perfect_prediction_gives_pure_confidence_term(views):
    gts, preds = views
    perfect = []
    for gt, pred in zip(gts, preds):
        local = geometry.apply_transform(geometry.inverse_rigid(gt["camera_pose"]), gt["pts3d"])
        anchor = geometry.apply_transform(geometry.inverse_rigid(gts[0]["camera_pose"]),
                                          gt["pts3d"])
        perfect.append(dict(pred, pts3d_in_other_view=anchor, pts3d_local=local))
    loss, details = multiview_loss(gts, perfect, alpha=0.5)
    expected = []
    for i, gt in enumerate(gts):
        valid = gt["valid_mask"]
        np.testing.assert_allclose(float(details[f"pts3d_loss_global/{i:02d}"]), 0, atol=1e-6)
        np.testing.assert_allclose(float(details[f"pts3d_loss_local/{i:02d}"]), 0, atol=1e-6)
        for key in ("conf", "conf_local"):
            expected.append(np.mean(-0.5 * np.log(preds[i][key][valid].astype(np.float64))))
    np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5, atol=1e-6)
    grads = pred_grads(gts, perfect)
    assert all(np.all(np.isfinite(g[k])) for g in grads for k in PRED_KEYS)


def test_fully_invalid_view_gives_zero_terms(views):
    gts, preds = views
    _, details = multiview_loss(gts, preds)
    gts[2] = dict(gts[2], valid_mask=np.zeros_like(gts[2]["valid_mask"]))
    loss, new_details = multiview_loss(gts, preds)
    for kind in ("global", "local"):
        assert float(new_details[f"pts3d_loss_{kind}/02"]) == 0.0
        assert float(new_details[f"conf_loss_{kind}/02"]) == 0.0
    # per-view normalisation: the local terms of the other views do not change
    for key in ("pts3d_loss_local/00", "conf_loss_local/01"):
        np.testing.assert_allclose(float(new_details[key]), details[key], rtol=1e-6)
    conf_terms = [float(v) for k, v in new_details.items() if k.startswith("conf_loss")]
    np.testing.assert_allclose(float(loss), sum(conf_terms) / 6, rtol=1e-6)
    grads = pred_grads(gts, preds)
    assert all(np.all(np.isfinite(g[k])) for g in grads for k in PRED_KEYS)
    assert all(np.all(np.asarray(grads[2][k]) == 0) for k in PRED_KEYS)


def test_nan_prediction_at_valid_pixel_propagates(views):
    gts, preds = views
    pts = preds[1]["pts3d_in_other_view"].copy()
    assert gts[1]["valid_mask"][0, 0, 0]
    pts[0, 0, 0, 0] = np.nan
    preds[1] = dict(preds[1], pts3d_in_other_view=pts)
    loss, details = multiview_loss(gts, preds)
    assert np.isnan(float(loss))
    assert np.isnan(float(details["pts3d_loss_global/01"]))
    assert np.isnan(float(details["conf_loss_global/01"]))
    # like upstream's nanmean, the NaN point is left out of the shared normalisation factor
    assert np.isfinite(float(details["pts3d_loss_global/00"]))


def test_nan_prediction_at_invalid_pixel_is_ignored(views):
    gts, preds = views
    loss, _ = multiview_loss(gts, preds)
    assert not gts[1]["valid_mask"][0, 15, 35]
    poisoned = dict(preds[1])
    for key in PRED_KEYS:
        poisoned[key] = preds[1][key].copy()
        poisoned[key][0, 15, 35] = np.nan
    preds[1] = poisoned
    new_loss, _ = multiview_loss(gts, preds)
    assert float(new_loss) == float(loss)
    grads = pred_grads(gts, preds)
    assert all(np.all(np.isfinite(g[k])) for g in grads for k in PRED_KEYS)


def test_batch_pools_pixels_over_samples(views):
    gts, preds = views
    second_gts = [dict(gt) for gt in gts]
    mask = gts[0]["valid_mask"].copy()
    mask[:, :20] = False
    second_gts[0]["valid_mask"] = mask
    second_preds = [{k: v[..., ::-1, :, :] if k.startswith("pts") else v[..., ::-1, :]
                     for k, v in p.items()} for p in preds]  # other predictions
    _, first = multiview_loss(gts, preds)
    _, second = multiview_loss(second_gts, second_preds)
    stack = lambda first_views, second_views: [
        {k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(first_views, second_views)]
    _, batched = multiview_loss(stack(gts, second_gts), stack(preds, second_preds))
    # each per-view term is a mean over the valid pixels of both samples together
    for key in batched:
        i = int(key[-2:])
        n1, n2 = gts[i]["valid_mask"].sum(), second_gts[i]["valid_mask"].sum()
        expected = (n1 * float(first[key]) + n2 * float(second[key])) / (n1 + n2)
        np.testing.assert_allclose(float(batched[key]), expected, rtol=1e-5, err_msg=key)
    assert gts[0]["valid_mask"].sum() != mask.sum()  # the pooling weights differ


def test_without_local_head_uses_global_terms_only(golden, views):
    gts, preds = views
    global_only = [{k: p[k] for k in ("pts3d_in_other_view", "conf")} for p in preds]
    loss, details = multiview_loss(gts, global_only)
    assert all("local" not in k for k in details)
    expected = np.mean([golden[f"detail/ConfLossMultiviewV2_conf_loss_global/{i:02d}"]
                        for i in range(NUM_VIEWS)])
    np.testing.assert_allclose(float(loss), expected, rtol=RTOL)


def test_views_of_different_sizes(views):
    gts, preds = views
    # cropping view 2 keeps its local terms exactly computable on the crop alone
    crop = (slice(None), slice(0, 32), slice(0, 40))
    gts[2] = {k: v[crop] if k != "camera_pose" else v for k, v in gts[2].items()}
    preds[2] = {k: v[crop] for k, v in preds[2].items()}
    _, details = multiview_loss(gts, preds)
    _, alone = multiview_loss(gts[2:], preds[2:])
    assert np.isfinite(float(details["conf_loss_global/02"]))
    np.testing.assert_allclose(float(details["conf_loss_local/02"]),
                               float(alone["conf_loss_local/00"]), rtol=1e-6)


def test_interleaved_sizes_keep_each_views_terms(views):
    """Views of two sizes interleaved (A, B, A) are stacked by size inside the criterion: every view's terms must
    come back to that view: swapping views 1 and 2 swaps their details and leaves the loss as it is, and each view's
    local terms are those of the view alone."""
    gts, preds = views
    crop = (slice(None), slice(0, 32), slice(0, 40))
    gts[1] = {k: v[crop] if k != "camera_pose" else v for k, v in gts[1].items()}
    preds[1] = {k: v[crop] for k, v in preds[1].items()}
    loss_fn = jax.jit(losses.multiview_loss, static_argnames=("alpha", "pose_weight"))
    loss, details = loss_fn(gts, preds, pose_weight=0.5)
    swapped_loss, swapped = loss_fn([gts[i] for i in (0, 2, 1)], [preds[i] for i in (0, 2, 1)], pose_weight=0.5)
    np.testing.assert_allclose(float(swapped_loss), float(loss), rtol=1e-6)
    assert details.keys() == swapped.keys()
    for key, value in details.items():
        index = int(key[-2:])
        np.testing.assert_allclose(float(swapped[key[:-2] + f"{(0, 2, 1)[index]:02d}"]), float(value), rtol=1e-5,
                                   err_msg=key)
    for i in range(3):  # a view's local terms are its own: computable from it alone
        _, alone = loss_fn(gts[i:i + 1], preds[i:i + 1], pose_weight=0.5)
        np.testing.assert_allclose(float(details[f"conf_loss_local/{i:02d}"]), float(alone["conf_loss_local/00"]),
                                   rtol=1e-5)


def test_l21_distance_closed_form():
    a = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    b = jnp.array([[4.0, 6.0, 3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(losses.l21_distance(a, b)), [5.0, 0.0])
    grad = jax.grad(lambda x: losses.l21_distance(x, b).sum())(a)
    np.testing.assert_allclose(np.asarray(grad), [[-0.6, -0.8, 0.0], [0.0, 0.0, 0.0]],
                               rtol=1e-6)


def test_normalize_pointmaps_closed_form():
    pts = np.zeros((2, 1, 2, 3), np.float32)
    pts[0, 0, 0] = [3.0, 4.0, 0.0]      # distance 5
    pts[0, 0, 1] = [0.0, 0.0, 100.0]    # invalid, ignored
    pts[1, 0, 0] = [0.0, 2.0, 0.0]      # sample 1: distances 2 and 6
    pts[1, 0, 1] = [0.0, 0.0, -6.0]
    valid = np.array([[[True, False]], [[True, True]]])
    (out,) = losses.normalize_pointmaps([pts], [valid])
    np.testing.assert_allclose(np.asarray(out[0]), pts[0] / 5.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out[1]), pts[1] / 4.0, rtol=1e-6)


def test_confidence_weighted_loss_closed_form():
    dist = jnp.array([[[1.0, 2.0, 9.0]]])
    conf = jnp.array([[[2.0, 4.0, 0.0]]])  # conf 0 at the invalid pixel must not give -inf
    valid = jnp.array([[[True, True, False]]])
    expected = ((2.0 - 0.2 * np.log(2.0)) + (8.0 - 0.2 * np.log(4.0))) / 2
    np.testing.assert_allclose(
        float(losses.confidence_weighted_loss(dist, conf, valid, 0.2)), expected, rtol=1e-6)
    none_valid = jnp.zeros_like(valid)
    assert float(losses.confidence_weighted_loss(dist, conf, none_valid, 0.2)) == 0.0


def test_geometry_helpers(views):
    gts, _ = views
    pose = jnp.asarray(gts[1]["camera_pose"])
    np.testing.assert_allclose(np.asarray(geometry.inverse_rigid(pose) @ pose)[0], np.eye(4),
                               atol=1e-6)
    pts = gts[1]["pts3d"]
    homogeneous = np.concatenate([pts, np.ones(pts.shape[:-1] + (1,), pts.dtype)], -1)
    expected = np.einsum("bij,bhwj->bhwi", np.asarray(pose), homogeneous)[..., :3]
    np.testing.assert_allclose(np.asarray(geometry.apply_transform(pose, pts)), expected,
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="4, 4"):
        geometry.inverse_rigid(jnp.eye(3))
    with pytest.raises(ValueError, match="pts must have shape"):
        geometry.apply_transform(pose, pts[..., :2])


def test_bad_inputs_raise(views):
    gts, preds = views
    with pytest.raises(ValueError, match="same non-zero number"):
        losses.multiview_loss(gts, preds[:2])
    with pytest.raises(ValueError, match="lacks \\['conf_local'\\]"):
        losses.multiview_loss(gts, [dict(preds[0])] + [
            {k: v for k, v in p.items() if k != "conf_local"} for p in preds[1:]])
    with pytest.raises(ValueError, match="view 1 conf must have shape"):
        losses.multiview_loss(gts, [preds[0], dict(preds[1], conf=preds[1]["conf"][0]),
                                    preds[2]])
    with pytest.raises(ValueError, match="alpha must be > 0"):
        losses.multiview_loss(gts, preds, alpha=0.0)


def _perfect(gts, preds):
    """preds with the ground-truth global (anchor frame) and local (camera frame) pointmaps."""
    anchor = geometry.inverse_rigid(gts[0]["camera_pose"])
    return [dict(pred, pts3d_in_other_view=geometry.apply_transform(anchor, gt["pts3d"]),
                 pts3d_local=geometry.apply_transform(geometry.inverse_rigid(gt["camera_pose"]), gt["pts3d"]))
            for gt, pred in zip(gts, preds)]


def test_camera_term_is_zero_for_exact_pointmaps(views):
    gts, preds = views
    base, base_details = multiview_loss(gts, _perfect(gts, preds))
    loss, details = jax.jit(losses.multiview_loss, static_argnames=("alpha", "pose_weight"))(
        gts, _perfect(gts, preds), pose_weight=3.0)
    for i in range(NUM_VIEWS):
        np.testing.assert_allclose(float(details[f"pose_loss/{i:02d}"]), 0, atol=2e-3)
    np.testing.assert_allclose(float(loss), float(base), atol=6e-3)
    assert not any(k.startswith("pose_loss") for k in base_details)  # pose_weight 0: upstream's criterion


def test_camera_term_measures_a_rotated_view(views):
    """Turning view 1's global points about the anchor origin by an angle turns its camera by that angle about the
    origin: rotation error 2 sqrt(2) sin(angle / 2), centre error |R c - c| for its normalised true centre c."""
    gts, preds = views
    perfect = _perfect(gts, preds)
    angle = np.deg2rad(20.0)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    perfect[1]["pts3d_in_other_view"] = (np.asarray(perfect[1]["pts3d_in_other_view"], np.float64) @ turn.T
                                         ).astype(np.float32)
    errors = np.asarray(losses.camera_pose_losses(gts, perfect)[1])  # (B,)
    # the true normalised camera centre of view 1 in the anchor frame (the factor: mean distance of the valid
    # anchor-frame points of all views; rotation about the origin leaves it unchanged)
    anchor = np.linalg.inv(gts[0]["camera_pose"].astype(np.float64))  # (B, 4, 4)
    dists, counts = 0.0, 0
    for gt in gts:
        pts = (np.einsum("bij,bhwj->bhwi", anchor[:, :3, :3], gt["pts3d"].astype(np.float64))
               + anchor[:, None, None, :3, 3])
        dists = dists + np.where(gt["valid_mask"], np.linalg.norm(pts, axis=-1), 0).sum((1, 2))
        counts = counts + gt["valid_mask"].sum((1, 2))
    centre = (anchor @ gts[1]["camera_pose"].astype(np.float64))[:, :3, 3] / (dists / counts)[:, None]  # (B, 3)
    expected = 2 * np.sqrt(2) * np.sin(angle / 2) + np.linalg.norm(centre @ turn.T - centre, axis=-1)
    np.testing.assert_allclose(errors, expected, rtol=2e-3, atol=2e-3)
    assert np.all(np.asarray(losses.camera_pose_losses(gts, perfect)[2]) < 2e-3)  # the other views are untouched


def test_camera_term_gradient_is_finite(views):
    gts, preds = views
    grads = jax.jit(jax.grad(lambda g, p: losses.multiview_loss(g, p, pose_weight=1.0)[0], argnums=1))(gts, preds)
    plain = pred_grads(gts, preds)
    for grad, base in zip(grads, plain):
        for key in ("pts3d_in_other_view", "pts3d_local"):
            assert np.all(np.isfinite(grad[key]))
            assert not np.allclose(grad[key], base[key])  # the camera term reaches both heads


def test_camera_term_bad_settings(views):
    gts, preds = views
    with pytest.raises(ValueError, match="pose_weight must be >= 0"):
        losses.multiview_loss(gts, preds, pose_weight=-1.0)
    global_only = [{k: p[k] for k in ("pts3d_in_other_view", "conf")} for p in preds]
    with pytest.raises(ValueError, match="needs the local head"):
        losses.camera_pose_losses(gts, global_only)


def _umeyama_pose(src, dst):
    """numpy reference: rotation and translation of the least-squares similarity dst ~ s R src + t."""
    src_c, dst_c = src - src.mean(0), dst - dst.mean(0)
    u, sing, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    flip = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    rot = u @ flip @ vt
    scale = np.trace(np.diag(sing) @ flip) / np.mean(np.sum(src_c ** 2, -1))
    return rot, dst.mean(0) - scale * rot @ src.mean(0)


def test_camera_term_matches_a_numpy_reference_with_mixed_shapes(views):
    """Two samples and views of different image sizes against a per-sample, per-view numpy reference."""
    gts, preds = views
    rng = np.random.default_rng(1)
    gts = [{k: np.concatenate([v, v]) for k, v in gt.items()} for gt in gts]
    preds = [{k: np.concatenate([v, v + rng.normal(0, 0.3, v.shape).astype(v.dtype)]) for k, v in p.items()}
             for p in preds]  # sample 1: noisier predictions
    for d in (gts[2], preds[2]):  # view 2 cropped to 40 x 56
        for key, value in list(d.items()):
            if key != "camera_pose":
                d[key] = value[:, 4:44, 4:60]
    errors = np.stack([np.asarray(e) for e in losses.camera_pose_losses(gts, preds)])  # (V, B)

    to = lambda m, p: p @ m[:3, :3].T + m[:3, 3]  # noqa: E731
    norm = lambda maps: [m / np.mean(np.linalg.norm(np.concatenate(maps), axis=-1)) for m in maps]  # noqa: E731
    for b in range(2):
        anchor = np.linalg.inv(gts[0]["camera_pose"][b].astype(np.float64))
        valid = [gt["valid_mask"][b] for gt in gts]
        gt_global = norm([to(anchor, gt["pts3d"][b].astype(np.float64))[v] for gt, v in zip(gts, valid)])
        pr_global = norm([p["pts3d_in_other_view"][b].astype(np.float64)[v] for p, v in zip(preds, valid)])
        for i, (gt, p, v) in enumerate(zip(gts, preds, valid)):
            gt_local = norm([to(np.linalg.inv(gt["camera_pose"][b].astype(np.float64)), gt["pts3d"][b])[v]])[0]
            pr_local = norm([p["pts3d_local"][b].astype(np.float64)[v]])[0]
            pr_rot, pr_t = _umeyama_pose(pr_local, pr_global[i])
            gt_rot, gt_t = _umeyama_pose(gt_local, gt_global[i])
            expected = np.linalg.norm(pr_rot - gt_rot) + np.linalg.norm(pr_t - gt_t)
            np.testing.assert_allclose(errors[i, b], expected, rtol=1e-4, err_msg=f"sample {b} view {i}")
    assert not np.allclose(errors[:, 0], errors[:, 1])
