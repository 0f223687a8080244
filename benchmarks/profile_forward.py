"""Where the forward's time goes: GPU kernels of one Fast3R forward, grouped and ranked.

    python benchmarks/profile_forward.py --config large --views 32 --size 512x384 --top 30

Runs the whole forward (random weights) under `jax.profiler.trace` with a Perfetto trace, then sums the device
events of the last profiled call by kernel name. Kernel names are XLA fusion or library names (cuDNN attention,
cuBLAS/cutlass GEMMs, convolutions); the tables show total milliseconds, call count and share of the device time,
first per kind of kernel (`kernel_kind`), then per kernel. benchmarks/train_step.py --profile uses the same tables
for a training step.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile

import jax

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # a plain checkout: `python benchmarks/profile_forward.py` from the repo root
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from inference import whole_forward  # noqa: E402  (benchmarks/inference.py, beside this script)

from fast3r_jax import config as config_lib  # noqa: E402
from fast3r_jax.model.fast3r import DTYPES  # noqa: E402
from fast3r_jax.model.params import build_model, init_params  # noqa: E402
from fast3r_jax.sharding import resolve_attention  # noqa: E402


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


# (kind, pattern) in order: the first pattern found in a kernel's name (lower case) decides its kind
KERNEL_KINDS = (
    ("attention backward", r"(sdpa|flash|fmha).*(bprop|bwd|backward)|(bprop|bwd|backward).*(sdpa|flash|fmha)"),
    ("attention forward", r"sdpa|flash|fmha"),
    ("convolution", r"conv|implicit_gemm|fprop|dgrad|wgrad"),
    ("matmul", r"gemm|nvjet|cutlass|cublas|xmma|dot"),
    ("copy / transpose", r"copy|transpose|memcpy"),
    ("reduction fusion", r"reduce|reduction|input_"),
)


def kernel_kind(name: str) -> str:
    """The kind of a GPU kernel from its name (attention forward / backward, convolution, matmul, copy / transpose,
    reduction fusion), else 'elementwise / other' (XLA's loop fusions and the rest)."""
    lower = name.lower()
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, lower)), "elementwise / other")


def by_kind(times: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
    """Kernel name -> (microseconds, count) summed per `kernel_kind`."""
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for name, (us, count) in times.items():
        total = totals[kernel_kind(name)]
        total[0] += us
        total[1] += count
    return {k: (v[0], v[1]) for k, v in totals.items()}


def kernel_tables(times: dict[str, tuple[float, int]], top: int) -> str:
    """Per kind, then the `top` kernels: milliseconds, calls and share of the device time, largest first."""
    total = sum(t for t, _ in times.values()) or 1.0
    lines = []
    for title, rows, width in (("kind", by_kind(times), 24), ("kernel", times, 110)):
        lines.append(f"{'ms':>9} {'calls':>6} {'share':>6}  {title}")
        for name, (us, count) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"{us / 1e3:>9.2f} {count:>6} {us / total:>6.1%}  {name[:width]}")
    return "\n".join(lines)


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
    print(kernel_tables(times, args.top))


if __name__ == "__main__":
    main()
