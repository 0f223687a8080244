"""Wall time of a call that returns device arrays: the first call (compilation included) and the median of the
calls after it, each waited for with `jax.block_until_ready`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def time_calls(fn: Callable, *args, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of the `repeats` calls after it) of fn(*args)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)
