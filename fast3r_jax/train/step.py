"""The training step: bf16 compute on float32 master weights, fresh image ids per sample per step, sharded update.

`TrainState` is a plain pytree (params, optimizer state, step, RNG key data) so Orbax saves and restores it whole.
`make_train_step` jit-compiles one step for a mesh and layout (see fast3r_jax.sharding); the gradient is
constrained to the optimizer-state layout, so under zero2 it is reduce-scattered rather than all-reduced.
The train and eval steps are traced with their mesh as the ambient one (`jax.set_mesh`), so that model code which
asks for it sees it: splash attention's shard_map, and `attention='auto'` choosing splash on a multi-device TPU
(fast3r_jax.model.attention).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fast3r_jax import sharding as sharding_lib
from fast3r_jax.config import Fast3RConfig
from fast3r_jax.model.fast3r import Fast3R, View, orientation_of
from fast3r_jax.model.image_index_embedding import sample_image_ids
from fast3r_jax.model.params import abstract_params
from fast3r_jax.train.losses import multiview_loss

# Per-view batch arrays the step consumes (the loader may carry more).
MODEL_KEYS = ("img", "true_shape")
TARGET_KEYS = ("pts3d", "valid_mask", "camera_pose")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # () int32
    rng: jax.Array  # (2,) uint32 key data


def init_state(params: Mapping, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(jax.random.key(seed)))


def state_shardings(state: TrainState, tx: optax.GradientTransformation, mesh: Mesh, layout: str) -> TrainState:
    pspecs = sharding_lib.param_specs(state.params, mesh, layout)
    ospecs = sharding_lib.optimizer_state_specs(tx, state.opt_state, state.params, mesh, layout)
    replicated = NamedSharding(mesh, P())
    return TrainState(params=sharding_lib.named(mesh, pspecs), opt_state=sharding_lib.named(mesh, ospecs),
                      step=replicated, rng=replicated)


def orientations(batch: Sequence[Mapping[str, np.ndarray]]) -> tuple[str, ...]:
    """Static orientation per view (recompiles only per distinct pattern)."""
    return tuple(orientation_of(view["true_shape"]) for view in batch)


def _predict(graphdef, params, batch, ids, orient, train_attention_scale: bool):
    views = [View(v["img"], v["true_shape"], o) for v, o in zip(batch, orient)]
    return nnx.merge(graphdef, params)(views, ids, train_attention_scale=train_attention_scale)


def _loss(graphdef, params, batch, ids, orient, alpha, train_attention_scale=True):
    preds = _predict(graphdef, params, batch, ids, orient, train_attention_scale)
    gts = [{k: v[k] for k in TARGET_KEYS} for v in batch]
    loss, details = multiview_loss(gts, preds, alpha=alpha)
    return loss, (details, preds)


def graphdef_for(cfg: Fast3RConfig, dtype) -> nnx.GraphDef:
    return nnx.split(nnx.eval_shape(lambda: Fast3R(cfg, dtype=dtype, rngs=nnx.Rngs(0))))[0]


def make_train_step(cfg: Fast3RConfig, tx: optax.GradientTransformation, mesh: Mesh, layout: str, *,
                    dtype=jnp.bfloat16, alpha: float = 0.2, schedule: Callable | None = None):
    """Returns step(state, batch, orientations) -> (state, metrics), jitted for the mesh/layout.

    batch: list of V dicts of global arrays (batch axis first). A step whose loss or gradient is not finite leaves
    the state unchanged and reports metrics['finite'] = 0 (the caller stops with an error).
    """
    graphdef = graphdef_for(cfg, dtype)
    params_shape = abstract_params(cfg)
    state_shape = jax.eval_shape(lambda p: init_state(p, tx, 0), params_shape)
    shardings = state_shardings(state_shape, tx, mesh, layout)
    grad_sharding = sharding_lib.named(mesh, sharding_lib.update_specs(params_shape, mesh, layout))
    data = sharding_lib.batch_sharding(mesh)

    def step(state: TrainState, batch, orient):
        batch_size, num_views = batch[0]["img"].shape[0], len(batch)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        ids = sample_image_ids(key, batch_size, num_views, cfg.fusion.num_image_ids)
        (loss, (details, _)), grads = jax.value_and_grad(_loss, argnums=1, has_aux=True)(
            graphdef, state.params, batch, ids, orient, alpha)
        grads = jax.lax.with_sharding_constraint(grads, grad_sharding)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = TrainState(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                               step=state.step + 1, rng=state.rng)
        metrics = dict(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32), **details)
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return new_state, metrics

    jitted = jax.jit(step, in_shardings=(shardings, data), out_shardings=(shardings, None),
                     static_argnums=2, donate_argnums=0)
    return _under_mesh(jitted, mesh), shardings


def make_eval_step(cfg: Fast3RConfig, mesh: Mesh, *, dtype=jnp.bfloat16, alpha: float = 0.2):
    """Returns eval(params, batch, orientations, key) -> (metrics, predictions) with upstream's inference scale."""
    graphdef = graphdef_for(cfg, dtype)
    data = sharding_lib.batch_sharding(mesh)

    def evaluate(params, batch, orient, key):
        ids = sample_image_ids(key, batch[0]["img"].shape[0], len(batch), cfg.fusion.num_image_ids)
        loss, (details, preds) = _loss(graphdef, params, batch, ids, orient, alpha, train_attention_scale=False)
        return dict(loss=loss, **details), preds

    return _under_mesh(jax.jit(evaluate, in_shardings=(None, data, None), static_argnums=2), mesh)


def _under_mesh(jitted, mesh: Mesh):
    """`jitted` called (so traced) and lowered with `mesh` as the ambient mesh. `jax.set_mesh` must be entered
    outside jit, hence around the call; the ambient mesh is part of jit's cache key."""

    @functools.wraps(jitted)
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return jitted(*args, **kwargs)

    def lower(*args, **kwargs):
        with jax.set_mesh(mesh):
            return jitted.lower(*args, **kwargs)

    call.lower = lower
    return call


def device_batch(batch: Sequence[Mapping[str, np.ndarray]], mesh: Mesh) -> list[dict[str, jax.Array]]:
    """This process's part of a batch -> global arrays split over the data axis (with one process the local
    part is the whole batch)."""
    data = sharding_lib.batch_sharding(mesh)
    return [{k: jax.make_array_from_process_local_data(data, np.asarray(v[k])) for k in MODEL_KEYS + TARGET_KEYS}
            for v in batch]
