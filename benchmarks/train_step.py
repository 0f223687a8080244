"""Training-step speed and memory of Fast3R in JAX on one device, beside upstream PyTorch Fast3R on the same GPU.

    python benchmarks/train_step.py --config large --views 8 20 48 --size 512x384 --remat off on \
        --torch-reference .torchref --max-views --json train_step.json

(a checkout of facebookresearch/fast3r at .torchref; without --torch-reference only our side runs.) Plumbing check on
a CPU: --config tiny --views 2 --size 64x48 --repeats 1 --max-views --max-views-limit 4.

One sample of N views per step (upstream trains with one sample per GPU), random weights and targets (timing does
not depend on them); the batch comes from torch_reference.random_batch, the same for both sides. Ours: bf16 compute
on float32 master weights, AdamW as configured for training, our criterion. Upstream (--torch-reference ROOT, run
first in its own process by benchmarks/torch_reference.py --train-views, so each framework has the device to
itself): its model in train mode with its flash-attention setting (--torch-attention), its training criterion
ConfLossMultiviewV2(Regr3DMultiviewV4(L21, avg_dis), alpha=0.2) on both heads, torch.optim.AdamW as its config
sets it (lr 1e-4, betas (0.9, 0.95), weight decay 0.05), forward and criterion under bf16 autocast; the step is
forward, criterion, backward, optimizer step (torch_reference.train_step). Each timing is the median over --repeats
steps after one warm-up step; our compile time is reported separately. FLOPs are the analytic count of model FLOPs
(fast3r_jax.model.flops: forward + 2x backward; recomputation under remat is not counted). Our peak memory is the
allocator's peak since the start of the process, so each (remat, N) row that should be read on its own runs in its
own process (--views with several values grows N: each row's peak is the largest so far, the row's own for an
increasing sweep); upstream's is torch.cuda.max_memory_allocated per row (weights, gradients and optimizer state
included). A view count that does not fit ends its remat setting's sweep with 'out of memory'.

--max-views then searches the largest view count that trains, on both sides (and per remat setting): from the
largest timed N that trained, doubling until the first out-of-memory, then bisection to --max-views-step, up to
--max-views-limit (torch_reference.largest_fitting). The last table holds, per view count, both step times, the
ratio ours / upstream, images/s and peak memory, and the largest view counts.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import flax
import jax
import numpy as np
import optax

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # a plain checkout: `python benchmarks/train_step.py` from the repo root
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch_reference  # noqa: E402
from torch_reference import ATTENTION, largest_fitting, random_batch  # noqa: E402

from fast3r_jax import config as config_lib  # noqa: E402
from fast3r_jax.config import OptimizerConfig  # noqa: E402
from fast3r_jax.model.fast3r import DTYPES  # noqa: E402
from fast3r_jax.model.flops import peak_flops, train_step_flops  # noqa: E402
from fast3r_jax.model.params import init_params  # noqa: E402
from fast3r_jax.sharding import make_mesh  # noqa: E402
from fast3r_jax.train import step as training  # noqa: E402
from fast3r_jax.train.optimizer import learning_rate, make_optimizer  # noqa: E402


def bench(cfg: config_lib.Fast3RConfig, num_views: int, height: int, width: int, batch: int, dtype: str,
          repeats: int) -> dict:
    """One (config, N) row: compile time, median step time, images/s, TFLOP/s, MFU, peak memory, final loss."""
    mesh = make_mesh(1, 1)
    opt = OptimizerConfig(warmup_steps=10, total_steps=1000)
    tx = make_optimizer(opt)
    step_fn, shardings = training.make_train_step(cfg, tx, mesh, "replicated", dtype=DTYPES[dtype],
                                                  schedule=learning_rate(opt))
    state = training.create_state(lambda: init_params(cfg, 0), tx, 0, shardings)
    host_batch = random_batch(num_views, height, width, batch)
    device_batch = training.device_batch(host_batch, mesh)
    orient = training.orientations(host_batch)
    start = time.perf_counter()
    state, metrics = step_fn(state, device_batch, orient)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step_fn(state, device_batch, orient)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    if not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"non-finite loss {float(metrics['loss'])} at N={num_views}")
    step_s = statistics.median(times)
    flops = train_step_flops(cfg, [(height, width)] * num_views, batch)
    peak = peak_flops(jax.devices()[0].device_kind)
    stats = jax.devices()[0].memory_stats() or {}
    params = sum(x.size for x in jax.tree.leaves(state.params))
    return dict(views=num_views, height=height, width=width, batch=batch, remat=cfg.remat, params=params,
                compile_s=compile_s, step_s=step_s, images_per_s=batch * num_views / step_s,
                tflops_per_s=flops / step_s / 1e12, mfu=flops / step_s / peak if peak else None,
                peak_bytes=stats.get("peak_bytes_in_use"), loss=float(metrics["loss"]))


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


def _gib(value) -> str:
    return f"{value / 2**30:.2f}" if value else "n/a"


def print_side_by_side(rows: list[dict], upstream: dict | None, searches: dict) -> list[dict]:
    """The final table: per (remat, N) both step times, ours / upstream, images/s, peak memory; largest N."""
    theirs = {r["views"]: r for r in (upstream or {}).get("rows", [])}
    print(f"\n{'remat':>5} {'N':>4} {'jax s':>8} {'torch s':>8} {'jax/torch':>9} {'jax img/s':>9} "
          f"{'torch img/s':>11} {'jax GiB':>8} {'torch GiB':>9} {'jax MFU':>7}")
    merged = []
    for row in rows:
        b = theirs.get(row["views"], {})
        ok_a, ok_b = "step_s" in row, "step_s" in b
        m = dict(remat=row["remat"], views=row["views"], jax_s=row.get("step_s"), torch_s=b.get("step_s"),
                 ratio=row["step_s"] / b["step_s"] if ok_a and ok_b else None,
                 jax_images_per_s=row.get("images_per_s"), torch_images_per_s=b.get("images_per_s"),
                 jax_peak_bytes=row.get("peak_bytes"), torch_peak_bytes=b.get("peak_bytes"), jax_mfu=row.get("mfu"),
                 jax_oom=bool(row.get("out_of_memory")), torch_oom=bool(b.get("oom")))
        merged.append(m)
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{'on' if m['remat'] else 'off':>5} {m['views']:>4} "
              f"{'OOM' if m['jax_oom'] else fmt(m['jax_s'], '.4f'):>8} "
              f"{'OOM' if m['torch_oom'] else fmt(m['torch_s'], '.4f'):>8} {fmt(m['ratio'], '.3f'):>9} "
              f"{fmt(m['jax_images_per_s'], '.1f'):>9} {fmt(m['torch_images_per_s'], '.1f'):>11} "
              f"{_gib(m['jax_peak_bytes']):>8} {_gib(m['torch_peak_bytes']):>9} {fmt(m['jax_mfu'], '.3f'):>7}")
    largest = [f"jax remat {k}: {v['largest']}" + (" (limit)" if v["limit_reached"] else "") for k, v in searches.items()]
    if upstream and "max_views" in upstream:
        u = upstream["max_views"]
        largest.append(f"torch: {u['largest']}" + (" (limit)" if u["limit_reached"] else ""))
    if largest:
        print("largest view count that trains: " + ", ".join(largest))
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--views", type=int, nargs="+", default=[8, 20, 48])
    parser.add_argument("--size", default="512x384", help="WxH of every view")
    parser.add_argument("--batch", type=int, default=1, help="samples per step")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--remat", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-reference", type=pathlib.Path, default=None,
                        help="local checkout of facebookresearch/fast3r: time upstream's training step as well")
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter with torch for upstream's run")
    parser.add_argument("--torch-attention", default="flash_attention", choices=ATTENTION,
                        help="upstream attn_implementation (its training config's: flash_attention)")
    parser.add_argument("--max-views", action="store_true", help="search the largest view count that trains")
    parser.add_argument("--max-views-step", type=int, default=4, help="granularity of that search")
    parser.add_argument("--max-views-limit", type=int, default=1024, help="upper end of that search")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    if args.torch_reference and not (args.torch_reference / "fast3r" / "models" / "fast3r.py").is_file():
        parser.error(f"--torch-reference: {args.torch_reference} is not a checkout of facebookresearch/fast3r")

    upstream = run_upstream(args)["train"] if args.torch_reference else None  # first: the device is still free
    width, height = (int(x) for x in args.size.split("x"))
    base = getattr(config_lib, args.config)()
    env = dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(), jax=jax.__version__,
               flax=flax.__version__, optax=optax.__version__, python=platform.python_version(),
               dtype=args.dtype, attention=base.attention)
    print(json.dumps(env), flush=True)
    print(f"{'remat':>5} {'N':>4} {'step s':>8} {'compile s':>9} {'img/s':>7} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'peak GiB':>9}", flush=True)
    rows, searches = [], {}
    for remat in args.remat:
        cfg = base.replace(remat=remat == "on")
        for n in args.views:
            try:
                row = bench(cfg, n, height, width, args.batch, args.dtype, args.repeats)
            except Exception as err:  # out of memory ends this setting's sweep; anything else is re-raised
                if not _out_of_memory(err):
                    raise
                print(f"{remat:>5} {n:>4} out of memory", flush=True)
                rows.append(dict(views=n, remat=remat == "on", out_of_memory=True))
                break
            rows.append(row)
            peak = row["peak_bytes"] / 2**30 if row["peak_bytes"] else float("nan")
            mfu = f"{row['mfu']:.3f}" if row["mfu"] is not None else "n/a"
            print(f"{remat:>5} {n:>4} {row['step_s']:>8.3f} {row['compile_s']:>9.1f} {row['images_per_s']:>7.1f} "
                  f"{row['tflops_per_s']:>8.1f} {mfu:>6} {peak:>9.2f}", flush=True)
        fitted = [r["views"] for r in rows if r["remat"] == (remat == "on") and not r.get("out_of_memory")]
        if args.max_views and fitted:
            searches[remat] = largest_fitting(lambda n, c=cfg: _trains(c, n, height, width, args), max(fitted),
                                              args.max_views_step, args.max_views_limit)
            print(f"{remat:>5} largest view count that trains: {searches[remat]['largest']}", flush=True)
    merged = print_side_by_side(rows, upstream, searches)
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, rows=rows, max_views=searches, upstream=upstream,
                                             side_by_side=merged), indent=1))


def _trains(cfg: config_lib.Fast3RConfig, num_views: int, height: int, width: int, args) -> bool:
    """Whether one training step at `num_views` fits on the device."""
    try:
        bench(cfg, num_views, height, width, args.batch, args.dtype, repeats=1)
    except Exception as err:
        if not _out_of_memory(err):
            raise
        return False
    return True


if __name__ == "__main__":
    main()
