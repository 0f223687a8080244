"""One training step under each parallel layout equals the single-device step, and partitioning is real.

Runs on 8 host CPU devices (tests/conftest.py). Compared: the loss, the updated parameters, and Adam's first and
second moments after the step (linear and quadratic in the gradient), which expose any difference in the gradient
itself. Tolerances are ~10x the float32 differences measured (reduction order differs between layouts).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast3r_jax import config as config_lib
from fast3r_jax import sharding as sharding_lib
from fast3r_jax.config import OptimizerConfig
from fast3r_jax.model.params import init_params
from fast3r_jax.train import step as training
from fast3r_jax.train.optimizer import make_optimizer
from tests.helpers.device_bytes import bytes_per_device
from tests.helpers.small_model import random_batch, small_params

# The tiny encoder/fusion transformer with slim DPT heads (the heads dominate compile and run time on CPU).
CFG = config_lib.tiny().replace(head=config_lib.HeadConfig(feature_dim=32, last_dim=16, layer_dims=(8, 16, 32, 64)))
TX = make_optimizer(OptimizerConfig(lr=1e-3, warmup_steps=0, total_steps=10))
# Relative Frobenius errors against the one-device step; a missing or doubled reduction over devices is O(1).
# Measured (replicated 8x1 / zero2 4x2): loss 6.9e-8 / 2.8e-7; parameters per leaf ~1e-6 / 1.3e-6 (the key bias
# aside); moments 5.2e-7 / 3.1e-7 overall, 1.8e-6 / 2.0e-6 per leaf. Other layouts reduce in other orders, and a
# leaf whose gradient is a small sum of large cancelling terms can move by up to ~1e-3 in its moments (~1e-5 in
# its parameters after lr 1e-3), hence the per-leaf margins. Parameters: Adam's first step moves each element by
# about lr * sign(gradient), so an element whose gradient is rounding noise moves by +-lr whichever way the noise
# falls: on an AMD EPYC (jaxlib 0.10.2) the single-device step flips a few hundred such elements of three head
# kernels against every layout, 3.5e-4 relative (1.3e-6 on the machines measured before). The moments, linear in
# the gradient, are what catch a missing or doubled reduction (Adam's normalised step does not).
LOSS_RTOL, PARAM_RTOL, MOMENT_RTOL, MOMENT_LEAF_RTOL = 1e-6, 1e-3, 1e-5, 1e-2
LAYOUTS = [("replicated", 8, 1), ("zero2", 8, 1), ("fsdp", 8, 1), ("zero2", 4, 2), ("fsdp", 2, 4)]


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
    batch = random_batch()
    new, metrics = _run("replicated", 1, 1, params, batch)
    return params, batch, jax.tree.map(np.asarray, (new.params, new.opt_state)), float(metrics["loss"])


@pytest.mark.parametrize("layout,data,tensor", LAYOUTS)
def test_step_matches_single_device(reference, layout, data, tensor):
    params, batch, (ref_params, ref_opt), ref_loss = reference
    new, metrics = _run(layout, data, tensor, params, batch)
    assert float(metrics["finite"]) == 1.0
    loss_err = abs(float(metrics["loss"]) - ref_loss) / abs(ref_loss)
    ours_params = jax.tree.map(np.asarray, new.params)
    # The fusion transformer's key bias has no gradient (it shifts all of a query's logits), so Adam moves it by
    # lr * sign(rounding noise): checked to have a zero moment, then left out (as in the splash test below).
    key_bias = lambda tree: tree["fusion"]["blocks"]["layers"]["attn"]["qkv"]["bias"]  # noqa: E731 (L, 3, H, D)
    assert np.abs(key_bias(ref_opt[0].mu)[:, 1]).max() <= 1e-6 * np.abs(key_bias(ref_opt[0].mu)).max()
    ref_params = jax.tree.map(np.copy, ref_params)  # the module fixture stays as it is
    for tree in (ours_params, ref_params):
        tree["fusion"]["blocks"]["layers"]["attn"]["qkv"]["bias"] = np.delete(key_bias(tree), 1, axis=1)
    param_errs = [_rel(a, b) for a, b in zip(jax.tree.leaves(ours_params), jax.tree.leaves(ref_params), strict=True)]
    moments, refs = jax.tree.leaves(jax.tree.map(np.asarray, new.opt_state)), jax.tree.leaves(ref_opt)
    assert len(moments) == len(refs)
    moment_err = np.sqrt(sum(np.sum((a - b) ** 2.0) for a, b in zip(moments, refs))) / np.sqrt(
        sum(np.sum(b ** 2.0) for b in refs))
    leaf_errs = [_rel(a, b) for a, b in zip(moments, refs) if np.linalg.norm(b) > 0]
    print(f"{layout} data={data} tensor={tensor}: loss {loss_err:.1e} params {max(param_errs):.1e} moments "
          f"{moment_err:.1e} (per leaf {max(leaf_errs):.1e})")
    assert loss_err <= LOSS_RTOL
    assert max(param_errs) <= PARAM_RTOL  # NaN fails too
    assert moment_err <= MOMENT_RTOL and max(leaf_errs) <= MOMENT_LEAF_RTOL

    mesh = sharding_lib.make_mesh(data, tensor, jax.devices()[:data * tensor])
    for tree, partitioned in ((new.opt_state, layout != "replicated"), (new.params, layout == "fsdp")):
        per_device = bytes_per_device(tree)
        expected, replicated = _bytes_from_specs(tree, mesh, data if partitioned else 1)
        total = sum(x.nbytes for x in jax.tree.leaves(tree))
        print(f"  bytes per device {max(per_device.values())} of {total} (replicated leaves {replicated})")
        assert len(per_device) == data * tensor and max(per_device.values()) == expected
        if partitioned:  # 1/data of every leaf that data divides, plus the replicated rest (tensor splits more)
            assert expected <= replicated + (total - replicated) / data


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    """Relative Frobenius error; inf for a non-finite value."""
    err = float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))
    return err if np.isfinite(err) else float("inf")


def _bytes_from_specs(tree, mesh, data: int) -> tuple[int, int]:
    """(bytes one device holds by the leaves' PartitionSpecs, bytes of leaves that stay replicated). With data > 1
    every leaf with a free dimension (not split over 'tensor') that data divides must be split over 'data' (the
    layouts' promise)."""
    expected = replicated = 0
    for leaf in jax.tree.leaves(tree):
        axes = [a for entry in leaf.sharding.spec if entry for a in (entry if isinstance(entry, tuple) else (entry,))]
        spec = tuple(leaf.sharding.spec) + (None,) * (len(leaf.shape) - len(leaf.sharding.spec))
        if data > 1 and any(d % data == 0 and d > 1 and s in (None, "data") for d, s in zip(leaf.shape, spec)):
            assert "data" in axes, (leaf.shape, leaf.sharding.spec)  # a free dimension data divides is split
        shards = int(np.prod([mesh.shape[a] for a in axes]))
        expected += leaf.nbytes // shards
        replicated += leaf.nbytes if "data" not in axes else 0
    return expected, replicated


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
    batch = random_batch(batch=8, height=32, width=32)
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
