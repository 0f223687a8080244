"""Grain input pipeline: shuffled, sharded, augmented, batched multi-view samples.

Order. Each epoch is a permutation of the source (grain's index shuffle, reshuffled every epoch), cut to a
multiple of the global batch (batch_size * shard_count). Global batch b holds the records at epoch positions
[b * G, (b + 1) * G); shard s takes the s-th block of batch_size of them. Record position r of epoch e draws its
randomness (view sampling, crop, jitter) from `default_rng((seed, 0, e, r))`, and global batch b its aspect-ratio
bucket from `default_rng((seed, 1, e, b))`, so every sample of a global batch (and every view of a sample) shares
one resolution on every process, and the data depend on neither worker_count nor shard_count: a global batch is
the same whether one process loads it or several share it.

Batches: packed (fast3r_jax.data.packed), the compact arrays the training batch derives from, stacked over samples
and views: uint8 pixels, depth and cameras in the model's landscape layout; `packed.to_mesh` puts one on the mesh and
expands it there into the model's batch (normalised images, world points, valid masks). String fields are dropped.
All views of a batch share one landscape-layout shape: with `resolutions` they do, without it the source's frames must.

Checkpointing: `it = iter(loader)`; `state = it.get_state()` (the count of global batches consumed, with the
global batch size and seed); later `it = iter(loader); it.set_state(state)` resumes with exactly the next batches,
also with another process or worker count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from fast3r_jax.data.augment import BUCKETS, augment_views
from fast3r_jax.data.mixture import Mixture
from fast3r_jax.data.packed import Packed, collate, pack_view
from fast3r_jax.data.readers import Source, cv2, load_sample


@dataclasses.dataclass(frozen=True)
class SampleTransform:
    """Position in this shard's stream -> one sample's packed views (see the module docstring for the order)."""

    source: Source
    order: grain.MapDataset  # order[e * len(source) + r]: the source index at position r of epoch e
    seed: int
    batch_size: int  # per shard
    shard_index: int
    shard_count: int
    records_per_epoch: int  # global, a multiple of batch_size * shard_count
    resolutions: tuple[tuple[int, int], ...] | None
    augment: bool
    aug_crop: int | None

    def __call__(self, position: int, _: Any) -> list[dict[str, np.ndarray]]:
        global_batch = self.batch_size * self.shard_count
        batch, slot = divmod(position, self.batch_size)
        epoch, record = divmod(batch * global_batch + self.shard_index * self.batch_size + slot,
                               self.records_per_epoch)
        index = self.order[epoch * len(self.source) + record]
        if isinstance(self.source, Mixture):
            source, index = self.source.locate(index, epoch)
        else:
            source = self.source
        rng = np.random.default_rng((self.seed, 0, epoch, record))
        views = load_sample(source, int(index), rng, world_points=False)  # unpacking computes them on the devices
        if self.resolutions or self.augment:
            resolution = None
            if self.resolutions:
                bucket_rng = np.random.default_rng((self.seed, 1, epoch, record // global_batch))
                resolution = self.resolutions[int(bucket_rng.integers(len(self.resolutions)))]
            aug_crop = self.aug_crop if self.aug_crop is not None else getattr(source, "aug_crop", 0)
            views = augment_views(views, resolution, rng, aug_crop if self.augment else 0, jitter=self.augment,
                                  world_points=False)
        return [pack_view(v) for v in views]


class Loader:
    """Iterable of batches; its iterators checkpoint as the count of global batches consumed."""

    def __init__(self, build: Callable[[int], grain.IterDataset], global_batch_size: int, seed: int):
        self._build, self.global_batch_size, self.seed = build, global_batch_size, seed

    def __iter__(self) -> "LoaderIterator":
        return LoaderIterator(self)


class LoaderIterator:
    """Batches from a `Loader`, with `get_state` / `set_state` for checkpoints and `close` for worker processes."""

    def __init__(self, loader: Loader):
        self._loader, self._batches = loader, 0
        self._it = iter(loader._build(0))

    def __iter__(self) -> "LoaderIterator":
        return self

    def __next__(self) -> Packed:
        batch = next(self._it)
        self._batches += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"global_batches": self._batches, "global_batch_size": self._loader.global_batch_size,
                "seed": self._loader.seed}

    def set_state(self, state: dict[str, int]) -> None:
        expected = {"global_batch_size": self._loader.global_batch_size, "seed": self._loader.seed}
        if set(state) != {"global_batches", *expected}:
            raise ValueError(f"not a data-iterator state: {state!r}")
        mismatch = {k: (state[k], v) for k, v in expected.items() if state[k] != v}
        if mismatch:
            raise ValueError("the data-iterator state was saved with another " +
                             ", ".join(f"{k} ({saved}, now {now})" for k, (saved, now) in mismatch.items()))
        self.close()
        self._batches = int(state["global_batches"])
        self._it = iter(self._loader._build(self._batches))

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def make_loader(source: Source, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1,
                worker_count: int = 0, augment: bool = True, num_epochs: int | None = None, *,
                resolutions: Sequence[tuple[int, int]] | None = BUCKETS, aug_crop: int | None = None,
                read_threads: int = 2, prefetch_batches: int = 4) -> Loader:
    """Iterable of packed batches (see the module docstring for structure, order and checkpointing).

    Args:
        source: a reader, `Mixture` or any object with `__len__` and `__getitem__(index[, rng])`.
        batch_size: samples per batch on this shard; the global batch is batch_size * shard_count.
        seed: shuffling and augmentation seed, in [0, 2**32).
        shard_index, shard_count: this process's shard, e.g. (jax.process_index(), jax.process_count()).
        worker_count: grain worker processes (0: load in this process).
        augment: random zoom (aug_crop) and colour jitter; crop/resize to buckets happens regardless.
        num_epochs: number of passes, None for an endless stream; an incomplete last global batch is dropped.
        resolutions: landscape (W, H) buckets, one drawn per global batch; None keeps the source's resolution
            (all samples must then share it).
        aug_crop: random zoom margin in pixels for every source; None takes each source's own
            `aug_crop` attribute (readers carry the reference per-dataset value), else 0.
        read_threads, prefetch_batches: threads and buffered batches per process.
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    global_batch = batch_size * shard_count
    records_per_epoch = len(source) // global_batch * global_batch
    if records_per_epoch == 0:
        raise ValueError(f"source has {len(source)} samples, fewer than batch_size * shard_count = {global_batch}")
    transform = SampleTransform(source, grain.MapDataset.range(len(source)).shuffle(seed=seed), seed, batch_size,
                                shard_index, shard_count, records_per_epoch,
                                None if resolutions is None else tuple(tuple(r) for r in resolutions),
                                augment, aug_crop)
    stream = grain.MapDataset.range(records_per_epoch // shard_count).repeat(num_epochs).map_with_index(transform)

    def build(start_batch: int) -> grain.IterDataset:
        ds = stream[start_batch * batch_size:].batch(batch_size, drop_remainder=True, batch_fn=collate)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))
        if worker_count > 0:
            _mark_absl_flags_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count), worker_init_fn=_init_worker)
        return it

    return Loader(build, global_batch, seed)


def _init_worker(index: int, count: int) -> None:
    """One OpenCV thread per worker process: the workers already share the host's cores, and OpenCV's own pool in
    each of them (as many threads as cores) would oversubscribe them."""
    cv2.setNumThreads(1)


def _mark_absl_flags_parsed() -> None:
    """grain's multiprocessing reads absl flags, which programs not started by absl.app never parse."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()

