"""Where the forward's time goes: GPU kernels of one Fast3R forward, grouped and ranked.

    python benchmarks/profile_forward.py --config large --views 32 --size 512x384 --top 30

Runs the whole forward (random weights) under `jax.profiler.trace` with a Perfetto trace, then sums the device
events of the last profiled call by kernel name. Kernel names are XLA fusion or library names (cuDNN attention,
cuBLAS/cutlass GEMMs, convolutions); the table shows total milliseconds, call count and share of the device time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import tempfile

import jax
from inference import whole_forward  # benchmarks/inference.py, beside this script

from fast3r_jax import config as config_lib
from fast3r_jax.model.fast3r import DTYPES
from fast3r_jax.model.params import build_model, init_params
from fast3r_jax.sharding import resolve_attention


def device_kernel_times(trace_dir: pathlib.Path) -> dict[str, tuple[float, int]]:
    """Kernel name -> (total microseconds, count) over the device ('/device:GPU') tracks of a Perfetto trace."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"no Perfetto trace under {trace_dir}")
    trace = json.loads(gzip.open(files[-1]).read())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                and "/device:GPU" in str(e.get("args", {}).get("name", ""))}
    if not gpu_pids:
        raise ValueError(f"{files[-1]} has no GPU device tracks (this tool ranks GPU kernels)")
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in gpu_pids and "dur" in e:
            totals[e["name"]][0] += float(e["dur"])
            totals[e["name"]][1] += 1
    return {k: (v[0], v[1]) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--size", default="512x384", help="WxH")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--trace-dir", type=pathlib.Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    width, height = (int(x) for x in args.size.split("x"))
    cfg = getattr(config_lib, args.config)()
    attention = resolve_attention(cfg.attention, DTYPES[args.dtype])
    forward, state, imgs, *_ = whole_forward(build_model(cfg, init_params(cfg), DTYPES[args.dtype]), args.views,
                                             height, width, attention)
    jax.block_until_ready(forward(state, imgs))  # compile and warm up
    trace_dir = args.trace_dir or pathlib.Path(tempfile.mkdtemp(prefix="fast3r_profile_"))
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        jax.block_until_ready(forward(state, imgs))
    times = device_kernel_times(trace_dir)
    total = sum(t for t, _ in times.values())
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {args.config}, {args.views} views {args.size}, "
          f"{args.dtype}: device time {total / 1e3:.2f} ms over {sum(c for _, c in times.values())} kernels")
    print(f"{'ms':>9} {'calls':>6} {'share':>6}  kernel")
    for name, (us, count) in sorted(times.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{us / 1e3:>9.2f} {count:>6} {us / total:>6.1%}  {name[:110]}")


if __name__ == "__main__":
    main()
