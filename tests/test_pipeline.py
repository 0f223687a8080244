"""Augmentation (crop/resize intrinsics, colour jitter) and the grain input pipeline.

The pipeline runs on a small in-test source whose depth encodes the sample index, so every batch
can be traced back to the records it holds.
"""

import jax
import numpy as np
import pytest

from fast3r_jax.data import augment, jitter
from fast3r_jax.data.geometry_np import depthmap_to_world
from fast3r_jax.data.mixture import Mixture
from fast3r_jax.data.packed import PACKED_KEYS, collate, pack_view, unpack
from fast3r_jax.data.pipeline import make_loader

SMALL_BUCKETS = ((32, 24), (32, 16))


class FakeSource:
    """n samples of V views, 64x48 (every 5th sample 48x64 portrait); depth = offset + index everywhere."""

    aug_crop = 4

    def __init__(self, n: int, num_views: int = 2, offset: int = 1):
        self.n, self.num_views, self.offset = n, num_views, offset

    def __len__(self):
        return self.n

    def __getitem__(self, index, rng):
        height, width = (64, 48) if index % 5 == 4 else (48, 64)
        K = np.array([[50.0, 0, width / 2], [0, 52.0, height / 2], [0, 0, 1]], np.float32)
        views = []
        for v in range(self.num_views):
            pose = np.eye(4, dtype=np.float32)
            pose[:3, 3] = (v, 0.5 * v, rng.uniform(-0.1, 0.1))
            depth = np.full((height, width), self.offset + index, np.float32)
            pts3d, valid = depthmap_to_world(depth, K, pose)
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0], img[..., 1] = index % 256, 40 * v
            img[..., 2] = np.arange(width, dtype=np.uint8) * 3
            views.append(dict(img=img, depthmap=depth, camera_intrinsics=K, camera_pose=pose, pts3d=pts3d,
                              valid_mask=valid, true_shape=np.array([height, width], np.int32),
                              dataset="fake", label=str(index), instance=str(v)))
        return views


def records(batch) -> list[int]:
    """Source index (from the constant depth) of every sample of a batch."""
    return [int(round(d)) - 1 for d in batch["depthmap"][:, 0, 0, 0]]


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b):
        for key in PACKED_KEYS:
            np.testing.assert_array_equal(batch_a[key], batch_b[key])


# ----------------------------------------------------------------------------
# Crop / resize.
# ----------------------------------------------------------------------------


def test_crop_resize_intrinsics_closed_form():
    img = np.zeros((48, 64, 3), np.uint8)
    depth = np.ones((48, 64), np.float32)
    K = np.array([[50.0, 0, 32.0], [0, 50.0, 24.0], [0, 0, 1]])
    out_img, out_depth, K2 = augment.crop_resize(img, depth, K, (32, 24), np.random.default_rng(0))
    assert out_img.shape == (24, 32, 3) and out_depth.shape == (24, 32)
    # halving maps pixel centre x to (x + 0.5) / 2 - 0.5
    np.testing.assert_allclose(K2, [[25, 0, 15.75], [0, 25, 11.75], [0, 0, 1]], atol=1e-5)
    K = np.array([[50.0, 0, 32.4], [0, 50.0, 24.0], [0, 0, 1]])  # rounds to 32: no crop, same as above
    _, _, K3 = augment.crop_resize(img, depth, K, (32, 24), np.random.default_rng(0))
    np.testing.assert_allclose(K3[0, 2], (32.4 + 0.5) / 2 - 0.5, atol=1e-5)
    K = np.array([[50.0, 0, 30.0], [0, 50.0, 24.0], [0, 0, 1]])  # crop to [0, 60): scale max(32/60, 24/48)
    out_img, _, K4 = augment.crop_resize(img, depth, K, (32, 24), np.random.default_rng(0))
    scale = 32 / 60 + 1e-8
    size = np.floor(np.array([60, 48]) * scale)  # (32, 25): one row cropped, top margin round(0.5) = 0
    assert size.tolist() == [32, 25] and out_img.shape == (24, 32, 3)
    cy = (24 + 0.5) * scale - 0.5 * (48 * scale - 25) - 0.5
    np.testing.assert_allclose(K4[:2, 2], [(30 + 0.5) * scale - 0.5 * (60 * scale - 32) - 0.5, cy], atol=1e-5)
    np.testing.assert_allclose(np.diag(K4)[:2], 50 * scale, atol=1e-5)


def test_crop_resize_matches_image_content():
    """A colour ramp encodes source coordinates: the new intrinsics must map output pixels onto them."""
    height, width = 48, 64
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    img = np.stack([xs * 3 + 30, ys * 3 + 30, np.zeros_like(xs)], -1).astype(np.uint8)
    depth = (xs + 1000 * ys + 1).astype(np.float32)  # unique id of the source pixel
    K = np.array([[40.0, 0, 33.0], [0, 40.0, 23.0], [0, 0, 1]])
    for seed in range(6):
        rng = np.random.default_rng(seed)
        out, out_depth, K2 = augment.crop_resize(img, depth, K, (40, 24), rng, aug_crop=16)
        assert out.shape == (24, 40, 3)
        # source coordinate of output pixel x: (x - cx') * f / f' + cx  (same camera ray)
        ox, oy = np.meshgrid(np.arange(40), np.arange(24))
        src_x = (ox - K2[0, 2]) * K[0, 0] / K2[0, 0] + K[0, 2]
        src_y = (oy - K2[1, 2]) * K[1, 1] / K2[1, 1] + K[1, 2]
        inner = (slice(3, -3), slice(3, -3))  # away from resampling borders
        np.testing.assert_allclose((out[..., 0][inner] - 30) / 3, src_x[inner], atol=0.35)
        np.testing.assert_allclose((out[..., 1][inner] - 30) / 3, src_y[inner], atol=0.35)
        # depth is resampled with OpenCV's nearest rule (source floor(x * ratio), no half-pixel shift, as in
        # the reference), so its source pixel is within 0.5 * ratio + 0.5 < 1.5 pixels of that coordinate
        np.testing.assert_array_less(np.abs(out_depth % 1000 - 1 - src_x), 1.5)
        np.testing.assert_array_less(np.abs(out_depth // 1000 - src_y), 1.5)


def test_orientation_follows_the_frame():
    rng = np.random.default_rng(0)
    assert augment.oriented_resolution(64, 48, (32, 24), rng) == (32, 24)
    assert augment.oriented_resolution(48, 64, (32, 24), rng) == (24, 32)  # portrait
    square = {augment.oriented_resolution(50, 50, (32, 24), np.random.default_rng(s)) for s in range(10)}
    assert square == {(32, 24), (24, 32)}
    with pytest.raises(ValueError, match="landscape"):
        augment.oriented_resolution(64, 48, (24, 32), rng)


def test_principal_point_near_border_is_rejected():
    img, depth = np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), np.float32)
    K = np.array([[50.0, 0, 8.0], [0, 50.0, 24.0], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"principal point \(8, 24\) is too close"):
        augment.crop_resize(img, depth, K, (32, 24), np.random.default_rng(0))


def test_augment_views_recomputes_world_points():
    views = FakeSource(5).__getitem__(4, np.random.default_rng(0))  # portrait views
    out = augment.augment_views(views, (32, 24), np.random.default_rng(1), aug_crop=8)
    for view, orig in zip(out, views):
        assert view["img"].shape == (32, 24, 3) and view["true_shape"].tolist() == [32, 24]  # portrait
        # constant depth d: every output point lies on the plane z = d of its camera
        cam = (view["pts3d"] - view["camera_pose"][:3, 3]) @ view["camera_pose"][:3, :3]
        np.testing.assert_allclose(cam[..., 2], orig["depthmap"][0, 0], rtol=1e-6)
        pts, valid = depthmap_to_world(view["depthmap"], view["camera_intrinsics"], view["camera_pose"])
        np.testing.assert_array_equal(view["pts3d"], pts)
        assert valid.all() and view["valid_mask"].all() and view["label"] == orig["label"]
    bare = augment.augment_views(views, (32, 24), np.random.default_rng(1), aug_crop=8, world_points=False)
    for view, full in zip(bare, out):  # the same draws, without the derived fields
        assert set(full) - set(view) == {"pts3d", "valid_mask"}
        for key in ("img", "depthmap", "camera_intrinsics", "true_shape"):
            np.testing.assert_array_equal(view[key], full[key])


# ----------------------------------------------------------------------------
# Colour jitter.
# ----------------------------------------------------------------------------


def test_colour_adjustments_closed_form():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(jitter.adjust_brightness(img, 0.5), img * 0.5, rtol=1e-6)
    np.testing.assert_allclose(jitter.adjust_hue(img, 0.0), img, atol=1e-3)
    grey = img @ np.array([0.2989, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(jitter.adjust_saturation(img, 0.0), np.repeat(grey[..., None], 3, -1), atol=1e-4)
    np.testing.assert_allclose(jitter.adjust_contrast(img, 0.0), np.full_like(img, grey.mean()), atol=1e-3)
    pure = np.array([[[255.0, 0, 0], [0, 255, 0], [0, 0, 255]]], np.float32)
    np.testing.assert_allclose(jitter.adjust_hue(pure, 1 / 3), pure[..., [2, 0, 1]], atol=1e-3)  # R->G, G->B, B->R
    np.testing.assert_allclose(jitter.adjust_hue(pure, -1 / 6), [[[255, 0, 255], [255, 255, 0], [0, 255, 255]]],
                               atol=1e-3)


def test_hue_matches_torchvision_formula_in_float64():
    """adjust_hue against torchvision's RGB -> HSV -> RGB formula in float64, for hues pushed past 0 and 360
    degrees."""
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3)).astype(np.float32)
    img[:4] = img[:4, :, :1]  # greys: no saturation
    rgb = img.astype(np.float64) / 255
    vmax, vmin = rgb.max(-1), rgb.min(-1)
    delta = vmax - vmin
    sat = np.where(vmax > 0, delta / np.maximum(vmax, 1e-12), 0)
    safe = np.where(delta > 0, delta, 1)
    r, g, b = np.moveaxis(rgb, -1, 0)
    hue = np.where(vmax == r, (g - b) / safe, np.where(vmax == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = np.where(delta > 0, hue / 6, 0)
    for shift in (-0.5, -0.1, -1e-7, 0.0, 0.07, 0.5):
        h6 = ((hue + shift) % 1.0) * 6
        i = np.floor(h6).astype(int) % 6
        f = h6 - np.floor(h6)
        p, q, t = vmax * (1 - sat), vmax * (1 - sat * f), vmax * (1 - sat * (1 - f))
        table = np.stack([np.stack(c, -1) for c in ((vmax, t, p), (q, vmax, p), (p, vmax, t), (p, q, vmax),
                                                     (t, p, vmax), (vmax, p, q))])  # (6, H, W, 3)
        expected = np.take_along_axis(table, i[None, ..., None], 0)[0] * 255
        np.testing.assert_allclose(jitter.adjust_hue(img, np.float32(shift)), expected, atol=1e-3)


def test_colour_jitter_applies_the_drawn_adjustments_in_the_drawn_order():
    """apply == the four adjustments composed in each view's order, rounded; the draw is a function of the seed;
    zero strength and IDENTITY leave images as they are; views of a batch are jittered each by its own draw."""
    img = np.random.default_rng(0).integers(0, 256, (8, 9, 3)).astype(np.uint8)
    params = jitter.draw(np.random.default_rng(3))
    np.testing.assert_array_equal(params, jitter.draw(np.random.default_rng(3)))
    assert sorted(params[:4].tolist()) == [0, 1, 2, 3]
    assert not np.array_equal(params, jitter.draw(np.random.default_rng(4)))
    adjustments = (jitter.adjust_brightness, jitter.adjust_contrast, jitter.adjust_saturation, jitter.adjust_hue)
    expected = img.astype(np.float32)
    for k in params[:4].astype(int):
        expected = np.asarray(adjustments[k](expected, params[4 + k]))
    out = np.asarray(jax.jit(jitter.apply)(img, params))
    assert out.dtype == np.uint8 and out.shape == img.shape
    differ = out.astype(int) - np.rint(expected)  # compiled vs eager float32: a .5 may round the other way
    assert np.abs(differ).max() <= 1 and np.mean(differ != 0) < 0.02
    assert not np.array_equal(out, img)
    np.testing.assert_array_equal(jitter.apply(img, jitter.draw(np.random.default_rng(3), 0, 0, 0, 0)), img)
    batch = np.stack([img, img[::-1]])[None]  # (1, 2, H, W, 3)
    both = np.asarray(jitter.apply(batch, np.stack([params, jitter.IDENTITY])[None]))
    np.testing.assert_array_equal(both[0, 0], out)
    np.testing.assert_array_equal(both[0, 1], img[::-1])


# ----------------------------------------------------------------------------
# Model layout and batching.
# ----------------------------------------------------------------------------


def test_pack_view_transposes_portrait_views():
    view = FakeSource(5).__getitem__(4, np.random.default_rng(0))[1]  # 64x48 portrait
    out = pack_view(view)
    assert set(out) == set(PACKED_KEYS)
    assert out["img"].shape == (48, 64, 3) and out["img"].dtype == np.uint8 and out["true_shape"].tolist() == [64, 48]
    np.testing.assert_array_equal(out["img"], view["img"].swapaxes(0, 1))
    np.testing.assert_array_equal(out["depthmap"], view["depthmap"].swapaxes(0, 1))
    np.testing.assert_array_equal(out["camera_intrinsics"], view["camera_intrinsics"][[1, 0, 2]])
    landscape = pack_view(FakeSource(5).__getitem__(0, np.random.default_rng(0))[0])
    batch = collate([[out, landscape], [landscape, out]])  # same landscape-layout shape
    assert batch["img"].shape == (2, 2, 48, 64, 3) and batch["true_shape"][:, :, 0].tolist() == [[64, 48], [48, 64]]
    with pytest.raises(ValueError, match="shapes differ"):
        collate([[out], [landscape | {"img": np.zeros((8, 8, 3), np.uint8)}]])


def test_batches_structure_buckets_and_geometry():
    loader = make_loader(FakeSource(20, num_views=3), batch_size=4, seed=0, num_epochs=1,
                         resolutions=SMALL_BUCKETS)
    batches = list(loader)
    assert len(batches) == 5
    shapes = set()
    for batch in batches:
        assert set(batch) == set(PACKED_KEYS)
        h, w = batch["img"].shape[2:4]
        shapes.add((w, h))  # one bucket per batch, landscape layout
        assert batch["img"].shape == (4, 3, h, w, 3) and batch["img"].dtype == np.uint8
        assert batch["depthmap"].shape == (4, 3, h, w) and batch["depthmap"].dtype == np.float32
        assert batch["true_shape"].shape == (4, 3, 2) and batch["true_shape"].dtype == np.int32
        assert batch["camera_pose"].shape == (4, 3, 4, 4) and batch["camera_intrinsics"].shape == (4, 3, 3, 3)
        views = unpack(batch)
        assert len(views) == 3
        for b, index in enumerate(records(batch)):
            portrait = index % 5 == 4
            assert batch["true_shape"][b, 0].tolist() == ([w, h] if portrait else [h, w])
            for view in views:  # points project back to their landscape pixel: (column, row)
                w2c = np.linalg.inv(view["camera_pose"][b])
                cam = np.asarray(view["pts3d"][b]) @ w2c[:3, :3].T + w2c[:3, 3]
                uv = cam @ np.asarray(view["camera_intrinsics"][b]).T
                cols, rows = np.meshgrid(np.arange(w), np.arange(h))
                np.testing.assert_allclose(uv[..., 0] / uv[..., 2], cols, atol=1e-3)
                np.testing.assert_allclose(uv[..., 1] / uv[..., 2], rows, atol=1e-3)
    assert shapes == set(SMALL_BUCKETS)


def test_epochs_and_shards_partition_the_data():
    source = FakeSource(22)
    kw = dict(batch_size=4, seed=7, num_epochs=2, resolutions=None, augment=False)
    shards = [[records(b) for b in make_loader(source, shard_index=s, shard_count=2, **kw)] for s in (0, 1)]
    assert [len(s) for s in shards] == [4, 4]  # 22 // (4 * 2) = 2 batches per shard and epoch
    epochs = [[i for s in shards for batch in s[2 * e:2 * e + 2] for i in batch] for e in (0, 1)]
    for indices in epochs:  # 16 distinct records per epoch, none on both shards
        assert len(set(indices)) == 16 and set(indices) <= set(range(22))
    assert epochs[0] != epochs[1]
    again = [records(b) for b in make_loader(source, shard_index=1, shard_count=2, **kw)]
    assert again == shards[1]
    other_seed = [records(b) for b in make_loader(source, shard_index=1, shard_count=2, **{**kw, "seed": 8})]
    assert other_seed != shards[1]
    with pytest.raises(ValueError, match="fewer than batch_size"):
        make_loader(FakeSource(7), batch_size=4, seed=0, shard_count=2)


def test_state_restore_resumes_exactly():
    loader = make_loader(FakeSource(13), batch_size=3, seed=1, resolutions=SMALL_BUCKETS)  # endless
    it = iter(loader)
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)  # crosses the epoch boundary (4 batches per epoch)
    resumed = iter(loader)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 4), expected)
    assert_batches_equal(take(iter(loader), 7)[3:], expected)  # and equals an uninterrupted run


def test_mixture_sizes_hold_in_the_pipeline():
    mix = Mixture([(6, FakeSource(4, offset=1)), (10, FakeSource(30, offset=101))])
    for epoch_batches in np.split(np.array([records(b) for b in make_loader(
            mix, batch_size=4, seed=2, num_epochs=2, resolutions=None, augment=False)]), 2):
        ids = epoch_batches.ravel()
        assert (ids < 100).sum() == 6 and (ids >= 100).sum() == 10  # exactly the sizes per epoch


def test_two_workers_give_the_same_batches():
    kw = dict(batch_size=2, seed=3, num_epochs=1, resolutions=SMALL_BUCKETS)
    source = FakeSource(10)
    expected = list(make_loader(source, **kw))
    it = iter(make_loader(source, worker_count=2, **kw))
    try:
        first = take(it, 2)
        state = it.get_state()
        rest = list(it)
    finally:
        it.close()
    assert_batches_equal(first + rest, expected)
    resumed = iter(make_loader(source, worker_count=2, **kw))
    try:
        resumed.set_state(state)
        assert_batches_equal(list(resumed), expected[2:])
    finally:
        resumed.close()


def test_global_batches_do_not_depend_on_the_shard_count():
    """Two shards of batch 2 load exactly the halves of the one-shard batch of 4 (records, buckets, augmentation)."""
    kw = dict(seed=5, resolutions=SMALL_BUCKETS)
    source = FakeSource(18)
    whole = take(iter(make_loader(source, batch_size=4, **kw)), 6)  # crosses an epoch (4 batches per epoch)
    halves = [take(iter(make_loader(source, batch_size=2, shard_index=s, shard_count=2, **kw)), 6) for s in (0, 1)]
    for b, batch in enumerate(whole):
        for key in PACKED_KEYS:
            np.testing.assert_array_equal(batch[key], np.concatenate([halves[0][b][key], halves[1][b][key]]))


def test_state_moves_between_shard_counts():
    kw = dict(seed=6, resolutions=SMALL_BUCKETS)
    source = FakeSource(18)
    two = iter(make_loader(source, batch_size=2, shard_index=1, shard_count=2, **kw))
    take(two, 3)
    state = two.get_state()
    assert state == {"global_batches": 3, "global_batch_size": 4, "seed": 6}
    one = iter(make_loader(source, batch_size=4, **kw))
    one.set_state(state)
    assert_batches_equal(take(one, 2), take(iter(make_loader(source, batch_size=4, **kw)), 5)[3:])
    with pytest.raises(ValueError, match=r"global_batch_size \(4, now 2\)"):
        iter(make_loader(source, batch_size=2, **kw)).set_state(state)
    with pytest.raises(ValueError, match="seed"):
        iter(make_loader(source, batch_size=4, seed=7, resolutions=SMALL_BUCKETS)).set_state(state)
