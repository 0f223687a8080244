"""Training beside upstream PyTorch: our first optimizer steps on the tiny config against upstream's, per step.

Golden: tests/data/train_parity_tiny.npz, made once by running upstream PyTorch Fast3R (float32, CPU) through
benchmarks/train_parity.py (its `provenance` entry, JSON, holds the upstream commit, torch version, config, seeds,
optimizer settings and the exact command):

    python benchmarks/train_parity.py --torch-reference <fast3r checkout> --config tiny --views 2 --size 32x32 \
        --steps 5 --scenes 5 --warmup-steps 2 --init-weights <tiny.npz> --golden tests/data/train_parity_tiny.npz

where <tiny.npz> holds `reference_weights.tiny_state_dict()` (the reference goldens' deterministic weights). It holds
the inputs (5 synthetic scenes of 2 views at 32x32 in the loader's layout, the scene of each step and the image ids
our step draws with the recorded seed, which upstream was given) and upstream's per-step loss, loss terms, gradient
norm and learning rate. Only our side runs here (no torch, no upstream checkout): benchmarks/train_parity.run_ours,
our train step (fast3r_jax.train.step) with AdamW (betas (0.9, 0.95), weight decay 0.05) at the recorded schedule.
"""

import json

import numpy as np
import pytest

from benchmarks.train_parity import run_ours, step_image_ids
from fast3r_jax import config as config_lib
from fast3r_jax.config import OptimizerConfig
from tests.helpers.reference_weights import DATA, tiny_state_dict

GOLDEN = DATA / "train_parity_tiny.npz"
# Measured when the golden was made (float32, CPU): largest relative difference over the 5 steps 1.9e-7 for the loss,
# 1.3e-6 for a loss term and 1.6e-5 for the gradient norm; the tolerances are a small multiple of those.
RTOL_LOSS = 1e-5
RTOL_GRAD_NORM = 1e-4


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as z:
        data = {k: z[k] for k in z.files}
    return data, json.loads(str(data["provenance"]))


@pytest.fixture(scope="module")
def ours(golden):
    data, provenance = golden
    cfg = config_lib.tiny()
    # The golden's config, read as a config file is (fields added since take their defaults), is the tiny config.
    assert config_lib.Fast3RConfig.from_dict(provenance["config"]) == cfg
    opt = OptimizerConfig(**provenance["optimizer"])
    return run_ours(cfg, tiny_state_dict(), data, opt, "float32", provenance["seed"], len(data["upstream/loss"]))


def test_golden_inputs_are_what_our_step_draws(golden):
    data, provenance = golden
    steps, batch = data["order"].shape
    num_views = data["img"].shape[1]
    ids = step_image_ids(provenance["seed"], steps, batch, num_views, config_lib.tiny().fusion.num_image_ids)
    np.testing.assert_array_equal(ids, data["ids/a"])
    assert steps == 5 and num_views == 2 and data["img"].shape[-2:] == (32, 32)


def test_learning_rates_match_upstream_run(golden, ours):
    data, _ = golden
    np.testing.assert_allclose([s["lr"] for s in ours], data["upstream/lr"], rtol=1e-6, atol=1e-12)


def test_losses_and_terms_match_upstream_per_step(golden, ours):
    data, _ = golden
    terms = [k.split("/", 1)[1] for k in data if k.startswith("upstream/") and k not in ("upstream/grad_norm",
                                                                                         "upstream/lr")]
    assert "loss" in terms and len(terms) == 1 + 4 * 2  # loss, then pts3d/conf x global/local x 2 views
    for term in terms:
        np.testing.assert_allclose([s[term] for s in ours], data[f"upstream/{term}"], rtol=RTOL_LOSS, err_msg=term)


def test_gradient_norms_match_upstream_per_step(golden, ours):
    data, _ = golden
    np.testing.assert_allclose([s["grad_norm"] for s in ours], data["upstream/grad_norm"], rtol=RTOL_GRAD_NORM)
