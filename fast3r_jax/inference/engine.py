"""Many-view inference: N views (1 to thousands, mixed shapes) through Fast3R with bounded memory.

The encoder and the two DPT heads run in fixed-size chunks of views, jitted once per (image shape, orientation,
chunk size); a smaller last chunk is padded to the next power of two, so a new view count reuses compiled chunk
shapes without computing a full chunk of padding. The fusion transformer sees the tokens of all views at once and
is compiled per shape set (the count of views of each shape): padding views there would change the attention of
the real tokens, so view counts are not bucketed for it. Its tokens are ordered by shape group (first-seen order,
views in input order within a group); attention has no notion of token order, so this is the same function as the
model's view order, with the image ids following their views.

Each stage runs as a compiled program per input signature, kept for the engine's life; with a compilation cache
folder (`cache_dir`) the programs are also kept there as serialized executables, keyed by everything that determines
them, so that a later process loads them without tracing the model (and without building it: its parameters are
all the programs take).

Per-view results stay on the device until the caller takes them; they are returned in TRUE orientation (portrait
views are not transposed, unlike `predict`). `fast3r_jax.inference.sharded.ShardedEngine` runs the same over
several devices.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from fast3r_jax import compilation_cache
from fast3r_jax.config import Fast3RConfig
from fast3r_jax.model.attention import AttentionFn
from fast3r_jax.model.fast3r import DTYPES, OUTPUT_KEYS
from fast3r_jax.model.image_index_embedding import check_image_ids, sample_image_ids
from fast3r_jax.model.params import build_model, check_params
from fast3r_jax.sharding import resolve_attention

IMAGE_ID_POLICIES = ("random", "sequential")
# Upstream's draw as one program rather than one per operation (each of which a run has to look up in the
# compilation cache); integer arithmetic, so the same ids. The seed is static as for an eager key (any Python int).
_draw_image_ids = jax.jit(lambda seed, num_views, num_ids: sample_image_ids(jax.random.key(seed), 1, num_views,
                                                                            num_ids)[0], static_argnums=(0, 1, 2))


# ----------------------------------------------------------------------------
# Image ids.
# ----------------------------------------------------------------------------


def make_image_ids(num_views: int, policy: str = "random", seed: int = 0, num_ids: int = 1000,
                   interpolate: bool | None = None) -> np.ndarray:
    """One image id per view.

    Up to `num_ids` views: int32 ids; 'random' as upstream draws them (view 0 gets 0, the others distinct ids from
    1..num_ids-1) but from `jax.random.key(seed)`, 'sequential' gives 0..N-1. More views than ids: float32 ids
    spread evenly over [0, num_ids - 1] (position interpolation of the sinusoidal table); 'sequential' assigns
    them in view order, 'random' keeps 0 for view 0 and shuffles the others among the remaining views.
    interpolate: True gives the fractional ids for any view count (to compare both schemes at one N); None uses them
    only when the table is too small.
    """
    if policy not in IMAGE_ID_POLICIES:
        raise ValueError(f"image id policy must be one of {IMAGE_ID_POLICIES}, got {policy!r}")
    if num_views < 1:
        raise ValueError(f"need at least one view, got {num_views}")
    if interpolate is None:
        interpolate = num_views > num_ids
    if not interpolate:
        if num_views > num_ids:
            raise ValueError(f"{num_views} views need more than the {num_ids} rows of the image-id table; "
                             "use interpolated ids")
        if policy == "sequential":
            return np.arange(num_views, dtype=np.int32)
        return np.asarray(_draw_image_ids(seed, num_views, num_ids))
    grid = np.linspace(0.0, num_ids - 1, num_views, dtype=np.float64).astype(np.float32)  # (N,) grid[0] = 0
    if policy == "random":
        order = np.asarray(jax.random.permutation(jax.random.key(seed), num_views - 1)) + 1
        grid = np.concatenate([grid[:1], grid[order]])
    return grid


# ----------------------------------------------------------------------------
# Jitted stages of the model (Fast3R.encode / fuse / decode).
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef", "orientation", "attention"))
def encode_chunk(graphdef: nnx.GraphDef, state: nnx.State, img: jax.Array, true_shape: jax.Array, orientation: str,
                 attention: AttentionFn) -> jax.Array:
    """(C, 3, h, w) landscape-layout images -> (C, n, D_enc) tokens (on one device, or split over a mesh as the
    inputs are)."""
    return nnx.merge(graphdef, state).encode(img, true_shape, orientation, attention=attention)


@functools.partial(jax.jit, static_argnames=("graphdef", "counts", "head_chunks", "attention"))
def _fuse(graphdef, state, enc_chunks: list[list[jax.Array]], image_ids: jax.Array, counts: tuple[int, ...],
          head_chunks: tuple[tuple[int, ...], ...], attention: AttentionFn) -> list[list[list[jax.Array]]]:
    """Fuses the tokens of all views; returns per group, per head chunk, the four hooks (C, n, C_k).

    enc_chunks: per shape group, its encoder chunks (C, n, D_enc) (the last one padded); counts: real views per
    group; head_chunks: per group, the sizes of its head chunks; image_ids: (1, V) in group order.
    """
    model = nnx.merge(graphdef, state)
    tokens, lengths = [], []
    for chunks, count in zip(enc_chunks, counts):
        group = jnp.concatenate(chunks, axis=0)[:count]  # (G, n, D_enc)
        tokens.append(group.reshape(-1, group.shape[-1]))
        lengths += [group.shape[1]] * count
    hooks = model.fuse(jnp.concatenate(tokens)[None], tuple(lengths), image_ids,
                       attention=attention)  # 4 x (1, N, C_k)
    out, start = [], 0
    for chunks, count, sizes in zip(enc_chunks, counts, head_chunks):
        n = chunks[0].shape[1]
        group_hooks = []
        for h in hooks:
            g = h[0, start:start + count * n].reshape(count, n, h.shape[-1])  # (G, n, C_k)
            group_hooks.append(jnp.pad(g, ((0, sum(sizes) - count), (0, 0), (0, 0))))
        ends = np.cumsum(sizes)
        out.append([[g[end - size:end] for g in group_hooks] for size, end in zip(sizes, ends)])
        start += count * n
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "hw", "orientation"))
def _decode(graphdef, state, hooks: list[jax.Array], true_shape: jax.Array, hw: tuple[int, int],
            orientation: str) -> list[dict[str, jax.Array]]:
    """Both heads on one chunk of hooks; per view dicts of maps (H, W[, 3]) in true orientation."""
    out = nnx.merge(graphdef, state).decode(hooks, hw, orientation, true_shape, landscape=False)  # (C, H, W[, 3])
    return [{k: out[k][i] for k in OUTPUT_KEYS} for i in range(true_shape.shape[0])]


def _stage(fn: Callable, graphdef: nnx.GraphDef, static: Mapping[str, Any]) -> Callable:
    """fn with the model's structure and static arguments bound, under a name of its own (compilation_cache.
    unique_name), so that XLA compiles it rather than serving it from its cache, and it can be saved."""
    def stage(state: nnx.State, *args: Any) -> Any:
        return fn.__wrapped__(graphdef, state, *args, **static)

    stage.__name__ = stage.__qualname__ = compilation_cache.unique_name(fn.__name__)
    return stage


# ----------------------------------------------------------------------------
# Engine.
# ----------------------------------------------------------------------------


def chunk_views(members: list[int], size: int) -> list[list[int]]:
    """Splits view indices into chunks of `size`; a smaller last chunk is padded (repeating the group's first view)
    to the next power of two, so that chunk shapes repeat across runs without computing a full chunk of padding."""
    full, rest = divmod(len(members), size)
    batches = [members[i * size:(i + 1) * size] for i in range(full)]
    if rest:
        bucket = min(size, 1 << (rest - 1).bit_length())
        batches.append(members[full * size:] + [members[0]] * (bucket - rest))
    return batches


def _prepare(view: Mapping, index: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A view in true orientation (img (1, 3, H, W) or (3, H, W)) -> (landscape-layout (3, h, w), (H, W))."""
    img = np.asarray(view["img"], np.float32)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"view {index}: img must have shape (1, 3, H, W) or (3, H, W), got {np.shape(view['img'])}")
    height, width = img.shape[1:]
    if "true_shape" in view and tuple(np.asarray(view["true_shape"]).reshape(-1)) != (height, width):
        raise ValueError(f"view {index}: true_shape {np.asarray(view['true_shape']).tolist()} does not match the "
                         f"image {(height, width)} (the engine takes images in their true orientation)")
    return (img.swapaxes(1, 2) if height > width else img), (height, width)


class Engine:
    """Runs Fast3R on any number of views; see the module docstring for how the work is split.

    config, params: the model (params as `load_pretrained` returns them). dtype: 'bfloat16' or 'float32' (the
    latter with full-precision matmuls). encoder_chunk / head_chunk: views per encoder / head call (memory bound).
    cache_dir: a compilation cache folder (fast3r_jax.compilation_cache) where the compiled programs are kept for
    later processes; None keeps them in this engine only.
    """

    def __init__(self, config: Fast3RConfig, params: Mapping, dtype: str = "bfloat16", encoder_chunk: int = 16,
                 head_chunk: int = 8, cache_dir: str | os.PathLike | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        for name, value in (("encoder_chunk", encoder_chunk), ("head_chunk", head_chunk)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.config = config
        self.dtype = dtype
        self.encoder_chunk = encoder_chunk
        self.head_chunk = head_chunk
        self.attention = resolve_attention(config.attention, DTYPES[dtype])  # one device
        check_params(params, config, DTYPES[dtype], cache_dir)
        self._params = jax.tree.map(jnp.asarray, dict(params))  # on the device once, shared with the module
        paths_leaves = jax.tree_util.tree_flatten_with_path(self._params)[0]
        self._leaves = [leaf for _, leaf in paths_leaves]  # what every program takes, in the module state's order
        self._paths = [jax.tree_util.keystr(path) for path, _ in paths_leaves]
        self._precision = "highest" if dtype == "float32" else "default"
        self.cache_dir = cache_dir
        self._programs: dict[tuple, Callable] = {}

    @functools.cached_property
    def _module(self) -> tuple[nnx.GraphDef, nnx.State]:
        """The model split into structure and state: built (its initialisers traced once per process) only when a
        program has to be traced, not when every program is found in the cache folder."""
        graphdef, state = nnx.split(build_model(self.config, self._params, DTYPES[self.dtype]))
        paths = [jax.tree_util.keystr(path[:-1]) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
        if paths != self._paths:  # programs take the parameters in the order of the module's state
            raise RuntimeError("the model's state does not flatten in the order of its parameter tree")
        return graphdef, state

    def _run(self, fn: Callable, *args: Any, **static: Any) -> Any:
        """fn(graphdef, state, *args, **static) through its compiled program: kept from an earlier call, loaded from
        the cache folder, or traced and compiled now (and saved there)."""
        leaves, tree = jax.tree.flatten(args)
        signature = (fn.__name__, str(tree), tuple((x.shape, jnp.result_type(x).name, getattr(x, "weak_type", False))
                                                   for x in leaves), tuple(sorted(static.items())))
        program = self._programs.get(signature)
        if program is None:
            program = self._programs[signature] = self._program(fn, args, static, signature)
        return program(self._leaves, *args)

    def _program(self, fn: Callable, args: tuple, static: Mapping[str, Any], signature: tuple) -> Callable:
        """The program of one call signature (see `_run`), called as program(parameter leaves, *args). With a cache
        folder its entry is keyed by the signature, the model (config, compute dtype, precision, parameter shapes
        and dtypes) and, through compilation_cache.key, the code and the platform."""
        if self.cache_dir is None:
            with jax.default_matmul_precision(self._precision):
                return self._called(fn.lower(*self._module, *args, **static).compile())
        params = [(path, x.shape, x.dtype.name) for path, x in zip(self._paths, self._leaves)]
        # The attention kernel follows from the config, the dtype and the backend, all part of the key.
        described = (signature[:3], [(k, v) for k, v in signature[3] if k != "attention"])
        name = compilation_cache.key("engine", described, self.config.to_json(), self.dtype, self._precision, params)
        program = compilation_cache.load_program(self.cache_dir, name, jax.tree.structure(((self._leaves, *args), {})))
        if program is not None:
            return program
        graphdef, state = self._module
        with jax.default_matmul_precision(self._precision):
            compiled = jax.jit(_stage(fn, graphdef, static)).lower(state, *args).compile()
        compilation_cache.save_program(self.cache_dir, name, compiled)
        return self._called(compiled)

    def _called(self, compiled: jax.stages.Compiled) -> Callable:
        """A program compiled for (state, *args), called as (parameter leaves, *args) like a loaded one."""
        treedef = jax.tree.structure(self._module[1])
        return lambda leaves, *args: compiled(jax.tree.unflatten(treedef, leaves), *args)

    def image_ids(self, num_views: int, policy: str | None = None, seed: int = 0) -> np.ndarray:
        """`make_image_ids` with the model's table size; policy None follows the config (random as upstream)."""
        if policy is None:
            policy = "random" if self.config.fusion.random_image_ids else "sequential"
        return make_image_ids(num_views, policy, seed, self.config.fusion.num_image_ids)

    def __call__(self, views: Sequence[Mapping], image_ids=None, *, seed: int = 0,
                 progress: bool | None = False) -> list[dict[str, jax.Array]]:
        """Predicts every view.

        views: dicts with `img` (1, 3, H, W) in [-1, 1] in true orientation (as `images.load_images` gives them),
        any mix of shapes. image_ids: one per view (int table rows or float positions); None uses `image_ids` with
        `seed`. progress: show a progress bar (None: only on a terminal).
        Returns per view a dict of device arrays pts3d_in_other_view (H, W, 3), conf (H, W), pts3d_local
        (H, W, 3), conf_local (H, W), float32, in the view's true orientation.
        """
        prepared, ids, groups = self._inputs(views, image_ids, seed)
        order = [i for members in groups.values() for i in members]
        enc_plan = [chunk_views(m, self.encoder_chunk) for m in groups.values()]
        head_plan = [chunk_views(m, self.head_chunk) for m in groups.values()]
        bar, sync = progress_bar(sum(map(len, enc_plan)) + 1 + sum(map(len, head_plan)), progress)

        def shapes(batch: list[int]) -> np.ndarray:
            return np.asarray([prepared[i][1] for i in batch], np.int32)  # (C, 2)

        def images(batch: list[int]) -> jax.Array:
            """(C, 3, h, w) on the device: views copied one by one (no host-side stack) and stacked there."""
            return jnp.stack(jax.device_put([prepared[i][0] for i in batch]))

        # One encoder call per chunk; the next chunk's images are copied while the device encodes this one.
        enc_calls = [(g, orientation, batch) for g, ((_, orientation), plan) in enumerate(zip(groups, enc_plan))
                     for batch in plan]
        outputs: list = [None] * len(views)
        with bar:
            enc_chunks: list[list[jax.Array]] = [[] for _ in groups]
            upcoming = images(enc_calls[0][2])
            for k, (g, orientation, batch) in enumerate(enc_calls):
                tokens = self._run(encode_chunk, upcoming, shapes(batch), orientation=orientation,
                                   attention=self.attention)
                if k + 1 < len(enc_calls):
                    upcoming = images(enc_calls[k + 1][2])
                enc_chunks[g].append(sync(tokens))
                bar.update()
            counts = tuple(len(m) for m in groups.values())
            head_sizes = tuple(tuple(len(batch) for batch in plan) for plan in head_plan)
            fused = sync(self._run(_fuse, enc_chunks, jnp.asarray(ids[order])[None], counts=counts,
                                   head_chunks=head_sizes, attention=self.attention))
            bar.update()
            del enc_chunks  # free the encoder tokens before the heads run
            for (hw, orientation), plan, group_hooks in zip(groups, head_plan, fused):
                for j, batch in enumerate(plan):
                    hooks, group_hooks[j] = group_hooks[j], None  # each chunk's hooks are freed once decoded
                    result = sync(self._run(_decode, hooks, shapes(batch), hw=hw, orientation=orientation))
                    for i, out in zip(batch, result):
                        if outputs[i] is None:  # padding repeats a view already decoded
                            outputs[i] = out
                    bar.update()
        return outputs

    def lower_fusion(self, num_views: int, height: int, width: int) -> jax.stages.Lowered:
        """The fusion step for `num_views` landscape views of (height, width), lowered from abstract inputs (nothing
        runs): compile it and read `memory_analysis()` to learn whether that many views fit in one forward."""
        patch, dim = self.config.encoder.patch_size, self.config.encoder.embed_dim
        tokens = (height // patch) * (width // patch)
        members = list(range(num_views))
        dtype = DTYPES[self.dtype]
        enc_chunks = [[jax.ShapeDtypeStruct((len(batch), tokens, dim), dtype)
                       for batch in chunk_views(members, self.encoder_chunk)]]
        head_sizes = tuple(len(batch) for batch in chunk_views(members, self.head_chunk))
        ids = jax.ShapeDtypeStruct((1, num_views), jnp.float32)
        with jax.default_matmul_precision(self._precision):
            return _fuse.lower(*self._module, enc_chunks, ids, (num_views,), (head_sizes,), self.attention)

    def _inputs(self, views: Sequence[Mapping], image_ids,
                seed: int) -> tuple[list[tuple[np.ndarray, tuple[int, int]]], np.ndarray, dict[tuple, list[int]]]:
        """Checked inputs: prepared views, one image id per view, and the views of each (image shape, orientation)
        group in first-seen order."""
        if not views:
            raise ValueError("at least one view is required")
        prepared = [_prepare(v, i) for i, v in enumerate(views)]
        ids = self.image_ids(len(views), seed=seed) if image_ids is None else image_ids
        ids = check_image_ids(ids, len(views), self.config.fusion.num_image_ids)
        groups: dict[tuple, list[int]] = {}
        for i, (img, (height, width)) in enumerate(prepared):
            groups.setdefault((img.shape[1:], "portrait" if height > width else "landscape"), []).append(i)
        return prepared, ids, groups


def progress_bar(total: int, progress: bool | None) -> tuple[tqdm, Callable]:
    """A progress bar over `total` steps, and the function that waits for each step's result while it shows."""
    bar = tqdm(total=total, desc="inference", unit="step", disable=(None if progress is None else not progress))
    return bar, (jax.block_until_ready if not bar.disable else (lambda x: x))
