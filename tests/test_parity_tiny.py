"""Parity of the tiny config with the upstream PyTorch goldens (tiny_caseA.npz, tiny_caseB.npz,
tiny_caseA_random_ids.npz), float32, tolerance max|out-ref|/max|ref| <= 1e-5 on every output and intermediate."""

import numpy as np
import pytest

from fast3r_jax import config as config_lib
from fast3r_jax.convert.table import params_from_torch
from fast3r_jax.inference.predict import predict
from fast3r_jax.model.params import build_model
from tests.helpers.parity import (
    VARIANTS,
    assert_within,
    golden_views,
    intermediate_errors,
    intermediates,
    output_errors,
    per_view_ids,
    view_errors,
)
from tests.helpers.reference_weights import DATA, tiny_state_dict

TOL = 1e-5
CFG = config_lib.tiny()


@pytest.fixture(scope="module")
def params():
    return params_from_torch(tiny_state_dict(), CFG)


@pytest.fixture(scope="module")
def model(params):
    return build_model(CFG, params)


@pytest.mark.parametrize("case", ["tiny_caseA", "tiny_caseB"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_match_golden(params, case, variant):
    z = np.load(DATA / f"{case}.npz")
    views = golden_views(z)
    ids = per_view_ids(z, variant, views)
    assert ids == ([0, 17, 503] if variant == "ids_forced" else [0, 1, 2])
    outputs = predict(CFG, params, views, image_ids=ids, train_attention_scale=variant == "train_scale")
    assert_within(output_errors(outputs, z, variant), TOL, count=12)


@pytest.mark.parametrize("case", ["tiny_caseA", "tiny_caseB"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_intermediates_match_golden(model, case, variant):
    z = np.load(DATA / f"{case}.npz")
    views = golden_views(z)
    inter = intermediates(model, views, per_view_ids(z, variant, views), variant == "train_scale")
    errors = intermediate_errors(inter, z, variant)
    assert {"enc_out_v0", "dec_hook_0", "dec_hook_5", "dec_hook_7", "dec_hook_10", "dec_final"} <= set(errors)
    assert_within(errors, TOL)


def test_random_id_path_with_drawn_ids(params):
    """Upstream's random-id path (seed 0 drew ids [0, 877, 196]) equals predict with those ids."""
    z = np.load(DATA / "tiny_caseA_random_ids.npz")
    ids = z["random_seed0/drawn_image_ids"].tolist()
    assert ids == [0, 877, 196]
    views = golden_views(np.load(DATA / "tiny_caseA.npz"))
    assert_within(output_errors(predict(CFG, params, views, image_ids=ids), z, "random_seed0"), TOL, count=12)


def test_inference_scale_changes_outputs(params):
    """The two attention scales really differ (guards against a flag that does nothing)."""
    views = golden_views(np.load(DATA / "tiny_caseA.npz"))
    a = predict(CFG, params, views)[1]["pts3d_in_other_view"]
    b = predict(CFG, params, views, train_attention_scale=True)[1]["pts3d_in_other_view"]
    assert np.abs(a - b).max() > 1e-3


def test_portrait_view_batched_with_landscape_in_one_view(params):
    """A view whose batch mixes portrait and landscape samples equals running each sample on its own."""
    z = np.load(DATA / "tiny_caseB.npz")
    views = golden_views(z)  # view 1 is portrait (true 64x48) stored as a (48, 64) tensor
    second = [views[0], views[0], views[2]]  # a landscape sample with view 1's tensor shape
    mixed = [{k: np.concatenate([v[k], s[k]]) for k in ("img", "true_shape")} for v, s in zip(views, second)]
    assert mixed[1]["true_shape"].tolist() == [[64, 48], [48, 64]]
    out = predict(CFG, params, mixed)
    single = predict(CFG, params, views)
    assert_within(view_errors([{k: v[:1] for k, v in o.items()} for o in out], single), TOL, count=12)


def test_bfloat16_close_to_float32_golden(params):
    """bf16 compute stays within a few percent of the fp32 golden (numbers reported in README)."""
    z = np.load(DATA / "tiny_caseA.npz")
    assert_within(output_errors(predict(CFG, params, golden_views(z), dtype="bfloat16"), z, "ids_default"), 0.05,
                  count=12)
