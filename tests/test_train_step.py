"""The training step's precision and memory options: bf16 compute keeps float32 master weights and a loss close to
the float32 step; rematerialisation and unrolled layer stacks do not change the gradients. One device, the smallest
model the config allows (1 encoder block, 4 fusion blocks, slim DPT heads), 2 views of 32x32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fast3r_jax import config as config_lib
from fast3r_jax import sharding as sharding_lib
from fast3r_jax.train import step as training
from fast3r_jax.train.optimizer import OptimizerConfig, make_optimizer
from tests.helpers.small_model import random_batch, small_params

CFG = config_lib.Fast3RConfig(
    encoder=config_lib.EncoderConfig(embed_dim=32, num_heads=2, depth=1),
    fusion=config_lib.FusionConfig(embed_dim=32, num_heads=2, depth=4),
    head=config_lib.HeadConfig(feature_dim=16, last_dim=16, layer_dims=(8, 8, 16, 16)))
TX = make_optimizer(OptimizerConfig(lr=1e-3, warmup_steps=0, total_steps=10))
BF16_LOSS_RTOL = 5e-3  # measured 6.4e-4: bf16 activations and matmuls against the float32 step
REMAT_RTOL = 5e-6  # per leaf, relative Frobenius; measured 4.8e-7 (the recomputed forward fuses differently)
UNROLL_LOSS_RTOL = 1e-6  # measured 1.0e-7: the loop and the unrolled blocks fuse differently
UNROLL_RTOL = 5e-6  # per leaf, relative Frobenius; measured 1.1e-6


def _step(cfg, dtype):
    mesh = sharding_lib.make_mesh(1, 1, jax.devices()[:1])
    step, shardings = training.make_train_step(cfg, TX, mesh, "replicated", dtype=dtype)
    batch = random_batch(batch=2, height=32, width=32)
    state = jax.device_put(training.init_state(small_params(CFG), TX, 0), shardings)
    with jax.default_matmul_precision("highest"):
        new, metrics = step(state, training.device_batch(batch, mesh), training.orientations(batch))
    assert float(metrics["finite"]) == 1.0
    return jax.tree.map(np.asarray, new), float(metrics["loss"])


@pytest.fixture(scope="module")
def float32_step():
    return _step(CFG, jnp.float32)


def test_bfloat16_step_keeps_float32_master_weights(float32_step):
    (_, ref_loss), (new, loss) = float32_step, _step(CFG, jnp.bfloat16)
    print(f"bf16 loss {loss} vs float32 {ref_loss}: {abs(loss / ref_loss - 1):.1e}")
    assert {leaf.dtype for leaf in jax.tree.leaves((new.params, new.opt_state)) if leaf.ndim} == {np.dtype("float32")}
    assert abs(loss / ref_loss - 1) <= BF16_LOSS_RTOL
    start = jax.tree.leaves(small_params(CFG))
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(new.params), start, strict=True)]
    assert np.median(moved) > 1e-4  # the step updated the float32 weights (lr 1e-3 Adam: about 1e-3 per entry)


@pytest.mark.parametrize("policy", config_lib.REMAT_POLICIES)
def test_remat_leaves_gradients_unchanged(float32_step, policy):
    """Adam's first moment after one step is 0.1 x the gradient: compared leaf by leaf, for every policy of what a
    rematerialised block keeps."""
    (ref, ref_loss), (new, loss) = float32_step, _step(CFG.replace(remat=True, remat_policy=policy), jnp.float32)
    assert loss == ref_loss
    ours, refs = (jax.tree.leaves(optax.tree_utils.tree_get(s.opt_state, "mu")) for s in (new, ref))
    errors = [np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30) for a, b in zip(ours, refs, strict=True)]
    print(f"remat ({policy}) gradient error per leaf: max {max(errors):.1e}")
    assert np.isfinite(errors).all() and max(errors) <= REMAT_RTOL


@pytest.mark.parametrize("remat", [False, True])
def test_unrolled_layers_leave_loss_and_gradients_unchanged(float32_step, remat):
    """`scan_layers=False` runs the same blocks one after another instead of in a loop, with or without
    rematerialising each: the same loss and, leaf by leaf, the same gradients (Adam's first moment); parameters stay
    stacked."""
    (ref, ref_loss), (new, loss) = float32_step, _step(CFG.replace(scan_layers=False, remat=remat), jnp.float32)
    assert jax.tree.structure(new.params) == jax.tree.structure(ref.params)
    assert loss == pytest.approx(ref_loss, rel=UNROLL_LOSS_RTOL)
    ours, refs = (jax.tree.leaves(optax.tree_utils.tree_get(s.opt_state, "mu")) for s in (new, ref))
    errors = [np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30) for a, b in zip(ours, refs, strict=True)]
    print(f"unrolled (remat {remat}): loss error {abs(loss / ref_loss - 1):.1e}, "
          f"gradient error per leaf: max {max(errors):.1e}")
    assert np.isfinite(errors).all() and max(errors) <= UNROLL_RTOL
