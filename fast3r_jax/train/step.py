"""The training step: bf16 compute on float32 master weights, fresh image ids per sample per step, sharded update.

`TrainState` is a plain pytree (params, optimizer state, step, RNG key data) so Orbax saves and restores it whole.
`make_train_step` jit-compiles one step for a mesh and layout (see fast3r_jax.sharding); the gradient is
constrained to the optimizer-state layout, so under zero2 it is reduce-scattered rather than all-reduced.
`create_state` builds the state directly in that layout. The train and eval steps resolve the model's attention
kernel once, for their mesh (`sharding.resolve_attention`: splash's shard_map spans it, and `attention='auto'`
picks splash on a TPU mesh).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
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
from fast3r_jax.model.attention import AttentionImpl
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
    """The state at step 0 (placed nowhere in particular: see `create_state`)."""
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(jax.random.key(seed)))


def create_state(params: Mapping | Callable[[], Mapping], tx: optax.GradientTransformation, seed: int,
                 shardings: TrainState) -> TrainState:
    """The state at step 0 created in its sharded layout (`shardings`, as `make_train_step` returns them), so no
    device ever holds more than its part (fsdp works for models larger than one device).

    params: host arrays (e.g. a converted checkpoint: copied straight into their shards), or a function making
    them (e.g. random initialisation: run under jit, each device computing only its shards).
    """
    if callable(params):
        return jax.jit(lambda: init_state(params(), tx, seed), out_shardings=shardings)()
    placed = jax.device_put(params, shardings.params)
    return jax.jit(lambda p: init_state(p, tx, seed), out_shardings=shardings)(placed)


def state_shardings(state: TrainState, tx: optax.GradientTransformation, mesh: Mesh, layout: str) -> TrainState:
    pspecs = sharding_lib.param_specs(state.params, mesh, layout)
    ospecs = sharding_lib.optimizer_state_specs(tx, state.opt_state, state.params, mesh, layout)
    replicated = NamedSharding(mesh, P())
    return TrainState(params=sharding_lib.named(mesh, pspecs), opt_state=sharding_lib.named(mesh, ospecs),
                      step=replicated, rng=replicated)


def orientations(batch: Sequence[Mapping[str, np.ndarray]]) -> tuple[str, ...]:
    """Static orientation per view (recompiles only per distinct pattern)."""
    return tuple(orientation_of(view["true_shape"]) for view in batch)


def _predict(graphdef: nnx.GraphDef, params, batch, ids: jax.Array, orient: tuple[str, ...],
             attention: AttentionImpl, train_attention_scale: bool) -> list[dict[str, jax.Array]]:
    views = [View(v["img"], v["true_shape"], o) for v, o in zip(batch, orient)]
    return nnx.merge(graphdef, params)(views, ids, attention=attention, train_attention_scale=train_attention_scale)


def _loss(graphdef: nnx.GraphDef, params, batch, ids: jax.Array, orient: tuple[str, ...], alpha: float,
          pose_weight: float, attention: AttentionImpl, train_attention_scale: bool = True):
    preds = _predict(graphdef, params, batch, ids, orient, attention, train_attention_scale)
    gts = [{k: v[k] for k in TARGET_KEYS} for v in batch]
    loss, details = multiview_loss(gts, preds, alpha=alpha, pose_weight=pose_weight)
    return loss, (details, preds)


def graphdef_for(cfg: Fast3RConfig, dtype) -> nnx.GraphDef:
    return nnx.split(nnx.eval_shape(lambda: Fast3R(cfg, dtype=dtype, rngs=nnx.Rngs(0))))[0]


def make_train_step(cfg: Fast3RConfig, tx: optax.GradientTransformation, mesh: Mesh, layout: str, *,
                    dtype=jnp.bfloat16, alpha: float = 0.2, pose_weight: float = 0.0,
                    schedule: Callable | None = None):
    """Returns step(state, batch, orientations) -> (state, metrics), jitted for the mesh/layout.

    alpha and pose_weight: the loss's (train.losses.multiview_loss).

    batch: list of V dicts of global arrays (batch axis first). A step whose loss or gradient is not finite leaves
    the state unchanged and reports metrics['finite'] = 0 (the caller stops with an error).
    """
    graphdef = graphdef_for(cfg, dtype)
    attention = sharding_lib.resolve_attention(cfg.attention, dtype, mesh)
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
            graphdef, state.params, batch, ids, orient, alpha, pose_weight, attention)
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
    return jitted, shardings


def precompile(step_fn, state: TrainState, shapes: Sequence[tuple[Any, tuple[str, ...]]], threads: int) -> float:
    """Compiles `step_fn` (from `make_train_step`) for every (batch, orientations) in `shapes` (arrays or
    jax.ShapeDtypeStruct with their shardings) at once: traced here, compiled on up to `threads` threads (XLA
    compiles outside the GIL), so a run that meets several step shapes waits for the slowest compilation rather
    than their sum. Later calls with batches of these shapes reuse the executables. Returns the wall seconds."""
    start = time.perf_counter()
    lowered = [step_fn.lower(state, batch, orient) for batch, orient in shapes]
    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(lowered)))) as pool:
        list(pool.map(lambda low: low.compile(), lowered))  # waits for all; the first failure is raised
    return time.perf_counter() - start


def make_eval_step(cfg: Fast3RConfig, mesh: Mesh, *, dtype=jnp.bfloat16, alpha: float = 0.2,
                   pose_weight: float = 0.0):
    """Returns eval(params, batch, orientations, key) -> (metrics, predictions) with upstream's inference scale."""
    graphdef = graphdef_for(cfg, dtype)
    attention = sharding_lib.resolve_attention(cfg.attention, dtype, mesh)
    data = sharding_lib.batch_sharding(mesh)

    def evaluate(params, batch, orient, key):
        ids = sample_image_ids(key, batch[0]["img"].shape[0], len(batch), cfg.fusion.num_image_ids)
        loss, (details, preds) = _loss(graphdef, params, batch, ids, orient, alpha, pose_weight, attention,
                                       train_attention_scale=False)
        return dict(loss=loss, **details), preds

    return jax.jit(evaluate, in_shardings=(None, data, None), static_argnums=2)


def device_batch(batch: Sequence[Mapping[str, np.ndarray]], mesh: Mesh) -> list[dict[str, jax.Array]]:
    """This process's part of a batch -> global arrays split over the data axis (with one process the local
    part is the whole batch)."""
    data = sharding_lib.batch_sharding(mesh)
    return [{k: jax.make_array_from_process_local_data(data, np.asarray(v[k])) for k in MODEL_KEYS + TARGET_KEYS}
            for v in batch]
