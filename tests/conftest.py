"""Test session setup: 8 host CPU devices, so sharding layouts run for real on a single machine, and a compilation
cache of the session's own (commands enable the persistent cache by default; tests never touch the user's).

XLA:CPU's concurrency-optimised scheduler can start two collectives of one program at once; with few cores their
rendezvous starve each other and the step deadlocks, so it is switched off for multi-device CPU runs.

The suite compiles hundreds of small programs and runs most of them a few times, so compiling is most of its time:
it builds machine code without LLVM's optimisations (--xla_backend_optimization_level=0). The optimised HLO is the
same (checked on the tiny model's train step); the code runs slower and may round in the last bit (that step's loss
moved by 1e-7). On 2 cores the suite takes 15 minutes instead of 24. An XLA_FLAGS that sets the level is kept, so
`XLA_FLAGS=--xla_backend_optimization_level=3 pytest` runs it with XLA's default, which the commands use.
"""

import os
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = " ".join([_flags, "--xla_force_host_platform_device_count=8",
                                    "--xla_cpu_enable_concurrency_optimized_scheduler=false"]).strip()
# One cache for the whole run, shared by the pytest-xdist workers and the commands tests start, holding every
# program however quick to compile: the same tiny models are compiled by many tests and subprocesses.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"fast3r-jax-tests-xla-{_run}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


# Files that take minutes go first, so that pytest-xdist's workers (whole files each) do not end on one of them.
_SLOW_FIRST = ("test_distributed.py", "test_trainer.py", "test_sharding.py", "test_parity_large.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
