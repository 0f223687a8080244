"""Parameters of a config: the kept abstract module stays abstract once models are built from it; a trained model
grown deeper computes the same function."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.small_model import small_config, small_params

from fast3r_jax.config import tiny
from fast3r_jax.errors import InputError
from fast3r_jax.model.fast3r import View
from fast3r_jax.model.params import abstract_params, build_model, deepen, init_params


def test_building_a_model_leaves_the_abstract_parameters_abstract():
    cfg = tiny()
    build_model(cfg, init_params(cfg))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(abstract_params(cfg)))


def _depths(cfg, encoder: int, fusion: int):
    return cfg.replace(encoder=dataclasses.replace(cfg.encoder, depth=encoder),
                       fusion=dataclasses.replace(cfg.fusion, depth=fusion))


def _outputs(cfg, params) -> list[dict]:
    rng = np.random.default_rng(0)
    views = [View(jnp.asarray(rng.uniform(-1, 1, (1, 3, 32, 48)), jnp.float32), jnp.array([[32, 48]]))
             for _ in range(3)]
    return jax.tree.map(np.asarray, build_model(cfg, params)(views, jnp.arange(3)[None]))


@pytest.mark.parametrize("encoder, fusion", [(2, 4), (3, 3)])
def test_deepen_keeps_the_function_and_adds_trainable_blocks(encoder, fusion):
    """Depths x2 / x3 (fusion 5 -> 15: odd, so the DPT hooks move to other indices than k times the old ones)."""
    cfg = _depths(small_config(), 1, 5)
    params = small_params(cfg)
    deeper = _depths(cfg, encoder, 5 * fusion)
    grown = deepen(params, cfg, deeper, seed=1)
    before, after = _outputs(cfg, params), _outputs(deeper, grown)
    for b, a in zip(before, after, strict=True):
        for key in b:  # the global and local points and confidences, within float32 rounding
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    layers = grown["fusion"]["blocks"]["layers"]
    k = fusion
    np.testing.assert_array_equal(layers["mlp"]["fc1"]["kernel"][k - 1::k],
                                  params["fusion"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"])
    new = np.arange(5 * k) % k != k - 1
    assert not np.any(layers["attn"]["proj"]["kernel"][new]) and not np.any(layers["mlp"]["fc2"]["kernel"][new])
    assert np.all(np.std(layers["attn"]["qkv"]["kernel"][new], axis=(1, 2, 3, 4)) > 0)
    # the new blocks are on the path: one moved off zero changes the output
    layers["mlp"]["fc2"]["bias"][0] = 0.5
    moved = _outputs(deeper, grown)
    assert np.abs(moved[0]["pts3d_in_other_view"] - before[0]["pts3d_in_other_view"]).max() > 1e-3


@pytest.mark.parametrize("change, match", [
    (lambda c: _depths(c, 1, 7), "fusion.depth: 7 is not a whole multiple of the checkpoint's 5"),
    (lambda c: _depths(c, 0, 5), "encoder.depth: 0 is not"),
    (lambda c: c.replace(fusion=dataclasses.replace(c.fusion, depth=10, num_heads=2)),
     "only encoder.depth and fusion.depth may differ"),
])
def test_deepen_refuses_other_changes(change, match):
    cfg = _depths(small_config(), 1, 5)
    with pytest.raises(InputError, match=match):
        deepen(small_params(cfg), cfg, change(cfg))
