"""Inference over several devices, for view counts one device cannot hold: `ShardedEngine`.

Layout (rules in fast3r_jax.sharding; mesh ('data', 'seq', 'tensor'), D devices, S = data * seq token shards,
T = tensor): the views of each shape group are dealt out over the D devices (view position p = slot * D + device;
the last slots are padding where D does not divide the count). The encoder and the DPT heads run on each
device's own views (weights replicated, no communication). The fusion transformer's tokens are split S ways, a
token shard holding the views of its T devices (gathered over 'tensor' once), so that its hooks go back to the
heads without moving; its attention heads and MLP units split over 'tensor' (Megatron weights; XLA partitions
the projections from the token and weight shardings). Only attention needs every token; it runs under shard_map
in one of two ways:

    allgather  each layer all-gathers K and V (2 * N * D_model per device) and attends with the local queries;
               on GPU in 16-bit the cuDNN kernel runs it on the real keys.
    ring       K/V blocks travel around the token shards (ppermute, sent before the block in hand is used so that
               the transfer overlaps compute); each device attends with its queries to the block it holds and an
               online softmax (running max and sum in float32) merges the blocks. K/V memory stays N / S.

Block kernels. The ring merge needs each block's log-sum-exp (LSE). On GPU in 16-bit, blocks run cuDNN through
`jax.nn.dot_product_attention(return_residual=True)`, which returns the LSE rounded to the input dtype: in bf16
that is up to 0.03 off at |lse| ~ 10 (block weights up to 3% off), so the block's q, k, v go in as float16, whose
LSE is 8x finer (q, k, v are assumed inside float16's range, +-65504). Measured on an H100 (8 blocks of 6144 keys,
16 heads): merged blocks in float16 are as close to float32 attention as one bf16 cuDNN call over all keys (max
rel. error 7.2e-3 both), bf16 blocks 9.7e-3.
Elsewhere (float32, CPU, TPU) blocks run the XLA kernel `attend` (fast3r_jax.model.attention): einsums over
query and key chunks with float32 statistics (flash attention in XLA; memory B * H * chunk^2 floats per step; 7x
slower than the cuDNN blocks on the H100), which also serves allgather off GPU; allgather on GPU runs cuDNN on the
gathered real keys and needs no LSE. Splash attention is not a kernel here (a model set to it runs `attend`; see
`ShardedEngine.layout`).

Padding views are masked as keys, so outputs are exact; their queries are computed and dropped. cuDNN masks
them through an extra head channel (q: 1, a padded key: _PAD_KEY, a real key: 0), which leaves real logits
untouched and pushes padded ones to about -1e3.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fast3r_jax import distributed
from fast3r_jax import sharding as sharding_lib
from fast3r_jax.config import Fast3RConfig
from fast3r_jax.inference.engine import Engine, chunk_views, encode_chunk, progress_bar
from fast3r_jax.model.attention import XLA_CHUNK, Stats, attend, finish_stats, merge_stats
from fast3r_jax.model.fast3r import OUTPUT_KEYS

METHODS = ("allgather", "ring")
KERNELS = ("cudnn", "xla")  # local attention kernels (module docstring); splash is not one (ShardedEngine.layout)
_PAD_KEY = -3e4  # mask channel of a padded key for cuDNN (float16-safe); its logit is _PAD_KEY * scale


def _shard_map(fn, mesh: Mesh, in_specs, out_specs):
    """`jax.shard_map` with replication checks off: the chunk loops start from constants that do not vary over the
    mesh."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


# ----------------------------------------------------------------------------
# Attention kernels: a block of keys and its softmax statistics.
# ----------------------------------------------------------------------------


def _cudnn_stats(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array | None, scale: float) -> Stats:
    """Statistics of q (B, Q, H, D) over the `valid` (K,) keys of k, v (B, K, H, D) (None: all) from cuDNN in
    float16, as (out, lse, 1): `merge_stats` then weighs blocks by exp(lse)."""
    dim = q.shape[-1]
    q, k, v = (x.astype(jnp.float16) for x in (q, k, v))
    if valid is not None:
        extra = -(dim + 1) % 8 + 1  # the mask channel, then zeros to a multiple of 8

        def widen(x: jax.Array, channel: jax.Array) -> jax.Array:  # (B, N, H, D) -> (B, N, H, D + extra)
            channel = jnp.broadcast_to(channel, x.shape[:-1] + (1,)).astype(x.dtype)
            return jnp.concatenate([x, channel, jnp.zeros(x.shape[:-1] + (extra - 1,), x.dtype)], axis=-1)

        q, k, v = widen(q, 1.0), widen(k, jnp.where(valid, 0.0, _PAD_KEY)[None, :, None, None]), widen(v, 0.0)
    out, lse = jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn",
                                            return_residual=True)  # (B, Q, H, D'), (B, Q, H)
    lse = jnp.swapaxes(lse, 1, 2).astype(jnp.float32)  # (B, H, Q)
    return out[..., :dim].astype(jnp.float32), lse, jnp.ones_like(lse)


# ----------------------------------------------------------------------------
# Layout of views and tokens over the mesh.
# ----------------------------------------------------------------------------


def _mesh_axes(logical: str) -> tuple[str, ...]:
    return sharding_lib.RULES[logical]


def _size(mesh: Mesh, axes: Sequence[str]) -> int:
    return int(np.prod([mesh.shape[a] for a in axes]))


def _tensor_axes() -> tuple[str, ...]:
    """Mesh axes that split views but not tokens: the devices of one token shard. Views must be split over the
    token axes first, so that device d of the views axis belongs to token shard d // T."""
    tokens, views = _mesh_axes("tokens"), _mesh_axes("views")
    rest = tuple(a for a in views if a not in tokens)
    if views != tokens + rest:
        raise ValueError(f"sharding.RULES: views {views} must start with the token axes {tokens}")
    return rest


def views_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays with a leading views axis, dealt out over every device."""
    return NamedSharding(mesh, sharding_lib.logical_spec(mesh, ("views",)))


@dataclasses.dataclass(frozen=True)
class Group:
    """One shape group over D devices: view position p = slot * D + device; positions >= count are padding.

    count: real views; tokens: per view; slots: views per device; enc_chunks / head_chunks: views per device of
    each encoder / head call (the last one padded to a power of two, as `chunk_views`).
    """

    count: int
    tokens: int
    slots: int
    enc_chunks: tuple[int, ...]
    head_chunks: tuple[int, ...]

    @classmethod
    def make(cls, count: int, tokens: int, devices: int, enc_chunk: int, head_chunk: int) -> Group:
        slots = -(-count // devices)
        sizes = lambda size: tuple(map(len, chunk_views(list(range(slots)), size)))  # noqa: E731
        return cls(count, tokens, slots, sizes(enc_chunk), sizes(head_chunk))

    def rows(self, chunks: tuple[int, ...], index: int, devices: int) -> list[int | None]:
        """Position of each row of chunk `index` (rows split over the devices in order); None for padding."""
        start, size = sum(chunks[:index]), chunks[index]
        out = []
        for device in range(devices):
            for slot in range(start, start + size):
                position = slot * devices + device
                out.append(position if slot < self.slots and position < self.count else None)
        return out


@dataclasses.dataclass(frozen=True)
class SequenceParallel:
    """The layout of one call (hashable: a static argument of jit) and the attention callable of its fusion
    transformer.

    method: 'allgather' or 'ring'; kernel: 'cudnn' or 'xla', the local attention (module docstring; anything
    else raises); chunk: the xla kernel's chunk; groups: the shape groups in token order.
    """

    mesh: Mesh
    method: str
    kernel: str
    chunk: int
    groups: tuple[Group, ...]

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")

    @property
    def devices(self) -> int:
        return _size(self.mesh, _mesh_axes("views"))

    @property
    def shards(self) -> int:
        return _size(self.mesh, _mesh_axes("tokens"))

    @property
    def per_shard(self) -> int:
        """Devices per token shard (T)."""
        return self.devices // self.shards

    @property
    def local(self) -> int:
        """Tokens per token shard."""
        return self.per_shard * sum(g.slots * g.tokens for g in self.groups)

    def views(self) -> list[tuple[int, int]]:
        """(group, position) of each view in token order: shard, group, device of the shard, slot."""
        return [(g, slot * self.devices + s * self.per_shard + t) for s in range(self.shards)
                for g, group in enumerate(self.groups) for t in range(self.per_shard) for slot in range(group.slots)]

    @property
    def unit(self) -> int:
        """Tokens per embedding unit: the gcd of the groups' tokens per view."""
        return math.gcd(*(g.tokens for g in self.groups))

    def view_lengths(self) -> tuple[int, ...]:
        """The fusion transformer's view lengths: every view cut into units of equal length (each unit takes its
        view's image id), so that the image embedding is one broadcast that XLA splits over the token shards."""
        return (self.unit,) * (self.shards * self.local // self.unit)

    def embedding_ids(self, view_ids: np.ndarray) -> np.ndarray:
        """(V,) ids in `views` order -> (1, units) ids matching `view_lengths`."""
        repeats = [self.groups[g].tokens // self.unit for g, _ in self.views()]
        return np.repeat(view_ids, repeats)[None]

    def valid(self) -> np.ndarray:
        """(S, local) bool: which tokens belong to real views."""
        flags = [np.full(self.groups[g].tokens, p < self.groups[g].count) for g, p in self.views()]
        return np.concatenate(flags).reshape(self.shards, self.local)

    # -- data movement between the views layout and the token layout (under shard_map: local, explicit) --

    def gather_tokens(self, enc_chunks: list[list[jax.Array]]) -> jax.Array:
        """Per group, encoder chunks (C, n, D_enc) split over the views axis -> tokens (1, S * local, D_enc) split
        over the token axes."""
        groups, tensor, per_shard = self.groups, _tensor_axes(), self.per_shard

        def local(enc_chunks):
            parts = []
            for group, chunks in zip(groups, enc_chunks):
                x = jnp.concatenate(chunks)[:group.slots]  # (slots, n, D_enc)
                if per_shard > 1:
                    x = jax.lax.all_gather(x, tensor, axis=0, tiled=True)  # (T * slots, n, D_enc)
                parts.append(x.reshape(-1, x.shape[-1]))
            return jnp.concatenate(parts)[None]  # (1, local, D_enc)

        views, tokens = self._spec("views"), sharding_lib.logical_spec(self.mesh, (None, "tokens", None))
        return _shard_map(local, self.mesh, (jax.tree.map(lambda _: views, enc_chunks),), tokens)(enc_chunks)

    def scatter_hooks(self, hooks: list[jax.Array]) -> list[list[list[jax.Array]]]:
        """Hooks (1, S * local, C_k) split over the token axes -> per group, per head chunk, the four hooks
        (C, n, C_k) split over the views axis (slots past a group's last are zeros)."""
        groups, tensor, per_shard = self.groups, _tensor_axes(), self.per_shard

        def own(h: jax.Array, start: int, group: Group, me) -> jax.Array:
            """This device's views of a group from its shard's hook (1, local, C_k), padded to the head chunks."""
            x = h[0, start:start + per_shard * group.slots * group.tokens]
            x = x.reshape(per_shard, group.slots, group.tokens, -1)  # (T, slots, n, C_k)
            x = jax.lax.dynamic_index_in_dim(x, me, keepdims=False)  # (slots, n, C_k)
            return jnp.pad(x, ((0, sum(group.head_chunks) - group.slots), (0, 0), (0, 0)))

        def local(hooks):
            me, out, start = jax.lax.axis_index(tensor) if per_shard > 1 else 0, [], 0
            for group in groups:
                mine = [own(h, start, group, me) for h in hooks]
                ends = np.cumsum(group.head_chunks)
                out.append([[h[end - c:end] for h in mine] for c, end in zip(group.head_chunks, ends)])
                start += per_shard * group.slots * group.tokens
            return out

        tokens = sharding_lib.logical_spec(self.mesh, (None, "tokens", None))
        out_specs = [[[self._spec("views")] * 4 for _ in g.head_chunks] for g in groups]
        return _shard_map(local, self.mesh, ([tokens] * len(hooks),), out_specs)(hooks)

    def _spec(self, logical: str) -> P:
        return sharding_lib.logical_spec(self.mesh, (logical,))

    # -- attention across token shards --

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
        """Exact softmax(q k^T * scale) v over the real tokens; q, k, v (B, S * local, H, D) split over the mesh."""
        spec = sharding_lib.logical_spec(self.mesh, (None, "tokens", "heads", None), q.shape)
        local = self._ring if self.method == "ring" else self._allgather
        return _shard_map(functools.partial(local, scale=scale), self.mesh, (spec, spec, spec), spec)(q, k, v)

    def _allgather(self, q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
        k, v = jax.lax.all_gather(jnp.stack([k, v]), _mesh_axes("tokens"), axis=2, tiled=True)  # (B, N, H_loc, D)
        valid = self.valid().reshape(-1)
        if self.kernel == "cudnn":
            real = np.flatnonzero(valid)
            return jax.nn.dot_product_attention(q, jnp.take(k, real, axis=1), jnp.take(v, real, axis=1),
                                                scale=scale, implementation="cudnn")
        return finish_stats(attend(q, k, v, jnp.asarray(valid), scale=scale, chunk=self.chunk), q.dtype)

    def _ring(self, q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
        axes, shards = _mesh_axes("tokens"), self.shards
        me = jax.lax.axis_index(axes)
        valid = jnp.asarray(self.valid())  # (S, local)
        send = [(i, (i + 1) % shards) for i in range(shards)]
        kv, stats = jnp.stack([k, v]), None  # (2, B, local, H_local, D)
        for step in range(shards):
            incoming = jax.lax.ppermute(kv, axes, send) if step < shards - 1 else None
            block = self._block(q, kv[0], kv[1], valid[(me - step) % shards], scale)
            stats = block if stats is None else merge_stats(stats, block)
            kv = incoming
        return finish_stats(stats, q.dtype)

    def _block(self, q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, scale: float) -> Stats:
        if self.kernel == "cudnn":  # the mask channel only where some view is padding
            return _cudnn_stats(q, k, v, None if self.valid().all() else valid, scale)
        return attend(q, k, v, valid, scale=scale, chunk=self.chunk)


# ----------------------------------------------------------------------------
# Jitted pieces and the engine.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef", "layout"))
def _fuse(graphdef, state, enc_chunks: list[list[jax.Array]], image_ids: jax.Array,
          layout: SequenceParallel) -> list[list[list[jax.Array]]]:
    """Fuses the tokens of all views over the mesh; per group, per head chunk, the four hooks (C, n, C_k).

    enc_chunks: per group, its encoder chunks (C, n, D_enc) split over the views axis; image_ids: (1, units)
    (`SequenceParallel.embedding_ids`).
    """
    model = nnx.merge(graphdef, state)
    hooks = model.fuse(layout.gather_tokens(enc_chunks), layout.view_lengths(), image_ids,
                       attention=layout)  # 4 x (1, S * local, C_k)
    return layout.scatter_hooks(hooks)


@functools.partial(jax.jit, static_argnames=("graphdef", "hw", "orientation", "mesh"))
def _decode(graphdef, state, hooks: list[jax.Array], true_shape: jax.Array, hw: tuple[int, int],
            orientation: str, mesh: Mesh) -> dict[str, jax.Array]:
    """Both heads on one chunk of views split over the mesh; maps (C, H, W[, 3]) in true orientation."""
    out = nnx.merge(graphdef, state).decode(hooks, hw, orientation, true_shape, landscape=False)  # (C, H, W[, 3])
    return {k: jax.lax.with_sharding_constraint(out[k], views_sharding(mesh)) for k in OUTPUT_KEYS}


@jax.jit
def _unstack(x: jax.Array) -> list[jax.Array]:
    return [x[i] for i in range(x.shape[0])]


def _per_row(out: dict[str, jax.Array]) -> dict[int, dict[str, jax.Array]]:
    """Chunk outputs split over devices -> per row, a dict of arrays left on the device that computed them; with
    several processes, host copies of every row in every process (a collective)."""
    if not all(array.is_fully_addressable for array in out.values()):
        host = distributed.host_copy(out)
        return {r: {k: v[r] for k, v in host.items()} for r in range(len(next(iter(host.values()))))}
    rows: dict[int, dict[str, jax.Array]] = {}
    for key, array in out.items():
        for shard in array.addressable_shards:
            start = shard.index[0].start or 0
            for j, row in enumerate(_unstack(shard.data)):
                rows.setdefault(start + j, {})[key] = row
    return rows


def _abstract(tree):
    """The jax.ShapeDtypeStruct of each array of a program's out_info, with its sharding and without its memory
    layout, as the arrays that the program returns are passed on."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=s.sharding), tree)


def place_state(state: nnx.State, mesh: Mesh) -> nnx.State:
    """Model state laid out for sharded inference (`sharding.inference_param_specs`). The values go through the host:
    every process holds the whole state, and a global array is assembled from host values, not device buffers."""
    pure = jax.device_get(nnx.to_pure_dict(state))
    specs = sharding_lib.inference_param_specs(pure, mesh)
    nnx.replace_by_pure_dict(state, jax.device_put(pure, sharding_lib.named(mesh, specs)))
    return state


class ShardedEngine(Engine):
    """`Engine` over the devices of a ('data', 'seq', 'tensor') mesh (`sharding.make_inference_mesh`); same inputs
    and outputs, each view's outputs left on the device that decoded it (with several processes, as numpy in every
    process: every process passes the same views and gets every output).

    encoder_chunk / head_chunk: views per device per encoder / head call. seq_attention: 'allgather' or 'ring'
    (module docstring). seq_chunk: the chunk of the XLA attention kernel (memory ~ heads * seq_chunk^2 floats).
    """

    def __init__(self, config: Fast3RConfig, params: Mapping, mesh: Mesh, dtype: str = "bfloat16",
                 encoder_chunk: int = 16, head_chunk: int = 8, *, seq_attention: str = "allgather",
                 seq_chunk: int = XLA_CHUNK):
        super().__init__(config, params, dtype, encoder_chunk, head_chunk)
        if seq_attention not in METHODS:
            raise ValueError(f"seq_attention must be one of {METHODS}, got {seq_attention!r}")
        if not isinstance(seq_chunk, int) or seq_chunk < 1:
            raise ValueError(f"seq_chunk must be a positive integer, got {seq_chunk!r}")
        if tuple(mesh.axis_names) != sharding_lib.INFERENCE_AXES:
            raise ValueError(f"mesh axes must be {sharding_lib.INFERENCE_AXES}, got {tuple(mesh.axis_names)}")
        self.mesh, self.seq_attention, self.seq_chunk = mesh, seq_attention, seq_chunk
        self._graphdef, state = self._module
        self._state = place_state(state, mesh)

    def layout(self, groups: Mapping[tuple, list[int]]) -> SequenceParallel:
        """The layout of a call's shape groups ((image shape, orientation) -> views)."""
        devices, patch = _size(self.mesh, _mesh_axes("views")), self.config.encoder.patch_size
        made = tuple(Group.make(len(members), (hw[0] // patch) * (hw[1] // patch), devices, self.encoder_chunk,
                                self.head_chunk) for (hw, _), members in groups.items())
        # The model's attention picks the local kernel: cuDNN stays cuDNN; splash ('auto' on TPU, or asked for)
        # runs the XLA kernel, since the kernels here mask padding keys and (ring) return softmax statistics,
        # neither of which fast3r_jax.model.attention's splash call does. The encoder still runs the model's choice.
        kernel = "cudnn" if self.attention.kernel == "cudnn" else "xla"
        return SequenceParallel(self.mesh, self.seq_attention, kernel, self.seq_chunk, made)

    def _compile(self, layout: SequenceParallel, groups: Mapping[tuple, list[int]],
                 prepared: Sequence[tuple[np.ndarray, tuple[int, int]]], embedding_ids: jax.Array) -> None:
        """With several processes: compiles every program of a call (each encoder and head chunk size of each group,
        the fusion) from abstract inputs, running none, then meets the other processes at a barrier
        (distributed.barrier: the fusion's first collectives wait only so long for every process)."""
        spec = functools.partial(jax.ShapeDtypeStruct, sharding=views_sharding(self.mesh))
        true_shape = lambda size: spec((size * layout.devices, 2), np.int32)  # noqa: E731  (as `shapes` puts it)
        enc_chunks = []
        for ((_, orientation), members), group in zip(groups.items(), layout.groups):
            img = prepared[members[0]][0]  # (3, h, w)
            tokens = {size: _abstract(encode_chunk.lower(
                self._graphdef, self._state, spec((size * layout.devices, *img.shape), img.dtype), true_shape(size),
                orientation, self.attention).compile().out_info) for size in set(group.enc_chunks)}
            enc_chunks.append([tokens[size] for size in group.enc_chunks])
        fused = _fuse.lower(self._graphdef, self._state, enc_chunks, embedding_ids, layout).compile().out_info
        for ((hw, orientation), _), group, group_hooks in zip(groups.items(), layout.groups, fused):
            for size, hooks in dict(zip(group.head_chunks, group_hooks)).items():
                _decode.lower(self._graphdef, self._state, _abstract(hooks), true_shape(size), hw, orientation,
                              self.mesh).compile()
        distributed.barrier("sharded inference compiled")

    def __call__(self, views: Sequence[Mapping], image_ids=None, *, seed: int = 0,
                 progress: bool | None = False) -> list[dict[str, jax.Array]]:
        """As `Engine.__call__`."""
        prepared, ids, groups = self._inputs(views, image_ids, seed)
        layout = self.layout(groups)
        members = list(groups.values())
        put = functools.partial(jax.device_put, device=views_sharding(self.mesh))
        bar, sync = progress_bar(sum(len(g.enc_chunks) + len(g.head_chunks) for g in layout.groups) + 1, progress)

        def views_of(g: int, rows: list[int | None]) -> list[int]:
            return [members[g][0 if p is None else p] for p in rows]  # padding repeats the group's first view

        def shapes(index: list[int]) -> jax.Array:
            return put(np.asarray([prepared[i][1] for i in index], np.int32))  # (C, 2)

        view_ids = np.zeros(len(layout.views()), ids.dtype)  # padding views take id 0
        for k, (g, p) in enumerate(layout.views()):
            if p < layout.groups[g].count:
                view_ids[k] = ids[members[g][p]]
        embedding_ids = jnp.asarray(layout.embedding_ids(view_ids))
        outputs: list = [None] * len(views)
        with bar, jax.default_matmul_precision(self._precision):
            if jax.process_count() > 1:  # one process has no one to wait for
                self._compile(layout, groups, prepared, embedding_ids)
            enc_chunks = []
            for g, ((_, orientation), group) in enumerate(zip(groups, layout.groups)):
                enc_chunks.append([])
                for c in range(len(group.enc_chunks)):
                    index = views_of(g, group.rows(group.enc_chunks, c, layout.devices))
                    img = put(np.stack([prepared[i][0] for i in index]))  # (C, 3, h, w)
                    enc_chunks[-1].append(sync(encode_chunk(self._graphdef, self._state, img, shapes(index),
                                                            orientation, self.attention)))
                    bar.update()
            fused = sync(_fuse(self._graphdef, self._state, enc_chunks, embedding_ids, layout))
            bar.update()
            del enc_chunks  # free the encoder tokens before the heads run
            for g, ((hw, orientation), group, group_hooks) in enumerate(zip(groups, layout.groups, fused)):
                for c in range(len(group.head_chunks)):
                    hooks, group_hooks[c] = group_hooks[c], None  # each chunk's hooks are freed once decoded
                    rows = group.rows(group.head_chunks, c, layout.devices)
                    result = _per_row(sync(_decode(self._graphdef, self._state, hooks, shapes(views_of(g, rows)),
                                                   hw, orientation, self.mesh)))
                    for r, p in enumerate(rows):
                        if p is not None:
                            outputs[members[g][p]] = result[r]
                    bar.update()
        return outputs
