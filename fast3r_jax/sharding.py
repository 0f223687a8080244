"""Parallelism declared once: logical axes for every parameter, and per-layout rules mapping them to mesh axes.

Mesh axes: `data` (batch; also partitions optimizer state / parameters) and `tensor` (Megatron-style: attention
heads and MLP hidden units). Layouts:
    replicated  parameters and optimizer state on every device (plain data parallelism)
    zero2       parameters replicated, optimizer state partitioned over `data`; gradients are reduced straight
                into that layout (reduce-scatter), the ZeRO-2 analogue
    fsdp        parameters and optimizer state partitioned over `data` (ZeRO-3)
Each layout combines with tensor parallelism when the mesh's `tensor` axis is larger than 1.

Sharded inference (fast3r_jax.inference.sharded) uses a ('data', 'seq', 'tensor') mesh and the activation rules
below: per-view work (encoder, DPT heads) splits the views over every device; the fusion transformer splits its
tokens over 'data' x 'seq' and its attention heads and MLP units over 'tensor'.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

LAYOUTS = ("replicated", "zero2", "fsdp")

# Parameter path (dotted, as in the pure-dict tree) -> logical axis per dimension. First match wins.
# Stacked transformer blocks carry a leading 'layers' axis.
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"blocks\.layers\.attn\.qkv\.kernel$", ("layers", "embed", None, "heads", None)),
    (r"blocks\.layers\.attn\.qkv\.bias$", ("layers", None, "heads", None)),
    (r"blocks\.layers\.attn\.proj\.kernel$", ("layers", "heads", None, "embed")),
    (r"blocks\.layers\.mlp\.fc1\.kernel$", ("layers", "embed", "mlp")),
    (r"blocks\.layers\.mlp\.fc1\.bias$", ("layers", "mlp")),
    (r"blocks\.layers\.mlp\.fc2\.kernel$", ("layers", "mlp", "embed")),
)

# Logical axis -> mesh axis, by concern. Tensor parallelism is always on (a tensor axis of size 1 is a no-op).
TENSOR_RULES: dict[str, str] = {"heads": "tensor", "mlp": "tensor"}

# Sharded inference: logical activation axis -> mesh axes (a dimension they do not divide stays whole).
INFERENCE_AXES = ("data", "seq", "tensor")
ACTIVATION_RULES: dict[str, tuple[str, ...]] = {
    "views": ("data", "seq", "tensor"),  # encoder and DPT heads: per-view work, every device takes a share
    "tokens": ("data", "seq"),  # fusion transformer sequence
    "heads": (TENSOR_RULES["heads"],),  # fusion attention heads, split as their weights
}
# Parameters tensor-parallel at inference: the fusion transformer's, which run on the tokens of all views. The
# encoder and heads work per view; their weights are replicated so that they run without communication.
INFERENCE_TENSOR_PARALLEL = r"^fusion\."


def make_mesh(data: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'tensor') mesh over `devices` (default: the first data*tensor devices, or all of them when
    data=-1, which takes every device not used by the tensor axis)."""
    if devices is None:
        devices = jax.devices() if data == -1 else jax.devices()[:data * tensor]
    devices = list(devices)
    if data == -1:
        if len(devices) % tensor:
            raise ValueError(f"{len(devices)} devices cannot be split into tensor groups of {tensor}")
        data = len(devices) // tensor
    if data * tensor != len(devices):
        raise ValueError(f"mesh data={data} x tensor={tensor} needs {data * tensor} devices, have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(data, tensor), ("data", "tensor"))


def make_inference_mesh(data: int = 1, seq: int = -1, tensor: int = 1,
                        devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'seq', 'tensor') mesh for sharded inference over `devices` (default: the first data*seq*tensor
    devices, or all of them when seq=-1, which takes every device not used by the other two axes)."""
    if devices is None:
        devices = jax.devices() if seq == -1 else jax.devices()[:data * seq * tensor]
    devices = list(devices)
    if seq == -1:
        if len(devices) % (data * tensor):
            raise ValueError(f"{len(devices)} devices cannot be split into data={data} x tensor={tensor} groups")
        seq = len(devices) // (data * tensor)
    if data * seq * tensor != len(devices):
        raise ValueError(f"mesh data={data} x seq={seq} x tensor={tensor} needs {data * seq * tensor} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(data, seq, tensor), INFERENCE_AXES)


def activation_spec(mesh: Mesh, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> P:
    """PartitionSpec of an activation from its logical axes (ACTIVATION_RULES); with `shape`, a dimension that
    the mesh axes do not divide stays whole (as parameters under param_specs)."""
    spec = []
    for i, name in enumerate(logical):
        axes = ACTIVATION_RULES[name] if name else ()
        size = int(np.prod([mesh.shape[a] for a in axes]))
        fits = axes and (shape is None or shape[i] % size == 0)
        spec.append((axes[0] if len(axes) == 1 else axes) if fits else None)
    return P(*spec)


def inference_param_specs(params: Mapping, mesh: Mesh) -> dict:
    """PartitionSpec per parameter for sharded inference: TENSOR_RULES for INFERENCE_TENSOR_PARALLEL, the rest
    replicated."""
    specs = param_specs(params, mesh, "replicated")
    return jax.tree_util.tree_map_with_path(
        lambda key_path, spec: spec if re.search(INFERENCE_TENSOR_PARALLEL, _path(key_path)) else P(), specs,
        is_leaf=lambda x: isinstance(x, P))


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, path):
            if len(axes) != ndim:
                raise ValueError(f"logical axes {axes} do not fit parameter {path} of rank {ndim}")
            return axes
    return (None,) * ndim


def _add_data_axis(spec: list, shape: tuple[int, ...], data_size: int) -> list:
    """Partitions the largest dimension not yet sharded and divisible by the data axis over 'data'."""
    free = [i for i, axis in enumerate(spec) if axis is None and shape[i] % data_size == 0 and shape[i] > 1]
    if data_size > 1 and free:
        best = max(free, key=lambda i: shape[i])
        spec = list(spec)
        spec[best] = "data"
    return spec


def _path(key_path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in key_path)


def param_specs(params: Mapping, mesh: Mesh, layout: str) -> dict:
    """PartitionSpec per parameter for a layout (parameters, not optimizer state)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    data_size = mesh.shape["data"]

    def spec(key_path, leaf):
        axes = logical_axes(_path(key_path), len(leaf.shape))
        mesh_axes = [TENSOR_RULES.get(a) if a else None for a in axes]
        mesh_axes = [a if a is None or leaf.shape[i] % mesh.shape[a] == 0 else None for i, a in enumerate(mesh_axes)]
        if layout == "fsdp":
            mesh_axes = _add_data_axis(mesh_axes, leaf.shape, data_size)
        return P(*mesh_axes)

    return jax.tree_util.tree_map_with_path(spec, params)


def update_specs(params: Mapping, mesh: Mesh, layout: str) -> dict:
    """PartitionSpec per parameter for gradients and optimizer moments: the parameter's spec, plus the 'data'
    axis under zero2 (fsdp has it already), so the update runs partitioned."""
    pspecs = param_specs(params, mesh, layout)
    if layout != "zero2":
        return pspecs
    return jax.tree.map(lambda leaf, spec: P(*_add_data_axis(list(spec), leaf.shape, mesh.shape["data"])),
                        params, pspecs)


def optimizer_state_specs(tx: optax.GradientTransformation, opt_state, params: Mapping, mesh: Mesh,
                          layout: str):
    """PartitionSpec per optimizer-state leaf: parameter-shaped leaves (moments) follow `update_specs`; the rest
    (step counts) are replicated."""
    return optax.tree_utils.tree_map_params(tx, lambda leaf, spec: spec, opt_state,
                                            update_specs(params, mesh, layout),
                                            transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))


def named(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays with a leading batch axis: split over 'data', replicated over 'tensor'."""
    return NamedSharding(mesh, P("data"))


def bytes_per_device(tree) -> dict[str, int]:
    """Bytes each device holds for a tree of sharded arrays (to show that partitioning is real)."""
    out: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            out[key] = out.get(key, 0) + shard.data.size * shard.data.dtype.itemsize
    return out
