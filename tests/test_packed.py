"""Packed batches: the views the workers pack unpack on the devices to the batch the host used to build."""

import jax
import numpy as np
import pytest

from fast3r_jax.data import jitter
from fast3r_jax.data.packed import BATCH_KEYS, collate, orientations, pack_view, to_mesh, unpack
from fast3r_jax.data.readers import with_world_points
from fast3r_jax.sharding import batch_sharding, make_mesh
from tests.helpers.model_layout import model_layout


def random_view(rng: np.random.Generator, height: int, width: int) -> dict:
    """A sample-format view with every pixel value, depth holes, an off-centre camera and a random pose."""
    img = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    img.reshape(-1)[:256] = np.arange(256)
    depth = rng.uniform(0.5, 40.0, (height, width)).astype(np.float32)
    depth[rng.random((height, width)) < 0.1] = 0
    K = np.array([[rng.uniform(20, 60), 0, rng.uniform(0.3, 0.7) * width],
                  [0, rng.uniform(20, 60), rng.uniform(0.3, 0.7) * height], [0, 0, 1]], np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4, dtype=np.float32)
    pose[:3, :3], pose[:3, 3] = q, rng.uniform(-20, 20, 3)
    return dict(img=img, depthmap=depth, camera_intrinsics=K, camera_pose=pose, label="x")


@pytest.fixture(scope="module")
def samples():
    """3 samples of 3 views (landscape, portrait, landscape) at 40x56 / 56x40."""
    rng = np.random.default_rng(0)
    return [[random_view(rng, *shape) for shape in ((40, 56), (56, 40), (40, 56))] for _ in range(3)]


def test_unpack_gives_the_host_batch(samples):
    """Images, masks, depth and cameras bit for bit; world points within float32 rounding of the host's."""
    batch = jax.device_get(jax.jit(unpack)(collate([[pack_view(v) for v in s] for s in samples])))
    assert len(batch) == 3
    for v, view in enumerate(batch):
        assert set(view) == set(BATCH_KEYS)
        assert view["img"].shape == (3, 3, 40, 56) and view["img"].dtype == np.float32
        assert view["pts3d"].shape == (3, 40, 56, 3) and view["valid_mask"].dtype == bool
        for b, sample in enumerate(samples):
            ref = model_layout(with_world_points(sample[v]))  # as the host computed it before packing
            for key in BATCH_KEYS:
                if key == "pts3d":  # |error| <= 1e-6 (|point| + 1 m)
                    scale = np.linalg.norm(ref[key], axis=-1, keepdims=True)
                    error = np.abs(view[key][b] - ref[key]) / (scale + 1)
                    assert error.max() <= 1e-6, f"view {v} sample {b}: pts3d off by {error.max():.2g} (relative)"
                else:
                    np.testing.assert_array_equal(view[key][b], ref[key], err_msg=f"view {v} {key}")


def test_unpack_jitters_each_view_by_its_own_draw(samples):
    """A view's drawn colour jitter, applied where the batch is unpacked (portrait views in the transposed layout),
    gives the image jittered in its true orientation: within one level (a rounding at .5) on under 2% of values."""
    rng = np.random.default_rng(5)
    drawn = [[v | {"jitter": jitter.draw(rng)} for v in s] for s in samples]
    batch = jax.device_get(jax.jit(unpack)(collate([[pack_view(v) for v in s] for s in drawn])))
    for v, view in enumerate(batch):
        for b, sample in enumerate(drawn):
            jittered = np.asarray(jitter.apply(sample[v]["img"], sample[v]["jitter"]))
            expected = model_layout(with_world_points(sample[v] | {"img": jittered}))["img"]
            levels = np.rint((view["img"][b] - expected) * 127.5)
            assert np.abs(levels).max() <= 1 and np.mean(levels != 0) < 0.02, f"view {v} sample {b}"
            plain = model_layout(with_world_points(sample[v]))["img"]
            assert np.abs(view["img"][b] - plain).max() > 0.05  # the jitter was applied


def test_to_mesh_splits_the_batch_over_the_data_axis(samples):
    packed = collate([[pack_view(v) for v in s] for s in samples[:2]])
    mesh = make_mesh(1, 1)
    batch = to_mesh(packed, mesh)
    assert orientations(packed) == ("landscape", "portrait", "landscape")
    expected = jax.device_get(jax.jit(unpack)(packed))
    for view, ref in zip(batch, expected):
        for key in BATCH_KEYS:
            assert view[key].sharding.is_equivalent_to(batch_sharding(mesh), view[key].ndim)
            np.testing.assert_array_equal(np.asarray(view[key]), ref[key])
