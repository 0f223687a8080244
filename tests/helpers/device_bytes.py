"""How many bytes each device holds of a tree of sharded arrays (to show that partitioning is real)."""

from __future__ import annotations

import jax


def bytes_per_device(tree) -> dict[str, int]:
    """Device name -> bytes of the tree's shards that device holds."""
    out: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            out[key] = out.get(key, 0) + shard.data.size * shard.data.dtype.itemsize
    return out
