"""Launching a command as several JAX processes on this machine (CPU devices, gloo collectives)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cpu_env(devices: int) -> dict[str, str]:
    """The environment of one process with `devices` host CPU devices (the session's other XLA flags kept)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count=")]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    return env


def launch(argv: list[str], processes: int, devices: int, timeout: float = 900) -> list[str]:
    """Runs `python argv...` as `processes` processes of one job (each with `devices` CPU devices); returns each
    process's combined output. Fails with every process's output when one exits non-zero, or when they have not all
    exited `timeout` seconds after the start (they are then killed)."""
    extra = [[]]
    if processes > 1:
        address = f"localhost:{free_port()}"
        extra = [["--coordinator-address", address, "--num-processes", str(processes), "--process-id", str(i)]
                 for i in range(processes)]
    logs = [tempfile.TemporaryFile("w+", errors="replace") for _ in extra]  # files: no process waits on a full pipe
    env = cpu_env(devices) | {"PYTHONUNBUFFERED": "1"}  # a killed process's output so far is in its file
    procs = [subprocess.Popen([sys.executable, *argv, *e], env=env, stdout=log, stderr=subprocess.STDOUT)
             for e, log in zip(extra, logs)]
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        running = [i for i, proc in enumerate(procs) if proc.poll() is None]
        for proc in procs:
            proc.kill()
            proc.wait()
    outputs = []
    for log in logs:
        with log:
            log.seek(0)
            outputs.append(log.read())
    if any(proc.returncode for proc in procs):  # killed ones too
        status = [f"running after {timeout:g} s, killed" if i in running else f"exit {proc.returncode}"
                  for i, proc in enumerate(procs)]
        summary = f"processes {running} still running after {timeout:g} s\n" if running else ""
        raise AssertionError(summary + "\n".join(f"--- process {i} ({status[i]}):\n{outputs[i][-4000:]}"
                                                 for i in range(len(procs))))
    return outputs
