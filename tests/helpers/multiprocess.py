"""Launching a command as several JAX processes on this machine (CPU devices, gloo collectives)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cpu_env(devices: int) -> dict[str, str]:
    """The environment of one process with `devices` host CPU devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        "--xla_cpu_enable_concurrency_optimized_scheduler=false")
    env["JAX_PLATFORMS"] = "cpu"
    return env


def launch(argv: list[str], processes: int, devices: int, timeout: float = 600) -> list[str]:
    """Runs `python argv...` as `processes` processes of one job (each with `devices` CPU devices); returns each
    process's combined output. Fails with every process's output when one exits non-zero."""
    extra = [[]]
    if processes > 1:
        address = f"localhost:{free_port()}"
        extra = [["--coordinator-address", address, "--num-processes", str(processes), "--process-id", str(i)]
                 for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, *argv, *e], env=cpu_env(devices), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for e in extra]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            proc.kill()
    failed = [i for i, proc in enumerate(procs) if proc.returncode != 0]
    if failed:
        raise AssertionError("\n".join(f"--- process {i} (exit {procs[i].returncode}):\n{outputs[i][-4000:]}"
                                       for i in failed))
    return outputs
