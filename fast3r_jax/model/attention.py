"""Scaled dot-product attention with a selectable implementation.

`xla` is the portable path (CPU, TPU, GPU): explicit logits, softmax in float32, weighted sum. `cudnn` is the
fused flash-attention kernel of `jax.nn.dot_product_attention` on NVIDIA GPUs (16-bit inputs only). It must be asked
for by name: `implementation=None` may silently fall back to XLA and materialise the full logits. `splash` is the
Pallas splash-attention kernel (flash attention for TPU, float32 or bfloat16); off TPU it runs the same kernel in
Pallas interpret mode (slow: for tests and debugging). A callable `implementation(q, k, v, scale=...)` replaces them
all (sequence-parallel attention over a device mesh, see fast3r_jax.inference.sharded).

Mosaic (TPU Pallas) kernels cannot be partitioned by XLA: under a jit over several devices the splash call must sit
in a shard_map. `splash` therefore shard_maps over the ambient mesh (`jax.set_mesh`), batch over its axes other
than 'tensor' and heads over 'tensor' (where they divide); without one it is a plain call, which is right on one
device and an error from JAX ("wrap the call in a shard_map") under a multi-device jit. Inside a caller's
shard_map over every axis it is a plain call; that shard_map needs check_vma=False (splash's pallas_call declares
no varying axes). `auto` picks splash only where it can be placed: on TPU with one device or an ambient mesh.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from fast3r_jax.config import ATTENTION_IMPLEMENTATIONS
from fast3r_jax.sharding import TENSOR_RULES

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_SPLASH_BLOCKS = (512, 256, 128)  # splash tiles, largest first; sequences are padded to a multiple of the last


def resolve_implementation(implementation: str, dtype) -> str:
    """Maps 'auto' to 'cudnn' on GPU with 16-bit inputs, to 'splash' on TPU where the kernel can be placed (one
    device or an ambient mesh), else 'xla'; checks explicit choices."""
    backend = jax.default_backend()
    sixteen_bit = jnp.dtype(dtype) in [jnp.dtype(d) for d in _CUDNN_DTYPES]
    if implementation == "auto":
        if backend == "gpu" and sixteen_bit:
            return "cudnn"
        if backend == "tpu" and (jax.device_count() == 1 or not jax.sharding.get_abstract_mesh().empty):
            return "splash"
        return "xla"
    if implementation == "cudnn":
        if backend != "gpu":
            raise ValueError(f"attention='cudnn' needs an NVIDIA GPU backend, got {backend!r}")
        if not sixteen_bit:
            raise ValueError(f"attention='cudnn' needs bfloat16 or float16 inputs, got {jnp.dtype(dtype)}")
        return "cudnn"
    if implementation in ("xla", "splash"):
        return implementation
    raise ValueError(f"unknown attention implementation {implementation!r}, expected one of "
                     f"{ATTENTION_IMPLEMENTATIONS}")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                          implementation: str | Callable[..., jax.Array] = "auto") -> jax.Array:
    """softmax(q k^T * scale) v over the key axis.

    q, k, v: (B, N, H, D). Returns (B, N, H, D) in q's dtype. implementation: see the module docstring ('splash'
    off TPU runs in Pallas interpret mode: slow, for tests and debugging).
    """
    if callable(implementation):
        return implementation(q, k, v, scale=scale)
    impl = resolve_implementation(implementation, q.dtype)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    if impl == "splash":
        return _splash(q, k, v, scale)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale  # (B, H, N, N)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(q.dtype)


@functools.lru_cache(maxsize=None)
def _splash_kernel(heads: int, length: int, interpret: bool) -> splash_kernel.SplashAttentionKernel:
    """Full (non-causal) multi-head splash kernel for `length` tokens (a multiple of 128), forward and backward
    tiles the largest of _SPLASH_BLOCKS that divides it."""
    block = next(b for b in _SPLASH_BLOCKS if length % b == 0)
    sizes = splash_kernel.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                     block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                                     block_kv_dq=block)
    mask = splash_mask.MultiHeadMask([splash_mask.FullMask((length, length))] * heads)
    with jax.ensure_compile_time_eval():  # mask tables as constants, not tracers of the first trace that asks
        return splash_kernel.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                             interpret=interpret)


def _splash_local(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, interpret: bool) -> jax.Array:
    """Splash attention on one device's arrays, (B, N, H, D) -> (B, N, H, D).

    N is padded to a multiple of 128; padding tokens form segment 1, so no real query sees a padded key."""
    _, length, heads, _ = q.shape
    padded = -(-length // _SPLASH_BLOCKS[-1]) * _SPLASH_BLOCKS[-1]
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)  # splash has no scale argument
    pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, pad).transpose(0, 2, 1, 3) for x in (q, k, v))  # (B, H, Np, D)
    segments = None
    if padded != length:
        ids = (jnp.arange(padded) >= length).astype(jnp.int32)  # (Np,) 0: real token, 1: padding
        segments = splash_kernel.SegmentIds(q=ids, kv=ids)
    kernel = _splash_kernel(heads, padded, interpret)
    out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segments))(q, k, v)  # (B, H, Np, D)
    return out[:, :, :length].transpose(0, 2, 1, 3)  # (B, N, H, D)


def _splash(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """`_splash_local` under a shard_map over the ambient mesh's free (non-manual) axes, if any (module
    docstring): batch over the axes other than 'tensor', heads over 'tensor', each only where it divides."""
    local = functools.partial(_splash_local, scale=scale, interpret=jax.default_backend() != "tpu")
    mesh = jax.sharding.get_abstract_mesh()
    free = tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
    if not free:
        return local(q, k, v)
    heads_axis = TENSOR_RULES["heads"]
    batch_axes = tuple(a for a in free if a != heads_axis)
    split_batch = batch_axes and q.shape[0] % math.prod(mesh.shape[a] for a in batch_axes) == 0
    split_heads = heads_axis in free and q.shape[2] % mesh.shape[heads_axis] == 0
    spec = P(batch_axes if split_batch else None, None, heads_axis if split_heads else None, None)  # (B, N, H, D)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, axis_names=set(free),
                         check_vma=False)(q, k, v)
