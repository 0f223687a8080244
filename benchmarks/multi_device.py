"""Inference over several devices: the most views one forward holds, and time per forward against one device.

    python benchmarks/multi_device.py --json multi_gpu.json                             # every visible GPU
    CUDA_VISIBLE_DEVICES=0,1 python benchmarks/multi_device.py --json gpu2.json          # 2 GPUs
    CUDA_VISIBLE_DEVICES=0,1,2,3 python benchmarks/multi_device.py --json gpu4.json      # 4 GPUs
    CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 python benchmarks/multi_device.py --json gpu8.json  # 8 GPUs
    python benchmarks/multi_device.py --cpu-devices 8 --config tiny --sizes 64x48 --max-views 64   # CPU smoke check

For each size (WxH) the view count doubles from --start-views, first on one device (`Engine`), then on all
devices (`ShardedEngine`, for each --methods, mesh data=1 x seq x tensor=--tensor), until a forward runs out of
device memory (an XLA RESOURCE_EXHAUSTED error, the signal of 'too big'; any other error is recorded and ends
that sweep only), takes longer than --max-seconds, or reaches --max-views. Each timing is the median of
--repeats forwards after one warm-up call (compile time reported apart), the whole engine call from host images
to outputs on the devices. Scaling efficiency at a view count both ran: t_1 / (devices * t_n). Random weights
(timing does not depend on them); bf16 uses cuDNN attention on GPU (ring blocks in float16, see
fast3r_jax.inference.sharded). Peak memory: the largest per-device allocator peak (GPU/TPU only), which is the peak
since the process started: run one --sizes / --modes / --methods per process for clean peaks, or to fit a time
limit per command. The JSON file is rewritten after every row, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--sizes", nargs="+", default=["512x384", "224x224"], help="WxH of every view")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--methods", nargs="+", default=["allgather", "ring"], choices=["allgather", "ring"])
    parser.add_argument("--tensor", type=int, default=1, help="tensor-parallel degree of the fusion transformer")
    parser.add_argument("--start-views", type=int, default=8)
    parser.add_argument("--max-views", type=int, default=8192)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop doubling past this time per forward")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seq-chunk", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", default=["single", "sharded"], choices=["single", "sharded"])
    parser.add_argument("--cpu-devices", type=int, default=0, help="run on this many host CPU devices instead")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    return parser.parse_args()


ARGS = _parse()
if ARGS.cpu_devices:  # before jax starts
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                        f"--xla_force_host_platform_device_count={ARGS.cpu_devices}",
                                        "--xla_cpu_enable_concurrency_optimized_scheduler=false"]).strip()

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from fast3r_jax import config as config_lib  # noqa: E402
from fast3r_jax import sharding as sharding_lib  # noqa: E402
from fast3r_jax.inference.engine import Engine  # noqa: E402
from fast3r_jax.inference.sharded import ShardedEngine  # noqa: E402
from fast3r_jax.model.params import init_params  # noqa: E402


def is_oom(error: Exception) -> bool:
    """XLA's out-of-memory errors (at compile or run time)."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def peak_bytes() -> int | None:
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    return max(peaks) if all(p is not None for p in peaks) else None


def forward_seconds(engine: Engine, views: list[dict]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(engine(views))  # outputs are dropped before the next call
    return time.perf_counter() - start


def measure(engine: Engine, views: list[dict], repeats: int) -> dict:
    """One warm-up (compile) call, then the median of `repeats` calls; status 'oom' or 'error' if one fails."""
    try:
        first = forward_seconds(engine, views)
        times = [forward_seconds(engine, views) for _ in range(repeats)]
    except Exception as error:  # noqa: BLE001 - the benchmark goes on with the next configuration
        gc.collect()
        return dict(status="oom" if is_oom(error) else "error", message=str(error).splitlines()[0][:300])
    return dict(status="ok", seconds=statistics.median(times), first_seconds=first, peak_bytes=peak_bytes())


def sweep(make_engine, size: tuple[int, int], label: dict, report) -> None:
    """Doubles the view count until OOM, --max-seconds or --max-views; `report` gets one row per view count."""
    width, height = size
    rng = np.random.default_rng(0)
    pool = [rng.uniform(-1, 1, (1, 3, height, width)).astype(np.float32) for _ in range(8)]
    engine, views = make_engine(), ARGS.start_views
    while views <= ARGS.max_views:
        row = dict(label, size=f"{width}x{height}", views=views,
                   **measure(engine, [dict(img=pool[i % len(pool)]) for i in range(views)], ARGS.repeats))
        report(row)
        if row["status"] != "ok" or row["seconds"] > ARGS.max_seconds:
            break
        views *= 2
    del engine
    gc.collect()
    jax.clear_caches()


def summary(rows: list[dict], devices: int) -> list[dict]:
    """Per size and method: the most views that ran, why the doubling stopped, and scaling against one device."""
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        single = {r["views"]: r["seconds"] for r in rows if r["size"] == size and r["mode"] == "single"
                  and r["status"] == "ok"}
        for mode, method in dict.fromkeys((r["mode"], r.get("method")) for r in rows if r["size"] == size):
            mine = [r for r in rows if r["size"] == size and r["mode"] == mode and r.get("method") == method]
            ok = [r for r in mine if r["status"] == "ok"]
            last = mine[-1]
            stopped_by = last["status"] if last["status"] != "ok" else (
                "max-seconds" if last["seconds"] > ARGS.max_seconds else "max-views")
            entry = dict(size=size, mode=mode, method=method, max_views=max((r["views"] for r in ok), default=0),
                         stopped_by=stopped_by)
            if mode == "sharded":
                entry["efficiency"] = {r["views"]: single[r["views"]] / (devices * r["seconds"])
                                       for r in ok if r["views"] in single}
                entry["speedup"] = {r["views"]: single[r["views"]] / r["seconds"] for r in ok if r["views"] in single}
            out.append(entry)
    return out


def main() -> None:
    cfg = config_lib.large() if ARGS.config == "large" else config_lib.tiny()
    params = jax.tree.map(np.asarray, init_params(cfg, 0))  # on the host; each engine places its own copy
    devices = jax.device_count()
    mesh = sharding_lib.make_inference_mesh(1, -1, ARGS.tensor)
    env = dict(devices=devices, device_kind=jax.devices()[0].device_kind, backend=jax.default_backend(),
               jax=jax.__version__, flax=flax.__version__, python=platform.python_version(), config=ARGS.config,
               dtype=ARGS.dtype, mesh=dict(mesh.shape), args={k: str(v) for k, v in vars(ARGS).items()})
    print(json.dumps(env), flush=True)
    if devices < 2:
        print("only one device: the sharded runs use a mesh of one", flush=True)
    rows: list[dict] = []

    def report(row: dict) -> None:
        print(json.dumps(row), flush=True)
        rows.append(row)
        if ARGS.json:
            ARGS.json.write_text(json.dumps(dict(env=env, rows=rows, summary=summary(rows, devices)), indent=1))

    for size in ARGS.sizes:
        width, height = map(int, size.split("x"))
        if "single" in ARGS.modes:
            sweep(functools.partial(Engine, cfg, params, ARGS.dtype), (width, height), dict(mode="single"), report)
        for method in ARGS.methods if "sharded" in ARGS.modes else ():
            make = functools.partial(ShardedEngine, cfg, params, mesh, ARGS.dtype, seq_attention=method,
                                     seq_chunk=ARGS.seq_chunk)
            sweep(make, (width, height), dict(mode="sharded", method=method), report)
    print(json.dumps(summary(rows, devices), indent=1), flush=True)


if __name__ == "__main__":
    main()
