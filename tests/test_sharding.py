"""One training step under each parallel layout equals the single-device step, and partitioning is real.

Runs on 8 host CPU devices (tests/conftest.py). Compared: the loss, and Adam's first and second moments after the
step (linear and quadratic in the gradient), which exposes any difference in the gradient itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from device_bytes import bytes_per_device
from small_model import small_params

from fast3r_jax import config as config_lib
from fast3r_jax import sharding as sharding_lib
from fast3r_jax.model.params import init_params
from fast3r_jax.train import step as training
from fast3r_jax.train.optimizer import OptimizerConfig, make_optimizer

# The tiny encoder/fusion transformer with slim DPT heads (the heads dominate compile and run time on CPU).
CFG = config_lib.tiny().replace(head=config_lib.HeadConfig(feature_dim=32, last_dim=16, layer_dims=(8, 16, 32, 64)))
TX = make_optimizer(OptimizerConfig(lr=1e-3, warmup_steps=0, total_steps=10))
LAYOUTS = [("replicated", 8, 1), ("zero2", 8, 1), ("fsdp", 8, 1), ("zero2", 4, 2), ("fsdp", 2, 4)]


def _batch(batch=8, views=2, height=32, width=48, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(views):
        pose = np.eye(4, dtype=np.float32)
        pose[:3, 3] = rng.normal(size=3)
        out.append(dict(img=rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32),
                        true_shape=np.tile(np.array([[height, width]], np.int32), (batch, 1)),
                        pts3d=(rng.normal(size=(batch, height, width, 3)) + [0, 0, 3]).astype(np.float32),
                        valid_mask=rng.uniform(size=(batch, height, width)) > 0.1,
                        camera_pose=np.tile(pose, (batch, 1, 1))))
    return out


def _run(layout, data, tensor, params, batch):
    mesh = sharding_lib.make_mesh(data, tensor, jax.devices()[:data * tensor])
    step, shardings = training.make_train_step(CFG, TX, mesh, layout, dtype=jnp.float32)
    state = training.create_state(params, TX, 0, shardings)
    with jax.default_matmul_precision("highest"):
        new, metrics = step(state, training.device_batch(batch, mesh), training.orientations(batch))
    return new, metrics


@pytest.fixture(scope="module")
def reference():
    params = jax.tree.map(np.asarray, init_params(CFG, 0))
    batch = _batch()
    new, metrics = _run("replicated", 1, 1, params, batch)
    return params, batch, jax.tree.map(np.asarray, new.opt_state), float(metrics["loss"])


@pytest.mark.parametrize("layout,data,tensor", LAYOUTS)
def test_step_matches_single_device(reference, layout, data, tensor):
    params, batch, ref_opt, ref_loss = reference
    new, metrics = _run(layout, data, tensor, params, batch)
    assert abs(float(metrics["loss"]) - ref_loss) <= 1e-5 * abs(ref_loss)
    assert float(metrics["finite"]) == 1.0
    moments = jax.tree.leaves(jax.tree.map(np.asarray, new.opt_state))
    refs = jax.tree.leaves(ref_opt)
    # Relative Frobenius errors. Float32 reduction order moves the whole state by ~1e-6 and a leaf whose gradient
    # is a small sum of large cancelling terms by up to ~1e-3; a missing or doubled reduction over devices is O(1).
    diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(moments, refs)))
    assert diff <= 1e-4 * np.sqrt(sum(np.sum(b ** 2) for b in refs))
    for ours, ref in zip(moments, refs):
        assert np.linalg.norm(ours - ref) <= 1e-2 * max(np.linalg.norm(ref), 1e-30)

    per_device = bytes_per_device(new.opt_state)
    total = sum(x.nbytes for x in jax.tree.leaves(ref_opt))
    print(f"{layout} data={data} tensor={tensor}: optimizer state bytes per device {sorted(set(per_device.values()))}"
          f" of {total}")
    assert len(per_device) == data * tensor
    if layout == "replicated" and tensor == 1:
        assert set(per_device.values()) == {total}  # full copies everywhere
    else:
        assert max(per_device.values()) < 0.6 * total  # really partitioned
    params_per_device = bytes_per_device(new.params)
    if layout == "fsdp":
        assert max(params_per_device.values()) < 0.6 * sum(x.nbytes for x in jax.tree.leaves(params))


def test_tensor_parallel_specs_follow_megatron_layout():
    mesh = sharding_lib.make_mesh(2, 4)
    specs = sharding_lib.param_specs(init_params(CFG, 0), mesh, "replicated")
    fusion = specs["fusion"]["blocks"]["layers"]
    assert fusion["attn"]["qkv"]["kernel"] == jax.sharding.PartitionSpec(None, None, None, "tensor", None)
    assert fusion["attn"]["proj"]["kernel"] == jax.sharding.PartitionSpec(None, "tensor", None, None)
    assert fusion["mlp"]["fc1"]["kernel"] == jax.sharding.PartitionSpec(None, None, "tensor")
    assert fusion["mlp"]["fc2"]["kernel"] == jax.sharding.PartitionSpec(None, "tensor", None)
    # the tiny encoder has 3 heads: not divisible by 4, so its heads stay whole
    assert specs["encoder"]["blocks"]["layers"]["attn"]["qkv"]["kernel"][3] is None


def test_bad_meshes_and_layouts_raise():
    with pytest.raises(ValueError, match="devices"):
        sharding_lib.make_mesh(3, 3)
    with pytest.raises(ValueError, match="layout"):
        sharding_lib.param_specs(init_params(CFG, 0), sharding_lib.make_mesh(8, 1), "zero3")


# Splash attention (Pallas, interpret mode on CPU) in a training step over a data x tensor mesh: smallest model the
# config allows (1 encoder block, 4 fusion blocks, 2 heads each, so heads split over 'tensor'; slim DPT heads) and 2
# views of 32x32 (4 tokens each).
SPLASH_CFG = config_lib.Fast3RConfig(
    encoder=config_lib.EncoderConfig(embed_dim=32, num_heads=2, depth=1),
    fusion=config_lib.FusionConfig(embed_dim=32, num_heads=2, depth=4),
    head=config_lib.HeadConfig(feature_dim=16, last_dim=16, layer_dims=(8, 8, 16, 16)))


def test_splash_step_matches_xla_under_mesh(monkeypatch):
    """The train step resolves its attention for its mesh, so splash's kernel sits in a shard_map over it (as
    Mosaic needs on TPU, and where 'auto' picks splash); the step equals the XLA-attention step in float32: loss
    and updated parameters (per leaf, in norm) to 1e-5 relative, Adam's moments to 1e-5 relative overall (1e-4 per
    leaf). The eval step resolves its attention for its mesh too."""
    seen = []  # the mesh each step resolves its attention implementation for (once, when it is built)
    resolve = sharding_lib.resolve_attention
    monkeypatch.setattr(sharding_lib, "resolve_attention",
                        lambda impl, dtype, mesh=None: seen.append(mesh) or resolve(impl, dtype, mesh))
    mesh = sharding_lib.make_mesh(4, 2)
    params = small_params(SPLASH_CFG)  # drawn in numpy: init_params spends ~9 s on CPU for this config
    batch = _batch(batch=8, height=32, width=32)
    args = (training.device_batch(batch, mesh), training.orientations(batch))
    out = {}
    for impl in ("xla", "splash"):
        step, shardings = training.make_train_step(SPLASH_CFG.replace(attention=impl), TX, mesh, "replicated",
                                                   dtype=jnp.float32)
        state = training.create_state(params, TX, 0, shardings)
        with jax.default_matmul_precision("highest"):
            manual = _shard_maps(step.lower(state, *args).as_text())
            new, metrics = step(state, *args)
        assert (manual > 0) == (impl == "splash"), manual  # splash runs in shard_maps, nothing else does
        assert float(metrics["finite"]) == 1.0
        out[impl] = float(metrics["loss"]), jax.tree.map(np.asarray, (new.params, new.opt_state))
    assert seen and all(m == mesh for m in seen)

    (ref_loss, (ref_params, ref_opt)), (loss, (new_params, new_opt)) = out["xla"], out["splash"]
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    # Adam's first step is about lr * sign(gradient): an entry whose gradient is near rounding level moves by a
    # noisy amount, so parameters are compared in norm. The fusion transformer's key bias has no gradient at all
    # (it shifts all of a query's logits; the encoder's keys carry RoPE, so its key bias has one): left out.
    key_bias = lambda tree: tree["fusion"]["blocks"]["layers"]["attn"]["qkv"]["bias"]  # noqa: E731 (L, 3, H, D)
    assert np.abs(key_bias(ref_opt[0].mu)[:, 1]).max() <= 1e-6 * np.abs(key_bias(ref_opt[0].mu)).max()
    for tree in (new_params, ref_params):
        tree["fusion"]["blocks"]["layers"]["attn"]["qkv"]["bias"] = np.delete(key_bias(tree), 1, axis=1)
    for ours, ref in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref_params)):  # relative Frobenius per leaf
        assert np.linalg.norm(ours - ref) <= 1e-5 * np.linalg.norm(ref)
    moments, refs = jax.tree.leaves(new_opt), jax.tree.leaves(ref_opt)
    diff = np.sqrt(sum(np.sum((a - b) ** 2.0) for a, b in zip(moments, refs)))
    assert diff <= 1e-5 * np.sqrt(sum(np.sum(b ** 2.0) for b in refs))
    for ours, ref in zip(moments, refs):
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()

    seen.clear()
    evaluate = training.make_eval_step(SPLASH_CFG.replace(attention="splash"), mesh, dtype=jnp.float32)
    lowered = evaluate.lower(params, *args, jax.random.key(0))
    assert seen == [mesh] and _shard_maps(lowered.as_text()) > 0


def _shard_maps(stablehlo: str) -> int:
    """shard_map regions in lowered StableHLO (Shardy's, or GSPMD's full-to-shard conversions)."""
    return stablehlo.count("sdy.manual_computation") + stablehlo.count("@SPMDFullToShardShape")
