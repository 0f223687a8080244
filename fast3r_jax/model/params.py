"""Parameters of a Fast3R config: abstract shapes, fresh initialisation, the strict check, and a module built
around given parameters.

Parameters are a pure nested dict of arrays, as `nnx.state(model, nnx.Param).to_pure_dict()` gives them; the
transformer blocks are stacked on a leading layer axis.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fast3r_jax import compilation_cache
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


def abstract_params(cfg: Fast3RConfig, compute_dtype=jnp.float32,
                    cache_dir: str | os.PathLike | None = None) -> dict:
    """Parameter tree of a config as jax.ShapeDtypeStruct leaves (no memory allocated).

    The parameters are float32 whatever the model computes in: `compute_dtype` only picks the kept trace they are
    read from, so that a caller about to build the model of that dtype traces it once. cache_dir: a compilation
    cache folder (fast3r_jax.compilation_cache) that keeps the tree, so that a later process restoring a
    checkpoint of this config (whose engine may find all its programs there too) does not trace the model."""
    name = compilation_cache.key("params", cfg.to_json()) if cache_dir is not None else None
    stored = compilation_cache.read(cache_dir, name) if name is not None else None
    if stored is not None:
        try:
            return _tree_from_json(stored)
        except (ValueError, TypeError, KeyError, IndexError):
            pass  # rewritten below
    _, state = _abstract_model(cfg, jnp.dtype(compute_dtype))
    tree = nnx.filter_state(state, nnx.Param).to_pure_dict()
    if name is not None:
        compilation_cache.write(cache_dir, name, _tree_to_json(tree))
    return tree


def _tree_to_json(tree: Mapping) -> bytes:
    """A nested dict of ShapeDtypeStructs as JSON: [path keys (str or int, as in the tree), shape, dtype] per leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return json.dumps([[[k.key for k in path], list(leaf.shape), jnp.dtype(leaf.dtype).name]
                       for path, leaf in leaves]).encode()


def _tree_from_json(data: bytes) -> dict:
    tree: dict = {}
    for path, shape, dtype in json.loads(data):
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
    return tree


def init_params(cfg: Fast3RConfig, seed: int = 0) -> dict:
    """Freshly initialised parameters (random weights, e.g. for benchmarks or training from scratch)."""
    return nnx.state(Fast3R(cfg, rngs=nnx.Rngs(seed)), nnx.Param).to_pure_dict()


def flat_params(tree: Mapping) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v for path, v in leaves}


def check_params(params: Mapping, cfg: Fast3RConfig, compute_dtype=jnp.float32,
                 cache_dir: str | os.PathLike | None = None) -> None:
    """Raises one error listing parameters that are missing, unexpected or mis-shaped for the config
    (compute_dtype, cache_dir: see abstract_params)."""
    want, got = flat_params(abstract_params(cfg, compute_dtype, cache_dir)), flat_params(params)
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


# Sublayers whose output is added to a block's residual stream: zero, they make the block the identity.
_RESIDUAL_OUTPUTS = ("attn.proj.", "mlp.fc2.")


def check_deeper(cfg: Fast3RConfig, deeper: Fast3RConfig) -> None:
    """InputError naming the field unless `deeper` is `cfg` with encoder and fusion depths multiplied by whole
    numbers (what `deepen` grows)."""
    for stack in ("encoder", "fusion"):
        old, new = getattr(cfg, stack).depth, getattr(deeper, stack).depth
        if new < old or new % old:
            raise InputError(f"{stack}.depth: {new} is not a whole multiple of the checkpoint's {old}")
    same_depths = deeper.replace(encoder=dataclasses.replace(deeper.encoder, depth=cfg.encoder.depth),
                                 fusion=dataclasses.replace(deeper.fusion, depth=cfg.fusion.depth))
    if same_depths.architecture() != cfg.architecture():
        raise InputError("only encoder.depth and fusion.depth may differ from the checkpoint's model config")


def deepen(params: Mapping, cfg: Fast3RConfig, deeper: Fast3RConfig, seed: int = 0) -> dict:
    """`params` of `cfg` as parameters of `deeper`, a config that differs only in encoder and fusion depths, each a
    whole multiple k of cfg's: the same function with more blocks to train (growing a trained model).

    Each of cfg's blocks is preceded by k - 1 new ones whose residual outputs (attention projection, MLP output)
    are zero, so that they pass their input through; their other weights are freshly initialised (`seed`) and
    learn once those outputs move off zero. With the old block last in each group of k, the fusion output after
    old block i is found at new indices k(i+1) .. k(i+1)+k-1, which hold every DPT hook of `deeper` (floor(k D a/4)
    lies in k floor(D a/4) + [0, k-1] for a = 2, 3): the heads read what they read before. InputError naming the
    field when `deeper` is not such a config (`check_deeper`)."""
    check_deeper(cfg, deeper)
    check_params(params, cfg)
    old = flat_params(params)

    def leaf(path, fresh: jax.Array) -> np.ndarray:
        key = ".".join(str(p.key) for p in path)
        if ".blocks.layers." not in key:
            return np.asarray(old[key])
        stack, sub = key.split(".blocks.layers.")
        k = getattr(deeper, stack).depth // getattr(cfg, stack).depth
        out = np.zeros_like(fresh) if sub.startswith(_RESIDUAL_OUTPUTS) else np.array(fresh)
        out[k - 1::k] = old[key]  # (depth, ...): the old blocks last in each group of k
        return out

    return jax.tree_util.tree_map_with_path(leaf, init_params(deeper, seed))
