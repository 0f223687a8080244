"""Parallelism declared once: logical axes for every parameter, one rule table mapping logical axes to mesh axes
(parameters, optimizer state and activations, `RULES`) applied by one function (`logical_spec`), and the attention
kernel each computation runs, resolved once for its mesh (`resolve_attention`).

Mesh axes: `data` (batch; also partitions optimizer state / parameters) and `tensor` (Megatron-style: attention
heads and MLP hidden units). Layouts:
    replicated  parameters and optimizer state on every device (plain data parallelism)
    zero2       parameters replicated, optimizer state partitioned over `data`; gradients are reduced straight
                into that layout (reduce-scatter), the ZeRO-2 analogue
    fsdp        parameters and optimizer state partitioned over `data` (ZeRO-3)
Each layout combines with tensor parallelism when the mesh's `tensor` axis is larger than 1.

Sharded inference (fast3r_jax.inference.sharded) uses a ('data', 'seq', 'tensor') mesh and the same rules: per-view
work (encoder, DPT heads) splits the views over every device; the fusion transformer splits its tokens over
'data' x 'seq' and its attention heads and MLP units over 'tensor'.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fast3r_jax.config import ATTENTION_IMPLEMENTATIONS
from fast3r_jax.model.attention import AttentionImpl

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

# Logical axis -> mesh axes, ONE table for parameters, optimizer state and activations. Mesh axes absent from a
# mesh are skipped (the training mesh has no 'seq'), and a dimension the axes do not divide stays whole. Tensor
# parallelism is always on (a 'tensor' axis of size 1 is a no-op).
RULES: dict[str, tuple[str, ...]] = {
    "layers": (),  # stacked transformer blocks
    "embed": (),  # model width
    "heads": ("tensor",),  # attention heads: weights (Megatron) and activations
    "mlp": ("tensor",),  # MLP hidden units
    "batch": ("data",),  # training samples
    "views": ("data", "seq", "tensor"),  # sharded inference, encoder and DPT heads: every device takes a share
    "tokens": ("data", "seq"),  # sharded inference: the fusion transformer's sequence
}

# Sharded inference: its mesh axes, and the parameters tensor-parallel there: the fusion transformer's, which run
# on the tokens of all views. The encoder and heads work per view; their weights are replicated so that they run
# without communication.
INFERENCE_AXES = ("data", "seq", "tensor")
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


def logical_spec(mesh: Mesh, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> P:
    """PartitionSpec of an array from the logical axis of each dimension (RULES; None: not partitioned). With
    `shape`, a dimension that its mesh axes do not divide stays whole."""
    spec = []
    for i, name in enumerate(logical):
        axes = tuple(a for a in RULES[name] if a in mesh.shape) if name else ()
        fits = axes and (shape is None or shape[i] % int(np.prod([mesh.shape[a] for a in axes])) == 0)
        spec.append((axes[0] if len(axes) == 1 else axes) if fits else None)
    return P(*spec)


def resolve_attention(implementation: str, dtype, mesh: Mesh | None = None) -> AttentionImpl:
    """The attention kernel for a config's `attention` name, decided once when a step or engine is built.

    'auto' is cudnn on GPU with 16-bit inputs, splash on TPU where the kernel can be placed (one device, or a
    `mesh` to shard_map it over), else xla; explicit names are checked. mesh: the mesh a jitted computation spans
    (None: one device, or a caller's shard_map); splash shard_maps over it, heads over RULES['heads'] and batch
    over the other axes. Off TPU splash runs in Pallas interpret mode (tests and debugging).
    """
    backend = jax.default_backend()
    sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    kernel = implementation
    if implementation == "auto":
        kernel = "xla"
        if backend == "gpu" and sixteen_bit:
            kernel = "cudnn"
        elif backend == "tpu" and (jax.device_count() == 1 or mesh is not None):
            kernel = "splash"
    elif implementation == "cudnn":
        if backend != "gpu":
            raise ValueError(f"attention='cudnn' needs an NVIDIA GPU backend, got {backend!r}")
        if not sixteen_bit:
            raise ValueError(f"attention='cudnn' needs bfloat16 or float16 inputs, got {jnp.dtype(dtype)}")
    elif implementation not in ("xla", "splash"):
        raise ValueError(f"unknown attention implementation {implementation!r}, expected one of "
                         f"{ATTENTION_IMPLEMENTATIONS}")
    if kernel != "splash":
        return AttentionImpl(kernel)
    if mesh is None:
        return AttentionImpl(kernel, interpret=backend != "tpu")
    heads = next((a for a in RULES["heads"] if a in mesh.shape), None)
    return AttentionImpl(kernel, mesh, tuple(a for a in mesh.axis_names if a != heads), heads, backend != "tpu")


def inference_param_specs(params: Mapping, mesh: Mesh) -> dict:
    """PartitionSpec per parameter for sharded inference: the rules for INFERENCE_TENSOR_PARALLEL, the rest
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
        mesh_axes = list(logical_spec(mesh, logical_axes(_path(key_path), len(leaf.shape)), leaf.shape))
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
    return NamedSharding(mesh, logical_spec(mesh, ("batch",)))

