"""Scaled dot-product attention with a selectable implementation.

`xla` is the portable path (CPU, TPU, GPU): explicit logits, softmax in float32, weighted sum. `cudnn` is the
fused flash-attention kernel of `jax.nn.dot_product_attention` on NVIDIA GPUs (16-bit inputs only). It must be asked
for by name: `implementation=None` may silently fall back to XLA and materialise the full logits. A callable
`implementation(q, k, v, scale=...)` replaces both (sequence-parallel attention over a device mesh, see
fast3r_jax.sequence_parallel).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def resolve_implementation(implementation: str, dtype) -> str:
    """Maps 'auto' to 'cudnn' on GPU with 16-bit inputs, else 'xla'; checks explicit choices."""
    on_gpu = jax.default_backend() == "gpu"
    sixteen_bit = jnp.dtype(dtype) in [jnp.dtype(d) for d in _CUDNN_DTYPES]
    if implementation == "auto":
        return "cudnn" if on_gpu and sixteen_bit else "xla"
    if implementation == "cudnn":
        if not on_gpu:
            raise ValueError(f"attention='cudnn' needs an NVIDIA GPU backend, got {jax.default_backend()!r}")
        if not sixteen_bit:
            raise ValueError(f"attention='cudnn' needs bfloat16 or float16 inputs, got {jnp.dtype(dtype)}")
        return "cudnn"
    if implementation == "xla":
        return "xla"
    raise ValueError(f"unknown attention implementation {implementation!r} (expected 'auto', 'xla' or 'cudnn')")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                          implementation: str | Callable[..., jax.Array] = "auto") -> jax.Array:
    """softmax(q k^T * scale) v over the key axis.

    q, k, v: (B, N, H, D). Returns (B, N, H, D) in q's dtype.
    """
    if callable(implementation):
        return implementation(q, k, v, scale=scale)
    impl = resolve_implementation(implementation, q.dtype)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale  # (B, H, N, N)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(q.dtype)
