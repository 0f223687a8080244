"""Pre-norm ViT blocks and a layer stack scanned over stacked parameters.

The encoder and the fusion transformer share the block; they differ in RoPE (encoder only: it passes rotation tables
built once per forward, the fusion transformer None), LayerNorm epsilon and the attention temperature. Blocks are
stored stacked along a leading layer axis and run with `jax.lax.scan`, which keeps compile time flat in depth, or
unrolled (`scan=False`: each block on its slice of the stack); only the outputs the DPT heads read (the hooks) are
kept.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fast3r_jax.model import layers
from fast3r_jax.model.attention import AttentionFn
from fast3r_jax.model.rope2d import RopeTables, apply_rope


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    dim: int
    num_heads: int
    mlp_ratio: float
    norm_eps: float
    qkv_bias: bool = True


def layer_norm(dim: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with the two-pass variance (as PyTorch), statistics in float32."""
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention; q/k/v and the output projection keep an explicit heads axis for sharding."""

    def __init__(self, cfg: BlockConfig, *, dtype, rngs: nnx.Rngs):
        head_dim = cfg.dim // cfg.num_heads
        self.num_heads = cfg.num_heads
        init = nnx.initializers.xavier_uniform()
        self.qkv = layers.LinearGeneral(cfg.dim, (3, cfg.num_heads, head_dim), use_bias=cfg.qkv_bias,
                                     kernel_init=lambda k, s, d: init(k, (s[0], int(np.prod(s[1:]))), d).reshape(s),
                                     dtype=dtype, rngs=rngs)
        self.proj = layers.LinearGeneral((cfg.num_heads, head_dim), cfg.dim, axis=(-2, -1),
                                      kernel_init=lambda k, s, d: init(k, (int(np.prod(s[:-1])), s[-1]), d).reshape(s),
                                      dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rope: RopeTables | None, *, scale: float, attention: AttentionFn) -> jax.Array:
        qkv = self.qkv(x)  # (B, N, 3, H, Dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = attention(q, k, v, scale=scale)  # (B, N, H, Dh)
        return self.proj(out)


@jax.checkpoint
def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU as PyTorch computes it, x/2 (1 + erf(x/sqrt(2))), in float32 and rounded to x's dtype.

    jax.nn.gelu(approximate=False) goes through erfc, whose XLA expansion (exp plus two rational fits) makes the
    MLP's elementwise pass compute-bound on GPU: twice the time of this form, which runs at memory speed. Under
    jax.checkpoint the backward pass keeps only x and recomputes the float32 intermediates, three of x's size
    that it would otherwise keep per block.
    """
    xf = x.astype(jnp.float32)
    return (0.5 * xf * (1.0 + jax.lax.erf(xf * np.float32(1 / np.sqrt(2))))).astype(x.dtype)


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.xavier_uniform()
        self.fc1 = layers.Linear(dim, hidden, kernel_init=init, dtype=dtype, rngs=rngs)
        self.fc2 = layers.Linear(hidden, dim, kernel_init=init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


class Block(nnx.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: BlockConfig, *, dtype, rngs: nnx.Rngs):
        self.norm1 = layer_norm(cfg.dim, cfg.norm_eps, dtype, rngs)
        self.attn = SelfAttention(cfg, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(cfg.dim, cfg.norm_eps, dtype, rngs)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rope: RopeTables | None, *, scale: float, attention: AttentionFn) -> jax.Array:
        x = x + self.attn(self.norm1(x), rope, scale=scale, attention=attention)
        return x + self.mlp(self.norm2(x))


# config.REMAT_POLICIES -> what a rematerialised block saves for the backward pass.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class BlockStack(nnx.Module):
    """`depth` blocks with parameters stacked on a leading axis, applied with lax.scan (or unrolled).

    remat: None, or a REMAT_POLICIES name: each block is rematerialised in the backward pass, keeping what the
    policy saves. scan: False runs the blocks one after another in the traced program instead of as a loop (the
    same computation; XLA may schedule and fuse across blocks, at a compile time that grows with depth).
    """

    def __init__(self, cfg: BlockConfig, depth: int, *, dtype, remat: str | None, scan: bool = True,
                 rngs: nnx.Rngs):
        if remat is not None and remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be None or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
        self.depth = depth
        self.remat = remat
        self.scan = scan

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make(rngs: nnx.Rngs) -> Block:
            return Block(cfg, dtype=dtype, rngs=rngs)

        self.layers = make(rngs)

    def __call__(self, x: jax.Array, rope: RopeTables | None, *, scale: float, attention: AttentionFn,
                 keep: Sequence[int] = ()) -> tuple[jax.Array, list[jax.Array]]:
        """Runs all blocks. Returns the final output and the outputs after the blocks counted in `keep`.

        rope: RoPE cos/sin tables shared by every block (see rope2d.rope_tables), or None for no rotation.

        keep: 1-based block counts (e.g. (12, 18) keeps the outputs of the 12th and 18th blocks).
        """
        if any(not 1 <= n <= self.depth for n in keep):
            raise ValueError(f"keep={tuple(keep)} must lie in 1..{self.depth}")
        graphdef, state = nnx.split(self.layers)

        def apply(h, layer_state):
            return nnx.merge(graphdef, layer_state)(h, rope, scale=scale, attention=attention)

        if self.remat is not None:
            # inside a scan nothing can be merged across the loop; unrolled, XLA could fold the recomputation back
            # into the forward (common-subexpression elimination) and keep every activation after all
            apply = jax.checkpoint(apply, prevent_cse=not self.scan, policy=REMAT_POLICIES[self.remat])
        if not self.scan:
            outputs = []
            for i in range(self.depth):
                x = apply(x, jax.tree.map(lambda a, i=i: a[i], state))
                outputs.append(x)
            return x, [outputs[n - 1] for n in keep]
        if not keep:
            x, _ = jax.lax.scan(lambda h, layer_state: (apply(h, layer_state), None), x, state)
            return x, []

        # slot[i] = where the output of block i goes; the last slot collects blocks nobody reads.
        slot = np.full(self.depth, len(keep), np.int32)
        for j, n in enumerate(keep):
            slot[n - 1] = j

        def body(carry, layer):
            h, kept = carry
            layer_state, layer_slot = layer
            h = apply(h, layer_state)
            return (h, jax.lax.dynamic_update_index_in_dim(kept, h, layer_slot, axis=0)), None

        kept = jnp.zeros((len(keep) + 1,) + x.shape, x.dtype)  # (K+1, B, N, D)
        (x, kept), _ = jax.lax.scan(body, (x, kept), (state, jnp.asarray(slot)))
        return x, [kept[j] for j in range(len(keep))]
