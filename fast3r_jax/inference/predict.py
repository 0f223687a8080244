"""`predict`: the model on inputs and outputs in upstream's layout, for parity with the PyTorch reference."""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fast3r_jax.config import Fast3RConfig
from fast3r_jax.model.attention import AttentionImpl
from fast3r_jax.model.fast3r import DTYPES, OUTPUT_KEYS, View, orientation_of
from fast3r_jax.model.image_index_embedding import check_image_ids
from fast3r_jax.model.params import build_model
from fast3r_jax.sharding import resolve_attention


@functools.partial(jax.jit, static_argnames=("graphdef", "attention", "train_attention_scale"))
def _forward(graphdef: nnx.GraphDef, state: nnx.State, views: list[View], image_ids: jax.Array,
             attention: AttentionImpl, train_attention_scale: bool) -> list[dict[str, jax.Array]]:
    return nnx.merge(graphdef, state)(views, image_ids, attention=attention,
                                      train_attention_scale=train_attention_scale)


def predict(config: Fast3RConfig, params: Mapping, views: Sequence[Mapping], image_ids=None,
            train_attention_scale: bool = False, dtype: str = "float32") -> list[dict[str, np.ndarray]]:
    """Runs the model on views in upstream's input format and returns upstream's outputs as numpy arrays.

    views: dicts with `img` (B, 3, h, w) in [-1, 1] (a portrait view stored transposed to landscape) and
    `true_shape` (B, 2) (height, width). image_ids: one id per view (default 0..N-1). train_attention_scale: use
    the training-time attention scale in the fusion transformer instead of upstream's inference scale.
    Returns per view pts3d_in_other_view (B, h, w, 3), conf (B, h, w), pts3d_local, conf_local, in the same
    layout as the input image (portrait views transposed, as upstream returns them).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    batch_views = []
    for i, view in enumerate(views):
        missing = {"img", "true_shape"} - set(view)
        if missing:
            raise ValueError(f"view {i} is missing {sorted(missing)}")
        img = np.asarray(view["img"], np.float32)
        true_shape = np.asarray(view["true_shape"]).astype(np.int32)
        if img.ndim != 4 or true_shape.shape != (img.shape[0], 2):
            raise ValueError(f"view {i}: expected img (B, 3, h, w) and true_shape (B, 2), got {img.shape} and "
                             f"{true_shape.shape}")
        expected = np.where((true_shape[:, 1] < true_shape[:, 0])[:, None], true_shape[:, ::-1], true_shape)
        if not (expected == np.array(img.shape[2:])).all():
            raise ValueError(f"view {i}: image tensor {img.shape[2:]} does not match true_shape {true_shape.tolist()} "
                             "(portrait views must be stored transposed to landscape)")
        batch_views.append(View(jnp.asarray(img), jnp.asarray(true_shape), orientation_of(true_shape)))
    if not batch_views:
        raise ValueError("at least one view is required")
    batch = batch_views[0].img.shape[0]
    ids = np.arange(len(views)) if image_ids is None else image_ids
    ids = check_image_ids(ids, len(views), config.fusion.num_image_ids)
    ids = jnp.asarray(np.broadcast_to(ids, (batch, len(views))))

    graphdef, state = nnx.split(build_model(config, params, DTYPES[dtype]))
    attention = resolve_attention(config.attention, DTYPES[dtype])
    precision = "highest" if dtype == "float32" else "default"
    with jax.default_matmul_precision(precision):
        outputs = _forward(graphdef, state, batch_views, ids, attention, train_attention_scale)
    return [{k: np.asarray(out[k], np.float32) for k in OUTPUT_KEYS} for out in outputs]
