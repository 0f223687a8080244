"""Several processes, one program: starting `jax.distributed` from command-line flags or the cluster's environment.

Every entry point (train.py, evaluate.py, `fast3r-jax reconstruct`) takes the same flags and calls `initialize`
before it touches a device. After it, `jax.devices()` lists the devices of all processes, a mesh over them is one
global mesh, and each process feeds only its own part of every global array. Inference with several processes (or
`--sharded` in one) runs `sequence_parallel.ShardedEngine` over all devices; `host_copy` brings its outputs to every
process, and process 0 alone writes outputs and logs.

    --coordinator-address HOST:PORT --num-processes N --process-id I    explicit (all three, every process)
    --distributed                                                       JAX's cluster detection (Slurm, Open MPI,
                                                                        Cloud TPU, GKE, Kubernetes, ...)

A launch under Slurm (`srun`) or Open MPI (`mpirun`) with more than one task starts `jax.distributed` without the
flag: several tasks that each trained alone would write into one run folder.
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fast3r_jax.errors import InputError

# Environment variables that give the task count of a multi-process launch, by launcher.
_TASK_COUNT_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
# How long a process waits at a barrier for the others: the slowest compilation of a large program, with room.
BARRIER_TIMEOUT_S = 1800.0
_barriers = itertools.count()  # every process calls `barrier` in the same order: the count makes each use unique


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several processes (jax.distributed)")
    group.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                       help="process 0's address and a free port, the same for every process")
    group.add_argument("--num-processes", type=int, default=None, help="processes in the job")
    group.add_argument("--process-id", type=int, default=None, help="this process's index in [0, num-processes)")
    group.add_argument("--distributed", action="store_true",
                       help="start jax.distributed from the cluster environment (JAX's auto-detection)")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """`add_arguments` plus the choice of sharded inference (entry points that run the model forward)."""
    add_arguments(parser)
    group = parser.add_argument_group("inference over several devices")
    group.add_argument("--sharded", action="store_true",
                       help="split views and fusion tokens over every device (always on with several processes)")
    group.add_argument("--seq-attention", choices=("allgather", "ring"), default="allgather",
                       help="exact attention across token shards: all-gather K/V, or pass K/V blocks around a ring")


def launched_as_several_processes() -> bool:
    """True under a launcher that started more than one task (Slurm, Open MPI)."""
    return any(int(os.environ.get(name, "1") or 1) > 1 for name in _TASK_COUNT_VARIABLES)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> bool:
    """Starts jax.distributed when asked to (explicit values, `auto`, or a multi-task launch); returns whether it
    runs. Idempotent. Explicit values must come together and be consistent."""
    explicit = {"--coordinator-address": coordinator_address, "--num-processes": num_processes,
                "--process-id": process_id}
    given = [name for name, value in explicit.items() if value is not None]
    if given and len(given) != len(explicit):
        missing = [name for name in explicit if name not in given]
        raise InputError(f"{', '.join(given)} given without {', '.join(missing)}: pass all three, or --distributed "
                         "for the cluster's auto-detection")
    if given:
        if num_processes < 1:
            raise InputError(f"--num-processes must be at least 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise InputError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        if ":" not in coordinator_address:
            raise InputError(f"--coordinator-address must be HOST:PORT, got {coordinator_address!r}")
    if not (given or auto or launched_as_several_processes()):
        return False
    if jax.distributed.is_initialized():
        return True
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):  # CPU processes talk through gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def initialize_from_args(args: argparse.Namespace) -> bool:
    """`initialize` with the values of `add_arguments`' flags."""
    return initialize(args.coordinator_address, args.num_processes, args.process_id, args.distributed)


def inference_mesh(sharded: bool) -> Mesh | None:
    """The ('data', 'seq', 'tensor') mesh over every device for sharded inference, when asked for or when several
    processes run; None for one-device inference."""
    from fast3r_jax.sharding import make_inference_mesh

    return make_inference_mesh() if sharded or jax.process_count() > 1 else None


def host_copy(tree: Any) -> Any:
    """Every leaf as numpy in this process; arrays held partly by other processes are gathered from them (a
    collective: every process calls it with the same tree)."""
    leaves, treedef = jax.tree.flatten(tree)
    remote = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not x.is_fully_addressable]
    if remote:  # one collective for all of them
        gathered = multihost_utils.process_allgather([leaves[i] for i in remote], tiled=True)
        for i, x in zip(remote, gathered):
            leaves[i] = x
    return treedef.unflatten([np.asarray(x) for x in jax.device_get(leaves)])  # one batched transfer


def any_process(flags: np.ndarray) -> np.ndarray:
    """The elementwise OR of boolean `flags` over all processes (a collective: every process calls it); in one process,
    the flags themselves."""
    flags = np.asarray(flags, bool)
    if jax.process_count() == 1:
        return flags
    return np.asarray(multihost_utils.process_allgather(flags)).any(axis=0)


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Waits until every process has reached this barrier (every process calls it, in the same order), through the
    coordination service rather than a device collective; a no-op with one process.

    Why: the first collective over a group of devices sets up its communicator, which on CPU (gloo) waits only 30 s
    for every process to join (later collectives over those devices wait as long as it takes). So a program is
    compiled in every process, then the processes meet here, then it runs: one that compiles more slowly does not
    reach the program's collectives that much later than the others.
    """
    if jax.process_count() == 1:
        return
    from jax._src.distributed import global_state  # noqa: PLC0415  (the client that jax.distributed started)

    global_state.client.wait_at_barrier(f"fast3r_jax/{name}/{next(_barriers)}", round(timeout_s * 1000))


def is_lead() -> bool:
    """True in the process that writes logs and outputs (process 0)."""
    return jax.process_index() == 0
