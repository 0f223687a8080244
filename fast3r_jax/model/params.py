"""Parameters of a Fast3R config: abstract shapes, fresh initialisation, the strict check, and a module built
around given parameters.

Parameters are a pure nested dict of arrays, as `nnx.state(model, nnx.Param).to_pure_dict()` gives them; the
transformer blocks are stacked on a leading layer axis.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fast3r_jax.config import Fast3RConfig
from fast3r_jax.errors import InputError
from fast3r_jax.model.fast3r import Fast3R


class CheckpointMismatchError(InputError):
    """The checkpoint's tensors do not match the model config (names or shapes)."""


@functools.cache
def _abstract_model(cfg: Fast3RConfig, dtype: np.dtype) -> tuple[nnx.GraphDef, nnx.State]:
    """The module of a config and compute dtype, split into its structure and its abstract state (shapes only).

    Constructing the module means tracing every initialiser: done once per (config, dtype) and kept, so that
    checking, restoring and building a model for it do not trace it again."""
    return nnx.split(nnx.eval_shape(lambda: Fast3R(cfg, dtype=dtype, rngs=nnx.Rngs(0))))


def abstract_params(cfg: Fast3RConfig, compute_dtype=jnp.float32) -> dict:
    """Parameter tree of a config as jax.ShapeDtypeStruct leaves (no memory allocated).

    The parameters are float32 whatever the model computes in: `compute_dtype` only picks the kept trace they are
    read from, so that a caller about to build the model of that dtype traces it once."""
    _, state = _abstract_model(cfg, jnp.dtype(compute_dtype))
    return nnx.filter_state(state, nnx.Param).to_pure_dict()


def init_params(cfg: Fast3RConfig, seed: int = 0) -> dict:
    """Freshly initialised parameters (random weights, e.g. for benchmarks or training from scratch)."""
    return nnx.state(Fast3R(cfg, rngs=nnx.Rngs(seed)), nnx.Param).to_pure_dict()


def flat_params(tree: Mapping) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v for path, v in leaves}


def check_params(params: Mapping, cfg: Fast3RConfig, compute_dtype=jnp.float32) -> None:
    """Raises one error listing parameters that are missing, unexpected or mis-shaped for the config
    (compute_dtype: see abstract_params)."""
    want, got = flat_params(abstract_params(cfg, compute_dtype)), flat_params(params)
    problems = [f"missing: {k}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected: {k}" for k in sorted(set(got) - set(want))]
    problems += [f"mis-shaped: {k}: {tuple(np.shape(got[k]))} vs {tuple(want[k].shape)}"
                 for k in sorted(set(want) & set(got)) if tuple(np.shape(got[k])) != tuple(want[k].shape)]
    if problems:
        raise CheckpointMismatchError("parameters do not match the config:\n  " + "\n  ".join(problems))


def build_model(cfg: Fast3RConfig, params: Mapping, dtype=jnp.float32) -> Fast3R:
    """A Fast3R module holding `params` (checked against the config), computing in `dtype`."""
    check_params(params, cfg, dtype)
    model = nnx.merge(*_abstract_model(cfg, jnp.dtype(dtype)), copy=True)  # a fresh module of abstract values
    state = nnx.state(model, nnx.Param)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, dict(params)))
    nnx.update(model, state)
    return model
