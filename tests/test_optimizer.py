"""The optimizer's learning-rate schedule, weight-decay mask and gradient clipping against closed forms."""

import math

import jax
import numpy as np
import optax
import pytest

from fast3r_jax.train.optimizer import OptimizerConfig, learning_rate, make_optimizer


def test_schedule_is_linear_warmup_then_cosine_to_min_lr():
    cfg = OptimizerConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=110)
    schedule = learning_rate(cfg)

    def expected(step: int) -> float:
        if step <= 10:
            return 1e-3 * step / 10
        t = min(step - 10, 100) / 100
        return 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * t))

    for step in (0, 1, 5, 10, 11, 35, 60, 85, 109, 110, 500):
        assert float(schedule(step)) == pytest.approx(expected(step), rel=1e-6, abs=1e-9), step  # float32 of 1e-3
    assert float(schedule(60)) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-6)  # halfway down the cosine


def _ones_like_model() -> dict:
    """A parameter tree with the model's kinds of leaves (dense and conv kernels, biases, norm scales, a stacked
    layer axis), every entry 1."""
    shapes = {"dense": {"kernel": (4, 6), "bias": (6,)}, "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
              "norm": {"scale": (6,), "bias": (6,)}, "blocks": {"qkv": {"kernel": (2, 6, 3, 2, 3)}}}
    return jax.tree.map(lambda shape: np.ones(shape, np.float32), shapes, is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.parametrize("mask", ["all", "matrices"])
def test_decay_mask_decays_kernels_only_under_matrices(mask):
    """A zero gradient leaves Adam's step at 0, so the update is the decay alone: -lr * wd * param on decayed
    leaves, 0 elsewhere. 'all' decays every leaf; 'matrices' the dense and conv kernels, not biases or norm scales."""
    params = _ones_like_model()
    tx = make_optimizer(OptimizerConfig(lr=0.1, min_lr=0.1, warmup_steps=0, total_steps=10, weight_decay=0.5,
                                        decay_mask=mask))
    updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
    decayed, kept = set(), set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(updates):
        name = path[-1].key
        value = np.unique(np.asarray(leaf))
        assert len(value) == 1 and value[0] in (0.0, np.float32(-0.05)), (name, value)
        (decayed if value[0] else kept).add(name)
    if mask == "all":
        assert decayed == {"kernel", "bias", "scale"} and not kept
    else:
        assert decayed == {"kernel"} and kept == {"bias", "scale"}


@pytest.mark.parametrize("scale, expected_norm", [(10.0, 1.0), (0.5, 0.5)])
def test_clipping_bounds_the_global_gradient_norm(scale, expected_norm):
    """Adam's first moment after one step is (1 - b1) * the gradient it was given: its global norm shows the
    gradient after clipping (to 1.0 above the bound, unchanged below)."""
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(4, 5)).astype(np.float32), "b": rng.normal(size=7).astype(np.float32)}
    grads = jax.tree.map(lambda g: g * scale / float(optax.global_norm(grads)), grads)  # global norm = scale
    params = jax.tree.map(np.zeros_like, grads)
    tx = make_optimizer(OptimizerConfig(warmup_steps=0, total_steps=10, grad_clip_norm=1.0))
    _, state = tx.update(grads, tx.init(params), params)
    mu = optax.tree_utils.tree_get(state, "mu")
    assert float(optax.global_norm(mu)) / (1 - 0.9) == pytest.approx(expected_norm, rel=1e-6)
    direction = jax.tree.map(lambda m, g: m / (1 - 0.9) - g * expected_norm / scale, mu, grads)
    assert float(optax.global_norm(direction)) <= 1e-6  # clipping rescales, it does not turn the gradient
