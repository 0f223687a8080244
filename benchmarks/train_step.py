"""Training-step speed and memory of Fast3R in JAX on one device, levers toward a higher MFU, beside upstream PyTorch.

    python benchmarks/train_step.py --config large --views 8 20 48 --size 512x384 --remat none full --levers \
        --max-views --torch-reference .torchref --json train_step.json
    python benchmarks/train_step.py --config large --views 8 20 48 --layers unrolled scanned --remat none full

(a checkout of facebookresearch/fast3r at .torchref; without --torch-reference only our side runs.) Plumbing check on
a CPU: --config tiny --views 2 4 --size 64x48 --repeats 1 --levers --lever-views 2 --max-views
--memory-limit-gib 1.

One sample of N views per step (upstream trains with one sample per GPU), random weights and targets (timing does
not depend on them); the batch comes from torch_reference.random_batch, the same for both sides. Ours: bf16 compute
on float32 master weights, AdamW as configured for training, our criterion; the training state is donated to the
step (its buffers are reused for the new state: the 'donated GiB' the compiled program aliases). Upstream
(--torch-reference ROOT, run first in its own process by benchmarks/torch_reference.py --train-views, so each
framework has the device to itself): its model in train mode with its flash-attention setting (--torch-attention),
its training criterion ConfLossMultiviewV2(Regr3DMultiviewV4(L21, avg_dis), alpha=0.2) on both heads,
torch.optim.AdamW as its config sets it (lr 1e-4, betas (0.9, 0.95), weight decay 0.05), forward and criterion
under bf16 autocast; the step is forward, criterion, backward, optimizer step (torch_reference.train_step).

Programs. Every measured program (each (layers, remat, N) of the sweep, each lever) is traced in turn and compiled
concurrently (--compile-threads), then all are timed one after another, each from the same freshly initialised training
state (so no program times weights that earlier programs' steps moved, or diverged); compile times therefore overlap
and the compile phase's wall time is reported too.
--remat takes 'none' or a policy of what each rematerialised block keeps (config.REMAT_POLICIES): 'full' (nothing:
everything recomputed), 'dots' (every matmul output), 'dots_no_batch' (matmul outputs without batch dimensions: the
projections and MLP layers, not attention scores). Each timing is the median over --repeats steps after one warm-up
step. Memory per program is XLA's own account of the compiled program (arguments + outputs + temporaries - donated
buffers: 'GiB'); the process peak since start (allocator) is reported once. A program that does not fit (when
compiled or when run) is recorded as out of memory and the state is re-created. FLOPs are the analytic count of model
FLOPs (fast3r_jax.model.flops: forward + 2x backward; recomputation under remat is not counted); MFU against the
device's datasheet bf16 peak.

--layers sweeps the layer stacks as one lax.scan ('scanned') and unrolled (Fast3RConfig.scan_layers=False); the
levers and --max-views use the first given. --levers adds, at --lever-views N (20), the options toward a higher MFU
next to the sweep's rows at that N, all of them or the kinds named: 'remat' (each remat policy not in the sweep),
'batch' (--lever-batch samples per step, 2, without remat), 'layers' (the no-remat program unrolled, when the sweep
has no unrolled rows) and 'xla' (the no-remat program compiled with each set of --xla-options, default the
latency-hiding scheduler; per program, through `Lowered.compile(compiler_options=...)`, so no second process is
needed; an option this XLA does not know is refused before anything large is compiled). For example
`--layers unrolled --remat none --views 20 --levers xla --xla-options xla_gpu_enable_latency_hiding_scheduler=true
--xla-options xla_gpu_enable_cublaslt=true` times the unrolled step plain and with each option.

--max-views predicts the largest view count that trains with --max-views-remat (full) from the two largest sweep rows
of that setting (program memory is linear in N) and the allocator's limit (95% of the device unless
XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise; --memory-limit-gib overrides it), rounded down to --max-views-step,
then checks it with up to --max-views-tries programs (the prediction and the next step up, compiled concurrently; 0:
the prediction only, to be checked by a later run with --views P P+step): 'verified' when the prediction trains and
the next step does not. Upstream's side searches by running (doubling then bisection,
torch_reference.largest_fitting, up to --max-views-limit).

--profile DIR traces one more step of every timed program (after its timing, so the timing is not disturbed) into
DIR/<program> and prints where its GPU time goes: per kind of kernel (attention forward and backward, matmuls,
convolutions, fusions) and per kernel, as benchmarks/profile_forward.py does for a forward; the per-kind
milliseconds are in the JSON rows ('kernels').

Tables (Markdown, ready for the README): the sweep, the levers, the largest view count, and per (remat, N) both
step times, the ratio ours / upstream, images/s and memory.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time
from typing import Any

import flax
import jax
import numpy as np
import optax

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # a plain checkout: `python benchmarks/train_step.py` from the repo root
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch_reference  # noqa: E402
from profile_forward import by_kind, device_kernel_times, kernel_tables  # noqa: E402
from torch_reference import ATTENTION, random_batch  # noqa: E402

from fast3r_jax import compilation_cache  # noqa: E402
from fast3r_jax import config as config_lib  # noqa: E402
from fast3r_jax.config import REMAT_POLICIES, OptimizerConfig  # noqa: E402
from fast3r_jax.model.fast3r import DTYPES  # noqa: E402
from fast3r_jax.model.flops import peak_flops, train_step_flops  # noqa: E402
from fast3r_jax.model.params import init_params  # noqa: E402
from fast3r_jax.sharding import make_mesh  # noqa: E402
from fast3r_jax.train import step as training  # noqa: E402
from fast3r_jax.train.optimizer import learning_rate, make_optimizer  # noqa: E402

REMAT_CHOICES = ("none", *REMAT_POLICIES)
LAYERS = ("scanned", "unrolled")  # Fast3RConfig.scan_layers True / False
GIB = 2**30
LEVERS = ("remat", "batch", "layers", "xla")  # --levers kinds


@dataclasses.dataclass(frozen=True)
class Program:
    """One measured training step: N views, remat setting, samples per step, extra XLA options, the table it is in."""

    views: int
    remat: str  # 'none' or a REMAT_POLICIES name
    batch: int
    xla_options: tuple[tuple[str, bool | int | float | str], ...] = ()
    group: str = "sweep"  # sweep | lever | max_views
    scan_layers: bool = True  # False: the layer stacks unrolled (Fast3RConfig.scan_layers)

    @property
    def label(self) -> str:
        parts = [f"remat {self.remat}" + ("" if self.scan_layers else ", layers unrolled"), f"batch {self.batch}"]
        parts += [f"{k}={v}" for k, v in self.xla_options]
        return ", ".join(parts)


class Bench:
    """Compiles programs concurrently and times them one after another, each from a fresh training state."""

    def __init__(self, base: config_lib.Fast3RConfig, height: int, width: int, dtype: str, threads: int,
                 profile_dir: pathlib.Path | None = None):
        self.base, self.height, self.width, self.dtype = base, height, width, dtype
        self.profile_dir = profile_dir
        self.mesh = make_mesh(1, 1)
        opt = OptimizerConfig(warmup_steps=10, total_steps=1000)
        self.tx, self.schedule = make_optimizer(opt), learning_rate(opt)
        self.shardings = training.make_train_step(base, self.tx, self.mesh, "replicated", dtype=DTYPES[dtype],
                                                  schedule=self.schedule)[1]
        # the initial state, kept on the host: placing it again per program takes seconds, initialising it a minute
        self.initial = jax.device_get(training.create_state(lambda: init_params(base, 0), self.tx, 0, self.shardings))
        self.state = self.fresh_state()
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)
        self.compile_wall_start: float | None = None

    def fresh_state(self) -> training.TrainState:
        """The initial weights (seed 0) and optimizer state, placed as the programs expect."""
        return jax.device_put(self.initial, self.shardings)

    def model_config(self, program: Program) -> config_lib.Fast3RConfig:
        remat = program.remat
        return self.base.replace(remat=remat != "none", remat_policy="full" if remat == "none" else remat,
                                 scan_layers=program.scan_layers)

    def submit(self, program: Program) -> concurrent.futures.Future:
        """Traces the program here and compiles it on the pool; the future gives (compiled, batch, compile s)."""
        step_fn, _ = training.make_train_step(self.model_config(program), self.tx, self.mesh, "replicated",
                                              dtype=DTYPES[self.dtype], schedule=self.schedule)
        host_batch = random_batch(program.views, self.height, self.width, program.batch)
        device_batch = training.device_batch(host_batch, self.mesh)
        lowered = step_fn.lower(self.state, device_batch, training.orientations(host_batch))
        options = dict(program.xla_options) or None
        if self.compile_wall_start is None:
            self.compile_wall_start = time.perf_counter()

        def compile_it():
            start = time.perf_counter()
            compiled = lowered.compile(compiler_options=options)
            return compiled, device_batch, time.perf_counter() - start

        return self.pool.submit(compile_it)

    def run(self, program: Program, compiled, device_batch, compile_s: float, repeats: int) -> dict[str, Any]:
        """Warm-up plus `repeats` timed steps of a compiled program: the row (or an out-of-memory row)."""
        cfg = self.model_config(program)
        row: dict[str, Any] = dict(dataclasses.asdict(program), label=program.label, compile_s=compile_s,
                                   **_program_memory(compiled))
        times = []
        try:
            for k in range(repeats + 1):
                start = time.perf_counter()
                self.state, metrics = compiled(self.state, device_batch)
                jax.block_until_ready(metrics)
                if k:
                    times.append(time.perf_counter() - start)
        except Exception as err:  # out of memory is a result; anything else is re-raised
            if not _out_of_memory(err):
                raise
            self.state = self.fresh_state()  # the donated state may be gone
            return dict(row, out_of_memory=True, error=str(err).splitlines()[0][:200])
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} for {program}")
        if self.profile_dir is not None and repeats:
            row["kernels"] = self.profile(program, compiled, device_batch)
        step_s = statistics.median(times) if times else None
        flops = train_step_flops(cfg, [(self.height, self.width)] * program.views, program.batch)
        peak = peak_flops(jax.devices()[0].device_kind)
        return dict(row, out_of_memory=False, step_s=step_s, loss=loss,
                    images_per_s=program.batch * program.views / step_s if step_s else None,
                    tflops_per_s=flops / step_s / 1e12 if step_s else None,
                    mfu=flops / step_s / peak if step_s and peak else None)

    def profile(self, program: Program, compiled, device_batch) -> dict[str, float]:
        """One more step under the profiler: prints its kernel tables, returns milliseconds per kind of kernel."""
        name = re.sub(r"[^\w.-]+", "_", f"{program.group} {program.views} views {program.label}")
        trace_dir = self.profile_dir / name
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            self.state, metrics = compiled(self.state, device_batch)
            jax.block_until_ready(metrics)
        times = device_kernel_times(trace_dir)
        print(f"{program.views} views, {program.label}: {sum(t for t, _ in times.values()) / 1e3:.1f} ms of GPU "
              f"kernels (trace in {trace_dir})\n{kernel_tables(times, 25)}", flush=True)
        return {kind: us / 1e3 for kind, (us, _) in by_kind(times).items()}


def _program_memory(compiled) -> dict[str, int | None]:
    """XLA's account of a compiled program: bytes it needs while running (arguments + outputs + temporaries - the
    donated buffers it reuses) and the donated bytes; None where the backend does not say."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        m = None
    if m is None:
        return {"program_bytes": None, "donated_bytes": None}
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"program_bytes": int(total), "donated_bytes": int(m.alias_size_in_bytes)}


def _out_of_memory(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_upstream(args) -> dict:
    """benchmarks/torch_reference.py --train-views in its own process (before JAX uses the device); its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "torch.json"
        cmd = [args.torch_python, str(HERE / "torch_reference.py"), "--root", str(args.torch_reference),
               "--config", args.config, "--size", args.size, "--dtype", args.dtype, "--attention",
               args.torch_attention, "--repeats", str(args.repeats), "--batch", str(args.batch), "--json", str(out),
               "--views", "--train-views", *[str(n) for n in args.views]]
        if args.max_views:
            cmd += ["--max-views", "--max-views-step", str(args.max_views_step), "--max-views-limit",
                    str(args.max_views_limit)]
        return torch_reference.run_child(cmd, out)


def measure(bench: Bench, programs: list[Program], repeats: int) -> list[dict[str, Any]]:
    """Compiles every program concurrently, then times them one after another (printing each row)."""
    futures = [bench.submit(p) for p in programs]
    compiled = []
    for future in futures:  # timing starts once nothing compiles any more
        try:
            compiled.append(future.result())
        except Exception as err:  # a program too large to compile is out of memory; anything else is re-raised
            if not _out_of_memory(err):
                raise
            compiled.append(err)
    print(f"compiled {len(programs)} programs in {time.perf_counter() - bench.compile_wall_start:.1f} s "
          "(concurrently)", flush=True)
    bench.compile_wall_start = None
    rows = []
    for program, result in zip(programs, compiled, strict=True):
        if isinstance(result, Exception):
            row = dict(dataclasses.asdict(program), label=program.label, compile_s=None, program_bytes=None,
                       donated_bytes=None, out_of_memory=True, error=str(result).splitlines()[0][:200])
        else:
            bench.state = bench.fresh_state()  # every program from the same weights: timings independent of order
            row = bench.run(program, *result, repeats)
        rows.append(row)
        if row["out_of_memory"]:
            result = "out of memory"
        elif row["step_s"] is None:
            result = "trains"
        else:
            result = (f"{row['step_s']:.4f} s  {row['images_per_s']:.1f} img/s  MFU {_fmt(row['mfu'], '.3f')}  "
                      f"{_gib(row['program_bytes'])} GiB  compile {row['compile_s']:.0f} s")
        print(f"{program.group:>9} {program.views:>4}  {program.label:<40} {result}", flush=True)
    return rows


def max_views(bench: Bench, rows: list[dict], args, limit_bytes: int | None) -> dict[str, Any]:
    """The largest view count that trains with --max-views-remat: predicted from memory, checked by running."""
    scan = args.layers[0] == "scanned"
    fits = sorted((r for r in rows if r["group"] == "sweep" and r["remat"] == args.max_views_remat
                   and r["scan_layers"] == scan and not r["out_of_memory"] and r["program_bytes"]),
                  key=lambda r: r["views"])
    if len(fits) < 2 or limit_bytes is None:
        return {"predicted": None, "reason": "needs two sweep rows with program memory and a device memory limit"}
    (n0, b0), (n1, b1) = ((r["views"], r["program_bytes"]) for r in fits[-2:])
    per_view = (b1 - b0) / (n1 - n0)
    if per_view <= 0:
        return {"predicted": None, "reason": f"program memory does not grow with N ({b0} -> {b1} bytes)"}
    step = args.max_views_step
    predicted = min(int((n1 + (limit_bytes - b1) / per_view) // step * step), args.max_views_limit)
    result: dict[str, Any] = {"remat": args.max_views_remat, "layers": args.layers[0], "predicted": predicted,
                              "bytes_per_view": per_view, "limit_bytes": limit_bytes, "largest": n1, "verified": False,
                              "tried": {}}
    if predicted <= n1 or not args.max_views_tries:
        return result
    probes = [predicted + k * step for k in range(args.max_views_tries)]
    programs = [Program(n, args.max_views_remat, args.batch, group="max_views", scan_layers=scan) for n in probes]
    for row in measure(bench, programs, repeats=0):
        result["tried"][row["views"]] = not row["out_of_memory"]
        if row["out_of_memory"]:
            break
        result["largest"] = row["views"]
    tried = result["tried"]
    result["verified"] = tried.get(predicted, False) and tried.get(predicted + step) is False
    return result


def _option_value(text: str) -> bool | int | float | str:
    """An XLA option's value from its command-line text (XLA checks the type: 'true' must be a bool)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _gib(value) -> str:
    return f"{value / GIB:.1f}" if value else "n/a"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _remat(row: dict) -> str:
    """The remat column: the policy, and whether the layer stacks were unrolled."""
    return row["remat"] + ("" if row.get("scan_layers", True) else ", layers unrolled")


def markdown(rows: list[dict], upstream: dict | None, search: dict | None, env: dict, args) -> str:
    """README-ready tables."""
    lines = [f"{env['device']}, jax {env['jax']}, {args.config} config, {args.size}, {args.dtype}", "",
             "| views | remat | batch | XLA options | step s | images/s | TFLOP/s | MFU | GiB | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["group"] == "max_views":
            continue
        options = " ".join(f"{k}={v}" for k, v in r["xla_options"]) or "-"
        if r["out_of_memory"]:
            lines.append(f"| {r['views']} | {_remat(r)} | {r['batch']} | {options} | out of memory | | | | "
                         f"{_gib(r['program_bytes'])} | {_fmt(r['compile_s'], '.0f')} |")
            continue
        lines.append(f"| {r['views']} | {_remat(r)} | {r['batch']} | {options} | {r['step_s']:.3f} | "
                     f"{r['images_per_s']:.1f} | {r['tflops_per_s']:.1f} | {_fmt(r['mfu'], '.3f')} | "
                     f"{_gib(r['program_bytes'])} | {r['compile_s']:.0f} |")
    if search and search.get("predicted") is None:
        lines += ["", f"Largest view count: not predicted ({search['reason']})"]
    elif search:
        status = "verified" if search["verified"] else f"tried {search['tried']}"
        lines += ["", (f"Largest view count that trains (remat {search['remat']}, layers {search['layers']}): "
                       f"{search['largest']} "
                       f"(predicted {search['predicted']} from {search['bytes_per_view'] / GIB:.2f} GiB per view "
                       f"and a {search['limit_bytes'] / GIB:.1f} GiB limit; {status})")]
    if upstream:
        theirs = {r["views"]: r for r in upstream.get("rows", [])}
        lines += ["", ("| views | remat | ours s | upstream s | ours / upstream | ours images/s | "
                       "upstream images/s | ours GiB | upstream GiB |"), "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            b = theirs.get(r["views"])
            if r["group"] != "sweep" or b is None:
                continue
            ours = None if r["out_of_memory"] else r["step_s"]
            ratio = ours / b["step_s"] if ours and b.get("step_s") else None
            lines.append(f"| {r['views']} | {_remat(r)} | {_fmt(ours, '.3f') if ours else 'OOM'} | "
                         f"{'OOM' if b.get('oom') else _fmt(b.get('step_s'), '.3f')} | {_fmt(ratio, '.2f')} | "
                         f"{_fmt(r.get('images_per_s'), '.1f')} | {_fmt(b.get('images_per_s'), '.1f')} | "
                         f"{_gib(r['program_bytes'])} | {_gib(b.get('peak_bytes'))} |")
        if "max_views" in upstream:
            u = upstream["max_views"]
            lines.append(f"\nUpstream's largest view count that trains: {u['largest']}"
                         + (" (the search limit)" if u["limit_reached"] else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--views", type=int, nargs="+", default=[8, 20, 48])
    parser.add_argument("--size", default="512x384", help="WxH of every view")
    parser.add_argument("--batch", type=int, default=1, help="samples per step")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--remat", nargs="+", default=["none", "full"], choices=REMAT_CHOICES)
    parser.add_argument("--layers", nargs="+", default=["scanned"], choices=LAYERS,
                        help="layer stacks as one lax.scan, or unrolled (Fast3RConfig.scan_layers), in the sweep; "
                             "the levers and --max-views use the first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levers", nargs="*", default=None, choices=LEVERS, metavar="KIND",
                        help=f"also time the MFU levers at --lever-views: all, or those named ({', '.join(LEVERS)})")
    parser.add_argument("--lever-views", type=int, default=20)
    parser.add_argument("--lever-batch", type=int, default=2, help="samples per step of the batch lever")
    parser.add_argument("--xla-options", nargs="+", action="append", default=None, metavar="KEY=VALUE",
                        help="XLA options of one program of the xla lever; repeat for more programs "
                             "(default: the latency-hiding scheduler)")
    parser.add_argument("--max-views", action="store_true", help="find the largest view count that trains")
    parser.add_argument("--max-views-remat", default="full", choices=REMAT_CHOICES)
    parser.add_argument("--max-views-step", type=int, default=4, help="granularity of that search")
    parser.add_argument("--max-views-tries", type=int, default=2,
                        help="programs run to check the prediction (0: the prediction only)")
    parser.add_argument("--max-views-limit", type=int, default=1024, help="upper end of that search")
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="device memory for the prediction (default: the allocator's limit)")
    parser.add_argument("--compile-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compilation-cache", default="off",
                        help="persistent XLA cache folder ('off': compile times are cold)")
    parser.add_argument("--torch-reference", type=pathlib.Path, default=None,
                        help="local checkout of facebookresearch/fast3r: time upstream's training step as well")
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter with torch for upstream's run")
    parser.add_argument("--torch-attention", default="flash_attention", choices=ATTENTION,
                        help="upstream attn_implementation (its training config's: flash_attention)")
    parser.add_argument("--profile", type=pathlib.Path, default=None, metavar="DIR",
                        help="trace one more step of each timed program into DIR and print its kernel tables (GPU)")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--markdown", type=pathlib.Path, default=None)
    args = parser.parse_args()
    if args.torch_reference and not (args.torch_reference / "fast3r" / "models" / "fast3r.py").is_file():
        parser.error(f"--torch-reference: {args.torch_reference} is not a checkout of facebookresearch/fast3r")
    levers = list(LEVERS) if args.levers == [] else args.levers or []  # --levers alone: every kind
    option_sets = args.xla_options or [["xla_gpu_enable_latency_hiding_scheduler=true"]]
    if any("=" not in o for options in option_sets for o in options):
        parser.error("--xla-options: expected KEY=VALUE")
    option_sets = [tuple((k, _option_value(v)) for k, v in (o.split("=", 1) for o in options))
                   for options in option_sets]
    if args.max_views_tries < 0:
        parser.error("--max-views-tries must be >= 0")

    start = time.perf_counter()
    upstream = run_upstream(args)["train"] if args.torch_reference else None  # first: the device is still free
    # read when the backend starts (below): JAX's allocator may use 95% of the device, not its default 75%
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    compilation_cache.enable(args.compilation_cache)
    width, height = (int(x) for x in args.size.split("x"))
    base = getattr(config_lib, args.config)()
    device = jax.devices()[0]
    if args.profile and device.platform != "gpu":
        parser.error(f"--profile ranks GPU kernels; the default device here is {device.platform}")
    env = {"device": device.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
           "flax": flax.__version__, "optax": optax.__version__, "python": platform.python_version(),
           "dtype": args.dtype, "attention": base.attention, "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "mem_fraction": os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"]}
    print(json.dumps(env), flush=True)
    if "xla" in levers:
        for options in option_sets:  # an unknown option fails here, not after minutes of compiling the others
            try:
                jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=dict(options))
            except jax.errors.JaxRuntimeError as err:
                parser.error(f"--xla-options {' '.join(f'{k}={v}' for k, v in options)}: {str(err).splitlines()[0]}")

    bench = Bench(base, height, width, args.dtype, args.compile_threads, args.profile)
    scan = args.layers[0] == "scanned"  # of the levers and the largest-view search
    programs = [Program(n, remat, args.batch, scan_layers=layers == "scanned")
                for layers in args.layers for remat in args.remat for n in args.views]
    n = args.lever_views
    if "remat" in levers:
        programs += [Program(n, remat, args.batch, group="lever", scan_layers=scan) for remat in REMAT_CHOICES
                     if remat not in args.remat or n not in args.views]
    if "batch" in levers:
        programs += [Program(n, "none", args.lever_batch, group="lever", scan_layers=scan)]
    if "layers" in levers and "unrolled" not in args.layers:
        programs += [Program(n, "none", args.batch, group="lever", scan_layers=False)]
    if "xla" in levers:
        programs += [Program(n, "none", args.batch, options, group="lever", scan_layers=scan)
                     for options in option_sets]
    rows = measure(bench, programs, args.repeats)
    stats = device.memory_stats() or {}
    limit = int(args.memory_limit_gib * GIB) if args.memory_limit_gib else stats.get("bytes_limit")
    search = max_views(bench, rows, args, limit) if args.max_views else None
    stats = device.memory_stats() or {}
    env["process_peak_bytes"] = stats.get("peak_bytes_in_use")
    env["seconds"] = time.perf_counter() - start
    table = markdown(rows, upstream, search, env, args)
    print("\n" + table + f"\n\nprocess peak {_gib(env['process_peak_bytes'])} GiB; {env['seconds']:.0f} s in all",
          flush=True)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        result = {"env": env, "rows": rows, "max_views": search, "upstream": upstream}
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
