"""The parity checks themselves: a NaN anywhere or a missing view or key fails them (tiny_caseA.npz's outputs
compared with themselves are the passing baseline)."""

import numpy as np
import pytest

from tests.helpers.parity import assert_within, golden_outputs, output_errors, rel_err, view_errors
from tests.helpers.reference_weights import DATA


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "tiny_caseA.npz")


def test_identical_outputs_pass(golden):
    assert assert_within(output_errors(golden_outputs(golden, "ids_default"), golden, "ids_default"), 0.0,
                         count=12) == 0.0


def test_nan_outputs_fail(golden):
    """The case built-in max() let through: view 2's conf and view 1's pts3d_local all NaN."""
    outputs = golden_outputs(golden, "ids_default")
    outputs[2]["conf"] = np.full_like(outputs[2]["conf"], np.nan)
    outputs[1]["pts3d_local"] = np.full_like(outputs[1]["pts3d_local"], np.nan)
    errors = output_errors(outputs, golden, "ids_default")
    assert errors["v2/conf"] == errors["v1/pts3d_local"] == np.inf
    with pytest.raises(AssertionError, match="v2/conf"):
        assert_within(errors, 1e-5, count=12)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_one_non_finite_value_fails_on_either_side(value):
    ref = np.linspace(1, 2, 12).reshape(3, 4)
    bad = ref.copy()
    bad[1, 2] = value
    assert rel_err(bad, ref) == np.inf and rel_err(ref, bad) == np.inf
    with pytest.raises(AssertionError):
        assert_within({"a": 0.0, "b": float(np.nan)}, 1.0)


def test_missing_views_and_keys_fail(golden):
    outputs = golden_outputs(golden, "ids_default")
    with pytest.raises(AssertionError, match="2 views against 3"):
        output_errors(outputs[:2], golden, "ids_default")
    del outputs[0]["conf_local"]
    with pytest.raises(AssertionError, match="view 0 lacks"):
        view_errors(outputs, golden_outputs(golden, "ids_default"))
    with pytest.raises(AssertionError, match="expected 12"):
        assert_within({"v0/conf": 0.0}, 1e-5, count=12)
