"""Synthetic scenes ray cast in JAX: the numpy renderer's ground truth, its samples as batches, resumable training."""

import dataclasses
import functools
import itertools
import json

import jax
import numpy as np
import pytest

from fast3r_jax import config as config_lib
from fast3r_jax.config import RenderedDataConfig, TrainConfig
from fast3r_jax.data import raycast, synthetic
from fast3r_jax.data.packed import BATCH_KEYS
from fast3r_jax.data.rendered import RenderedBatches
from fast3r_jax.errors import InputError
from fast3r_jax.model.params import init_params
from fast3r_jax.sharding import make_mesh
from fast3r_jax.train import step as training
from fast3r_jax.train.loop import train
from fast3r_jax.train.optimizer import OptimizerConfig, make_optimizer
from tests.helpers.model_layout import model_layout

# Float32 here vs float64 in numpy. Measured over 192 views (seeds 0-3, 64x48, 48x64, 128x64, 128x96, windows on):
# pts3d error 6.2e-6 m at the 99th percentile, 3.6e-4 m at worst (grazing hits), apart from silhouette pixels whose
# nearest surface flips (1.6e-6 of pixels); colours off by one level on 1.2e-4 of pixels, by more on 3e-6 (the
# flips); validity identical everywhere.
PTS_ATOL = 2e-4  # metres, where both are valid ...
SURFACE_FRACTION = 5e-4  # ... on all but this fraction of the pixels
COLOUR_FRACTION = 5e-4  # pixels whose colour differs by more than one uint8 level
MASK_FRACTION = 5e-4  # validity disagreements (window borders)
SMALL = config_lib.Fast3RConfig(encoder=config_lib.EncoderConfig(embed_dim=32, num_heads=2, depth=1),
                                fusion=config_lib.FusionConfig(embed_dim=32, num_heads=2, depth=4),
                                head=config_lib.HeadConfig(feature_dim=16, last_dim=8, layer_dims=(8, 8, 16, 16)))


def _compare(ours, ref) -> None:
    """Asserts the tolerances above between two views in the same layout (img, pts3d, valid_mask, depthmap)."""
    both = ours["valid_mask"] & ref["valid_mask"]
    assert np.mean(ours["valid_mask"] != ref["valid_mask"]) <= MASK_FRACTION
    pts_err = np.abs(ours["pts3d"] - ref["pts3d"]).max(-1)[both]
    assert np.mean(pts_err > PTS_ATOL) <= SURFACE_FRACTION, np.sort(pts_err)[-5:]
    colour_err = np.abs(np.asarray(ours["img"], np.float64) - ref["img"])
    colour_err = colour_err.max(axis=-1) if colour_err.shape[-1] == 3 else colour_err.max(axis=0)
    level = 1.0 if ref["img"].dtype == np.uint8 else 2 / 255 + 1e-6  # one uint8 level in [-1, 1]
    assert np.mean(colour_err > level) <= COLOUR_FRACTION


@pytest.mark.parametrize("resolution", [(64, 48), (48, 64), (128, 64)])
def test_render_matches_the_numpy_renderer(resolution):
    render = jax.jit(functools.partial(raycast.render_batch, resolution=resolution))
    windows = 0
    for seed in range(3):
        dataset = synthetic.SyntheticScenes(4, 3, resolution, seed=seed, hole_fraction=0.3)
        scenes = [dataset.scene(i) for i in range(2)]
        out = jax.device_get(render(raycast.pack_scenes([s for s, _, _ in scenes]),
                                    np.stack([K for _, K, _ in scenes]), np.stack([c for _, _, c in scenes])))
        assert out.img.dtype == np.uint8 and out.img.shape == (2, 3, resolution[1], resolution[0], 3)
        for b, (scene, K, c2w) in enumerate(scenes):
            for v in range(3):
                ref = synthetic.render_view(scene, K[v], c2w[v], resolution)._asdict()
                _compare({k: getattr(out, k)[b, v] for k in ref}, ref)
        windows += (~out.valid_mask).sum()
    assert windows > 0


def test_pack_scene_pads_solids_and_refuses_too_many():
    scene = synthetic.SyntheticScenes(1, 1).scene(0)[0]
    packed = raycast.pack_scene(scene, max_solids=7)
    assert packed.solid_valid.sum() == len(scene.solids) and packed.solid_valid.shape == (7,)
    assert packed.noise.shape == (13, synthetic.NOISE_GRID, synthetic.NOISE_GRID)
    with pytest.raises(ValueError, match="more than max_solids"):
        raycast.pack_scene(scene, max_solids=1)


def test_batches_are_the_numpy_datasets_samples_and_resume():
    cfg = RenderedDataConfig(num_scenes=50, buckets=((2, 2), (3, 1)), resolutions=((48, 32), (32, 48)),
                             hole_fraction=0.1)
    batches = RenderedBatches(cfg, seed=4, mesh=make_mesh(1, 1))
    seen = set()
    for b in range(4):
        batch, orient = next(batches)
        dataset, indices = batches.draw(b)
        width, height = dataset.resolution
        assert orient == ("portrait" if width < height else "landscape",) * dataset.num_views
        seen.add((dataset.num_views, dataset.resolution))
        assert indices == [b * 2 + k for k in range(len(indices))]
        host = jax.device_get(batch)
        for k, index in enumerate(indices):
            for view, ref in zip(host, dataset[index]):
                ref = model_layout(ref)
                assert set(view) == set(BATCH_KEYS)
                np.testing.assert_array_equal(view["true_shape"][k], ref["true_shape"])
                np.testing.assert_array_equal(view["camera_pose"][k], ref["camera_pose"])
                np.testing.assert_array_equal(view["camera_intrinsics"][k], ref["camera_intrinsics"])
                _compare({key: view[key][k] for key in ("img", "pts3d", "valid_mask")}, ref)
    assert len(seen) > 1  # buckets and orientations vary from batch to batch
    state = batches.get_state()
    after = jax.device_get(next(batches)[0])
    resumed = RenderedBatches(cfg, seed=4, mesh=make_mesh(1, 1))
    resumed.set_state(json.loads(json.dumps(state)))
    again = jax.device_get(next(resumed)[0])
    for x, y in zip(after, again):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    with pytest.raises(ValueError, match="seed"):
        resumed.set_state({"batches": 1, "seed": 5})
    # Worker processes draw the same batches, also after a resume.
    pooled = RenderedBatches(dataclasses.replace(cfg, workers=2), seed=4, mesh=make_mesh(1, 1))
    try:
        pooled.set_state(state)
        for x, y in zip(jax.device_get(next(pooled)[0]), after):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
    finally:
        pooled.close()


def test_training_on_rendered_batches_resumes_with_the_same_data(tmp_path):
    """A run stopped after step 2 and resumed to step 4 logs the losses of an uninterrupted run."""
    rendered = RenderedDataConfig(num_scenes=100, buckets=((2, 2),), resolutions=((32, 32),))

    def run(workdir, steps, val_batches=0):
        cfg = TrainConfig(model=SMALL, workdir=str(workdir), steps=steps, log_every=1, val_batches=val_batches,
                          val_every=4, ckpt_every=2, dtype="float32", mesh_data=1,
                          data=config_lib.DataConfig(rendered=rendered))
        return train(cfg)

    def losses(workdir, skip: int = 0):
        lines = (workdir / "metrics.jsonl").read_bytes()[skip:].decode().splitlines()
        return {row["step"]: row["loss"] for row in map(json.loads, lines)}

    metrics = run(tmp_path / "a", 4, val_batches=1)  # validation on held-out rendered scenes in this run only
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["val/loss"]) and metrics["images_per_s"] > 0
    run(tmp_path / "b", 2)
    logged = (tmp_path / "b" / "metrics.jsonl").stat().st_size
    saved = json.loads((tmp_path / "b" / "config.json").read_text())  # as a run started before these fields existed
    del saved["model"]["scan_layers"], saved["data"]["rendered"]["span_fraction"], saved["compile_ahead"]
    (tmp_path / "b" / "config.json").write_text(json.dumps(saved))
    run(tmp_path / "b", 4)  # resumes from the checkpoint of step 2
    a, b, resumed = losses(tmp_path / "a"), losses(tmp_path / "b"), losses(tmp_path / "b", skip=logged)
    assert sorted(resumed) == [3, 4]  # the resumed run starts at checkpoint step + 1
    for step in range(1, 5):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step


def test_mixed_orientation_gives_the_same_arrays_in_one_shape_per_bucket():
    """With mixed_orientation, a resolution and its transpose come as one array shape marked 'mixed' (one compiled
    step for both), with the arrays the static marking gives; the model's 'mixed' path is the parity-tested one."""
    cfg = RenderedDataConfig(num_scenes=20, buckets=((2, 2),), resolutions=((32, 16), (16, 32)))
    static = RenderedBatches(cfg, seed=3, mesh=make_mesh(1, 1))
    mixed = RenderedBatches(dataclasses.replace(cfg, mixed_orientation=True), seed=3, mesh=make_mesh(1, 1))
    orientations, shapes = set(), set()
    for _ in range(8):
        (a, static_orient), (b, mixed_orient) = next(static), next(mixed)
        assert mixed_orient == ("mixed", "mixed")
        jax.tree.map(np.testing.assert_array_equal, a, b)
        orientations.add(static_orient)
        shapes.add(tuple(view["img"].shape for view in b))
    assert orientations == {("landscape",) * 2, ("portrait",) * 2}  # both resolutions were drawn ...
    assert shapes == {((2, 3, 16, 32),) * 2}  # ... in one shape


def test_step_shapes_compile_ahead_so_no_batch_compiles_the_step():
    """`step_shapes` lists one (batch, orientations) per bucket and resolution (per bucket when a resolution and
    its transpose share a step); `precompile` compiles the step for all of them, after which training on the
    iterator's batches, landscape and portrait marked 'mixed', compiles nothing more (each shape reuses its
    executable) and gives finite losses."""
    mesh = make_mesh(1, 1)
    cfg = RenderedDataConfig(num_scenes=50, buckets=((2, 2), (3, 1)), resolutions=((32, 16), (16, 32)))
    static = RenderedBatches(cfg, seed=1, mesh=mesh).step_shapes()
    assert sorted((len(b), b[0]["img"].shape, o[0]) for b, o in static) == [
        (2, (2, 3, 16, 32), "landscape"), (2, (2, 3, 16, 32), "portrait"),
        (3, (1, 3, 16, 32), "landscape"), (3, (1, 3, 16, 32), "portrait")]
    batches = RenderedBatches(dataclasses.replace(cfg, mixed_orientation=True), seed=1, mesh=mesh)
    shapes = batches.step_shapes()
    assert sorted((len(b), o) for b, o in shapes) == [(2, ("mixed",) * 2), (3, ("mixed",) * 3)]
    drawn = [next(batches) for _ in range(6)]  # rendered (and the renderer compiled) before counting
    assert {len(b) for b, _ in drawn} == {2, 3}
    assert {batches.draw(b)[0].resolution for b in range(6)} == {(32, 16), (16, 32)}  # both orientations
    for (batch, orient), (spec, spec_orient) in itertools.product(drawn, shapes):
        if len(batch) == len(spec):  # the drawn batch has exactly the listed shapes, dtypes and shardings
            assert orient == spec_orient
            jax.tree.map(lambda a, s: (a.shape, a.dtype, a.sharding) == (s.shape, s.dtype, s.sharding) or
                         pytest.fail(f"{a.shape} {a.dtype} vs {s}"), batch, spec)

    tx = make_optimizer(OptimizerConfig(lr=1e-3, warmup_steps=0, total_steps=10))
    step_fn, shardings = training.make_train_step(SMALL, tx, mesh, "replicated", dtype=np.float32)
    state = training.create_state(lambda: init_params(SMALL, 0), tx, 0, shardings)
    assert training.precompile(step_fn, state, shapes, threads=2) > 0
    compiled = []
    listener = lambda event, seconds, **kw: compiled.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for batch, orient in drawn:
            state, metrics = step_fn(state, batch, orient)
            assert float(metrics["finite"]) == 1.0
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert "/jax/core/compile/backend_compile_duration" not in compiled


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_scenes=0), "num_scenes"),
    (dict(buckets=((0, 2),)), "buckets"),
    (dict(resolutions=((60, 48),)), "resolutions"),
    (dict(span_fraction=(0.0, 1.0)), "span_fraction"),
    (dict(span_fraction=(0.5, 0.2)), "span_fraction"),
])
def test_bad_rendered_data_config_names_the_field(kwargs, match):
    with pytest.raises(InputError, match=match):
        RenderedDataConfig(**kwargs)
