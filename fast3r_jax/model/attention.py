"""Scaled dot-product attention, its kernel chosen once by the caller and passed in as an `AttentionImpl`.

Kernels: `xla` is the portable path (CPU, TPU, GPU): explicit logits, softmax in float32, weighted sum; where the
logits would pass `max_logits` floats (many views on one device, or float32 on a GPU) it runs blockwise instead,
flash attention in XLA (`attend`: blocks of queries x keys merged by an online softmax, memory B * H * XLA_CHUNK^2).
`cudnn` is the fused flash-attention kernel of `jax.nn.dot_product_attention` on NVIDIA GPUs (16-bit inputs only); it
is asked for by name, since `implementation=None` may silently fall back to XLA and materialise the full logits.
`splash` is the Pallas splash-attention kernel (flash attention for TPU, float32 or bfloat16); `interpret=True` runs
the same kernel in Pallas interpret mode off TPU (slow: for tests and debugging).

Which kernel a computation uses is decided when its step or engine is built (`fast3r_jax.sharding.resolve_attention`,
from the config, the backend and the mesh); the layers only call the value they are given. Any callable of the same
signature (`AttentionFn`) serves instead, e.g. sequence-parallel attention over a mesh (fast3r_jax.inference.sharded).

Mosaic (TPU Pallas) kernels cannot be partitioned by XLA: under a jit over several devices the splash call must sit
in a shard_map. A splash `AttentionImpl` therefore carries the mesh the computation spans and shard_maps over it,
batch over `batch_axes` and heads over `heads_axis`, each only where it divides; without a mesh it is a plain call,
which is right on one device and inside a caller's shard_map (that shard_map needs check_vma=False: splash's
pallas_call declares no varying axes).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Protocol

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

if TYPE_CHECKING:
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel

KERNELS = ("xla", "cudnn", "splash")
MAX_LOGITS = 1 << 28  # logits (B * H * N_q * N_k floats, 1 GiB in float32) above which `xla` runs blockwise
XLA_CHUNK = 1024  # queries and keys per block of the blockwise `xla` kernel
MASK = -1e30  # finite "-inf": a fully masked chunk gets weights exp(0) that the first valid chunk's max zeroes
Stats = tuple[jax.Array, jax.Array, jax.Array]  # unnormalised out (B, Q, H, D), row max, row sum (B, H, Q); f32
_SPLASH_BLOCKS = (512, 256, 128)  # splash tiles, largest first; sequences are padded to a multiple of the last


class AttentionFn(Protocol):
    """softmax(q k^T * scale) v over the key axis: q, k, v (B, N, H, D) -> (B, N, H, D) in q's dtype."""

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class AttentionImpl:
    """A resolved attention kernel (hashable: a static argument of jit), called as an `AttentionFn`.

    kernel: one of KERNELS. mesh, batch_axes, heads_axis and interpret concern splash only (module docstring):
    the mesh to shard_map the kernel over (None: a plain call), the mesh axes of the batch and head dimensions,
    Pallas interpret mode (off TPU). max_logits: above this many logits `xla` runs blockwise (`attend`).
    """

    kernel: str = "xla"
    mesh: Mesh | None = None
    batch_axes: tuple[str, ...] = ()
    heads_axis: str | None = None
    interpret: bool = False
    max_logits: int = MAX_LOGITS

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown attention kernel {self.kernel!r}, expected one of {KERNELS}")

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
        if self.kernel == "cudnn":
            return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
        if self.kernel == "splash":
            return self._splash(q, k, v, scale)
        (batch, num_q, heads, _), num_k = q.shape, k.shape[1]
        if batch * heads * num_q * num_k > self.max_logits:
            valid = jnp.ones((num_k,), bool)
            return finish_stats(attend(q, k, v, valid, scale=scale, chunk=XLA_CHUNK), q.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale  # (B, H, N, N)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(q.dtype)

    def _splash(self, q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
        """`_splash_local`, under a shard_map over `mesh` when there is one: batch over `batch_axes`, heads over
        `heads_axis`, each only where it divides."""
        local = functools.partial(_splash_local, scale=scale, interpret=self.interpret)
        if self.mesh is None:
            return local(q, k, v)
        mesh, heads_axis, batch_axes = self.mesh, self.heads_axis, self.batch_axes
        split_batch = batch_axes and q.shape[0] % math.prod(mesh.shape[a] for a in batch_axes) == 0
        split_heads = heads_axis is not None and q.shape[2] % mesh.shape[heads_axis] == 0
        spec = P(batch_axes if split_batch else None, None, heads_axis if split_heads else None, None)  # (B, N, H, D)
        return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


XLA = AttentionImpl("xla")  # the portable default


# ----------------------------------------------------------------------------
# Flash attention in XLA: key blocks merged by their softmax statistics.
# ----------------------------------------------------------------------------


def _rows(x: jax.Array) -> jax.Array:
    """(B, H, Q) row statistic -> (B, Q, H, 1), to scale outputs."""
    return jnp.swapaxes(x, 1, 2)[..., None]


def _chunk_stats(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, scale: float) -> Stats:
    """Statistics of queries q (B, Q, H, D) over keys k, v (B, K, H, D) of which `valid` (K,) count."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale  # (B, H, Q, K)
    s = jnp.where(valid, s, MASK)
    m = s.max(axis=-1)  # (B, H, Q)
    p = jnp.exp(s - m[..., None])
    out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out, m, p.sum(axis=-1)


def merge_stats(a: Stats, b: Stats) -> Stats:
    """Statistics over the union of two key sets."""
    (out_a, m_a, l_a), (out_b, m_b, l_b) = a, b
    m = jnp.maximum(m_a, m_b)
    c_a, c_b = jnp.exp(m_a - m), jnp.exp(m_b - m)  # (B, H, Q)
    return out_a * _rows(c_a) + out_b * _rows(c_b), m, l_a * c_a + l_b * c_b


def finish_stats(stats: Stats, dtype) -> jax.Array:
    """Normalised attention output (B, Q, H, D) in `dtype` from its statistics."""
    out, _, total = stats
    return (out / _rows(total)).astype(dtype)  # (B, Q, H, D)


def _pad_tokens(x: jax.Array, multiple: int, value=0) -> jax.Array:
    """Pads axis 1 to a multiple of `multiple`."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, -x.shape[1] % multiple)
    return jnp.pad(x, pad, constant_values=value)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, scale: float, chunk: int) -> Stats:
    """Online-softmax statistics of q (B, Q, H, D) over the `valid` (K,) keys of k, v (B, K, H, D), computed in
    chunks of at most `chunk` queries x keys, so that memory stays B * H * chunk^2."""
    batch, num_q, heads, _ = q.shape
    q_chunk, k_chunk = min(chunk, num_q), min(chunk, k.shape[1])
    q = _pad_tokens(q, q_chunk)
    k, v, valid = _pad_tokens(k, k_chunk), _pad_tokens(v, k_chunk), _pad_tokens(valid[None], k_chunk, False)[0]

    def chunks(x: jax.Array, size: int) -> jax.Array:  # (B, n, ...) -> (n / size, B, size, ...)
        return jnp.moveaxis(x.reshape(x.shape[0], -1, size, *x.shape[2:]), 1, 0)

    keys = (chunks(k, k_chunk), chunks(v, k_chunk), valid.reshape(-1, k_chunk))

    def query_chunk(qc: jax.Array) -> Stats:  # (B, q_chunk, H, D)
        init = (jnp.zeros(qc.shape, jnp.float32), jnp.full((batch, heads, q_chunk), MASK, jnp.float32),
                jnp.zeros((batch, heads, q_chunk), jnp.float32))
        return jax.lax.scan(lambda st, kv: (merge_stats(st, _chunk_stats(qc, *kv, scale)), None), init, keys)[0]

    out, m, total = jax.lax.map(query_chunk, chunks(q, q_chunk))  # (n, B, q_chunk, H, D), 2 x (n, B, H, q_chunk)
    stat = lambda x: jnp.moveaxis(x, 0, 2).reshape(batch, heads, -1)[..., :num_q]  # noqa: E731
    return jnp.moveaxis(out, 0, 1).reshape(batch, -1, *out.shape[3:])[:, :num_q], stat(m), stat(total)


@functools.lru_cache(maxsize=None)
def _splash_kernel(heads: int, length: int, interpret: bool) -> splash_attention_kernel.SplashAttentionKernel:
    """Full (non-causal) multi-head splash kernel for `length` tokens (a multiple of 128), forward and backward
    tiles the largest of _SPLASH_BLOCKS that divides it. Pallas is imported here, on first use: importing it costs
    every process about 0.2 s of start-up."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

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
        from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

        segments = SegmentIds(q=ids, kv=ids)
    kernel = _splash_kernel(heads, padded, interpret)
    out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segments))(q, k, v)  # (B, H, Np, D)
    return out[:, :, :length].transpose(0, 2, 1, 3)  # (B, N, H, D)
