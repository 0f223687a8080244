"""Training batches of synthetic scenes rendered on the accelerator, right before the step that uses them.

The host only draws scene parameters and cameras (numpy, about 1 ms per sample), in this process or, with
`workers`, in spawned worker processes a few batches ahead; the ray casting (fast3r_jax.data.raycast) runs on the
mesh, each device rendering its part of the batch. No grain, no augmentation.

Order. Batch b (counted from the start of the run) draws its (views, samples) bucket, then its resolution, from
`default_rng((seed, 1, b))`. Its samples are scenes (b * max_samples + k) % num_scenes, k < samples, of
`SyntheticScenes(num_scenes, views, resolution, seed, focal_range, split, hole_fraction, span_fraction=...)`:
sample k is exactly that numpy dataset's item, rendered here instead of by `render_view`. With several
processes, process p draws and renders the p-th block of samples/process_count of them.

Batch structure: the model batch that the input pipeline's packed batches unpack to (fast3r_jax.data.packed), as
global arrays split over the mesh's data axis: a list of V dicts of
  img                (B, 3, H, W) float32 in [-1, 1]
  true_shape         (B, 2) int32, (height, width) in the view's true orientation
  pts3d              (B, H, W, 3) float32 world points
  valid_mask         (B, H, W) bool
  depthmap           (B, H, W) float32
  camera_pose        (B, 4, 4) float32 camera-to-world
  camera_intrinsics  (B, 3, 3) float32
in landscape layout (portrait views transposed, their intrinsics' first two rows swapped).

Checkpointing: `get_state()` is {"batches": batches drawn, "seed": seed}; `set_state` continues with the next one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import multiprocessing
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fast3r_jax import sharding as sharding_lib
from fast3r_jax.config import RenderedDataConfig
from fast3r_jax.data import raycast
from fast3r_jax.data.synthetic import SyntheticScenes, random_scene

Batch = list[dict[str, jax.Array]]


def _model_layout(scenes: raycast.SceneArrays, K: jax.Array, c2w: jax.Array,
                  resolution: tuple[int, int]) -> Batch:
    """Renders B scenes x V views (K (B, V, 3, 3), c2w (B, V, 4, 4)) into the batch structure above."""
    width, height = resolution
    out = raycast.render_batch(scenes, K, c2w, resolution)  # fields (B, V, H, W, ...)
    img = (out.img.astype(jnp.float32) / jnp.float32(255) - jnp.float32(0.5)) / jnp.float32(0.5)
    maps = {"img": jnp.moveaxis(img, -1, 2), "pts3d": out.pts3d, "valid_mask": out.valid_mask,
            "depthmap": out.depthmap}  # img (B, V, 3, H, W)
    if width < height:  # portrait: landscape layout
        maps = {k: jnp.swapaxes(v, 2, 3) if k != "img" else jnp.swapaxes(v, 3, 4) for k, v in maps.items()}
        K = K[:, :, jnp.array([1, 0, 2])]
    true_shape = jnp.broadcast_to(jnp.array([height, width], jnp.int32), (K.shape[0], 2))
    return [dict({k: v[:, i] for k, v in maps.items()}, true_shape=true_shape, camera_pose=c2w[:, i],
                 camera_intrinsics=K[:, i]) for i in range(K.shape[1])]


class HostBatch(NamedTuple):
    """What the host draws for one batch: this process's samples as packed scenes and cameras."""

    scenes: raycast.SceneArrays  # fields (B, ...)
    K: np.ndarray  # (B, V, 3, 3)
    c2w: np.ndarray  # (B, V, 4, 4)
    resolution: tuple[int, int]  # (W, H)


def draw(cfg: RenderedDataConfig, seed: int, batch: int, shard_index: int = 0,
         shard_count: int = 1) -> tuple[SyntheticScenes, list[int]]:
    """The dataset (bucket and resolution) of global batch `batch` and this process's sample indices in it."""
    rng = np.random.default_rng((seed, 1, batch))
    views, samples = cfg.buckets[int(rng.integers(len(cfg.buckets)))]
    resolution = cfg.resolutions[int(rng.integers(len(cfg.resolutions)))]
    dataset = SyntheticScenes(cfg.num_scenes, views, resolution, seed=seed, focal_range=cfg.focal_range,
                              split=cfg.split, hole_fraction=cfg.hole_fraction, span_fraction=cfg.span_fraction)
    per_process = samples // shard_count
    first = batch * max(n for _, n in cfg.buckets) + shard_index * per_process
    return dataset, [(first + k) % cfg.num_scenes for k in range(per_process)]


def host_batch(cfg: RenderedDataConfig, seed: int, batch: int, shard_index: int = 0,
               shard_count: int = 1) -> HostBatch:
    """Draws and packs this process's samples of global batch `batch` (numpy only: runs in worker processes)."""
    dataset, indices = draw(cfg, seed, batch, shard_index, shard_count)
    scenes, K, c2w = zip(*(dataset.scene(i) for i in indices))
    return HostBatch(raycast.pack_scenes(scenes), np.stack(K), np.stack(c2w), dataset.resolution)


def _cpu_only() -> None:
    """Worker initialiser: a host worker never claims an accelerator (it runs numpy only)."""
    os.environ["JAX_PLATFORMS"] = "cpu"


class RenderedBatches:
    """Endless iterator of (batch, orientations) pairs (see the module docstring), checkpointable."""

    def __init__(self, cfg: RenderedDataConfig, seed: int, mesh: Mesh, shard_index: int = 0, shard_count: int = 1):
        """With cfg.workers > 0, host batches are drawn by that many spawned processes, 2 * workers batches ahead;
        as always with spawned processes, the main script must guard its work with `if __name__ == "__main__"`
        (train.py does), or every worker runs it again."""
        for views, samples in cfg.buckets:
            if samples % shard_count:
                raise ValueError(f"bucket ({views} views, {samples} samples): samples not divisible by the "
                                 f"{shard_count} processes")
        self.cfg, self.seed = cfg, seed
        self._shard_index, self._shard_count = shard_index, shard_count
        self._sharding = sharding_lib.batch_sharding(mesh)
        self._render = jax.jit(_model_layout, static_argnums=3, out_shardings=self._sharding)
        self._batches = 0
        self._pool = None if cfg.workers < 1 else concurrent.futures.ProcessPoolExecutor(
            cfg.workers, mp_context=multiprocessing.get_context("spawn"),  # spawn: no fork of a process running jax
            initializer=_cpu_only)
        self._ahead = 2 * cfg.workers
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()  # batches _batches, ...

    def __iter__(self) -> RenderedBatches:
        return self

    def orientations(self, resolution: tuple[int, int], views: int) -> tuple[str, ...]:
        """The orientations passed with a batch of `views` views at `resolution` (W, H)."""
        width, height = resolution
        orientation = "mixed" if self.cfg.mixed_orientation else "portrait" if width < height else "landscape"
        return (orientation,) * views

    def step_shapes(self) -> list[tuple[Batch, tuple[str, ...]]]:
        """Every distinct (batch, orientations) this iterator yields, the batch as jax.ShapeDtypeStruct with its
        sharding: one per bucket and resolution (a resolution and its transpose are one when mixed_orientation),
        so that a training step can be compiled for all of them before the first batch (train.step.precompile)."""
        packed = raycast.pack_scenes([random_scene(np.random.default_rng(0))])  # (1, ...): dtypes and trailing shapes
        spec = functools.partial(jax.ShapeDtypeStruct, sharding=self._sharding)
        shapes = {}
        for views, samples in self.cfg.buckets:
            scenes = jax.tree.map(lambda a, n=samples: spec((n, *a.shape[1:]), a.dtype), packed)
            for resolution in self.cfg.resolutions:
                args = (scenes, spec((samples, views, 3, 3), np.float32), spec((samples, views, 4, 4), np.float32))
                batch = jax.eval_shape(self._render, *args, resolution)
                batch = jax.tree.map(lambda s: spec(s.shape, s.dtype), batch)
                orientations = self.orientations(resolution, views)
                key = (jax.tree.structure(batch), tuple(s.shape for s in jax.tree.leaves(batch)), orientations)
                shapes.setdefault(key, (batch, orientations))
        return list(shapes.values())

    def draw(self, batch: int) -> tuple[SyntheticScenes, list[int]]:
        """The dataset of global batch `batch` and this process's sample indices in it (see `draw`)."""
        return draw(self.cfg, self.seed, batch, self._shard_index, self._shard_count)

    def _host_batch(self) -> HostBatch:
        args = (self.cfg, self.seed, self._batches, self._shard_index, self._shard_count)
        if self._pool is None:
            return host_batch(*args)
        while len(self._pending) < self._ahead:
            ahead = self._batches + len(self._pending)
            self._pending.append(self._pool.submit(host_batch, *args[:2], ahead, *args[3:]))
        return self._pending.popleft().result()

    def __next__(self) -> tuple[Batch, tuple[str, ...]]:
        host = self._host_batch()
        placed = jax.tree.map(functools.partial(jax.make_array_from_process_local_data, self._sharding),
                              (host.scenes, host.K, host.c2w))
        batch = self._render(*placed, host.resolution)
        self._batches += 1
        return batch, self.orientations(host.resolution, host.K.shape[1])

    def get_state(self) -> dict[str, int]:
        return {"batches": self._batches, "seed": self.seed}

    def set_state(self, state: dict[str, int]) -> None:
        if set(state) != {"batches", "seed"}:
            raise ValueError(f"not a rendered-data state: {state!r}")
        if state["seed"] != self.seed:
            raise ValueError(f"the data state was saved with seed {state['seed']}, now {self.seed}")
        self._cancel()
        self._batches = int(state["batches"])

    def _cancel(self) -> None:
        while self._pending:
            self._pending.pop().cancel()

    def close(self) -> None:
        """Stops the worker processes, if any."""
        self._cancel()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
