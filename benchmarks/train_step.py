"""Training-step speed and memory of Fast3R in JAX on one device: images/s, MFU, peak memory, largest view count.

    python benchmarks/train_step.py --config large --views 20 --size 512x384 --remat off on --json out.json
    python benchmarks/train_step.py --config large --views 32 48 64 96 --remat on     # the largest N that trains

One sample of N views per step (upstream trains with one sample per GPU), bf16 compute on float32 master weights,
AdamW as configured for training, random weights and targets (timing does not depend on them). Each timing is the
median over --repeats steps after one warm-up step; compile time is reported separately. FLOPs are the analytic
count of model FLOPs (fast3r_jax.model.flops: forward + 2x backward; recomputation under remat is not counted). Peak memory is the allocator's peak
since the start of the process, so each (remat, N) row that should be read on its own runs in its own process
(--views with several values grows N: each row's peak is the largest so far, the row's own for an increasing
sweep). A view count that does not fit ends its remat setting's sweep with 'out of memory'.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import flax
import jax
import numpy as np
import optax

from fast3r_jax import config as config_lib
from fast3r_jax.model.fast3r import DTYPES
from fast3r_jax.model.flops import peak_flops, train_step_flops
from fast3r_jax.model.params import init_params
from fast3r_jax.sharding import make_mesh
from fast3r_jax.train import step as training
from fast3r_jax.train.optimizer import OptimizerConfig, learning_rate, make_optimizer


def random_batch(num_views: int, height: int, width: int, batch: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """A batch in the loader's format (landscape views) with random images and points."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(num_views):
        pose = np.tile(np.eye(4, dtype=np.float32), (batch, 1, 1))  # (B, 4, 4)
        pose[:, :3, 3] = rng.normal(size=(batch, 3))
        views.append(dict(
            img=rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32),
            true_shape=np.tile(np.asarray([[height, width]], np.int32), (batch, 1)),
            pts3d=rng.normal(size=(batch, height, width, 3)).astype(np.float32),
            valid_mask=np.ones((batch, height, width), bool),
            camera_pose=pose))
    return views


def bench(cfg: config_lib.Fast3RConfig, num_views: int, height: int, width: int, batch: int, dtype: str,
          repeats: int) -> dict:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--views", type=int, nargs="+", default=[20])
    parser.add_argument("--size", default="512x384", help="WxH of every view")
    parser.add_argument("--batch", type=int, default=1, help="samples per step")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--remat", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    width, height = (int(x) for x in args.size.split("x"))
    base = getattr(config_lib, args.config)()
    env = dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(), jax=jax.__version__,
               flax=flax.__version__, optax=optax.__version__, python=platform.python_version(),
               dtype=args.dtype, attention=base.attention)
    print(json.dumps(env), flush=True)
    print(f"{'remat':>5} {'N':>4} {'step s':>8} {'compile s':>9} {'img/s':>7} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'peak GiB':>9}", flush=True)
    rows = []
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
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, rows=rows), indent=1))


if __name__ == "__main__":
    main()
