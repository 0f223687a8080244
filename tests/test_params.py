"""Parameters of a config: the kept abstract module stays abstract once models are built from it."""

import jax

from fast3r_jax.config import tiny
from fast3r_jax.model.params import abstract_params, build_model, init_params


def test_building_a_model_leaves_the_abstract_parameters_abstract():
    cfg = tiny()
    build_model(cfg, init_params(cfg))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(abstract_params(cfg)))
