"""What the training criterion costs, alone and inside the built-in recipe's training step, as views grow.

    python benchmarks/loss_cost.py --buckets 2x96 8x24 64x3 192x1 --size 128x96 --json loss_cost.json
    python benchmarks/loss_cost.py --buckets 2x96 192x1 --step --repeats 10      # on a GPU

For each bucket VxB (V views per sample, B samples: the built-in recipe's buckets by default) and each camera-term
weight (--pose-weights, 0 being upstream's criterion), the gradient of `train.losses.multiview_loss` with respect to
the predictions is compiled alone (no model) and timed: the HLO instructions of the program as traced (the criterion
stacks the views of one image size, so they grow slowly with V), the compile seconds and the median seconds of
--repeats calls after one warm-up, on random targets and predictions (timing does not depend on them).
--step adds the whole training step of configs/train_builtin.py (its model from random weights, its optimizer,
bfloat16 compute) on random landscape views of the same buckets: trace and compile seconds, median step ms over
--repeats steps after one, the state carried from step to step as in training. A step's first compilation in a
process also pays one-off start-up (kernel autotuning), so compare rows from the same position in a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import time

import jax
import numpy as np
from timing import time_calls  # benchmarks/timing.py, beside this script
from torch_reference import random_batch  # the batch that benchmarks/train_step.py times

from fast3r_jax.config import TrainConfig, load_config_file
from fast3r_jax.model.params import init_params
from fast3r_jax.sharding import make_mesh
from fast3r_jax.train import losses
from fast3r_jax.train import step as training
from fast3r_jax.train.optimizer import make_optimizer

BUILTIN = pathlib.Path(__file__).resolve().parents[1] / "configs" / "train_builtin.py"


def random_views(num_views: int, batch: int, height: int, width: int, seed: int = 0) -> tuple[list, list]:
    """Random targets (rigid camera poses, world points) and predictions of `num_views` views."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(num_views):
        pose = np.tile(np.eye(4, dtype=np.float32), (batch, 1, 1))
        pose[:, :3, 3] = rng.normal(size=(batch, 3))
        maps = lambda *shape: rng.normal(size=(batch, height, width, *shape)).astype(np.float32)  # noqa: E731
        gts.append(dict(pts3d=maps(3) + 5, valid_mask=np.ones((batch, height, width), bool), camera_pose=pose))
        preds.append(dict(pts3d_in_other_view=maps(3), conf=1 + np.exp(maps()), pts3d_local=maps(3),
                          conf_local=1 + np.exp(maps())))
    return gts, preds


def measure(num_views: int, batch: int, height: int, width: int, pose_weight: float, repeats: int) -> dict:
    gts, preds = jax.device_put(random_views(num_views, batch, height, width))
    grad = jax.jit(jax.grad(lambda g, p: losses.multiview_loss(g, p, pose_weight=pose_weight)[0], argnums=1))
    lowered = grad.lower(gts, preds)
    instructions = sum(" = " in line for line in lowered.as_text(dialect="hlo").splitlines())
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    _, run_s = time_calls(compiled, gts, preds, repeats=repeats)
    return dict(views=num_views, batch=batch, pose_weight=pose_weight, hlo_instructions=instructions,
                compile_s=compile_s, run_ms=1e3 * run_s)


def measure_step(num_views: int, batch: int, height: int, width: int, pose_weight: float, repeats: int) -> dict:
    """The built-in recipe's training step on random views: trace and compile seconds, median step milliseconds."""
    cfg = load_config_file(BUILTIN, TrainConfig)
    mesh, tx = make_mesh(1, 1), make_optimizer(cfg.optimizer)
    step_fn, shardings = training.make_train_step(cfg.model, tx, mesh, "replicated", dtype=jax.numpy.bfloat16,
                                                  pose_weight=pose_weight)
    state = training.create_state(lambda: init_params(cfg.model, 0), tx, 0, shardings)
    host = random_batch(num_views, height, width, batch)
    views, orient = training.device_batch(host, mesh), training.orientations(host)
    start = time.perf_counter()
    lowered = step_fn.lower(state, views, orient)
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats + 1):  # the first, a warm-up, is not counted
        start = time.perf_counter()
        state, metrics = compiled(state, views)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return dict(step_trace_s=trace_s, step_compile_s=compile_s, step_ms=1e3 * float(np.median(times[1:])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buckets", nargs="+", default=["2x96", "8x24", "64x3", "192x1"], help="VIEWSxSAMPLES")
    parser.add_argument("--size", default="128x96", help="WxH of every view")
    parser.add_argument("--pose-weights", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step", action="store_true", help="also time the built-in recipe's whole training step")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    rows = []
    step_head = " step trace s | step compile s | step ms |" if args.step else ""
    print(f"| views x samples | pose_weight | HLO instructions | compile s | run ms |{step_head}\n"
          f"|---|---|---|---|---|{'---|---|---|' if args.step else ''}")
    for bucket in args.buckets:
        num_views, batch = (int(x) for x in bucket.split("x"))
        for weight in args.pose_weights:
            row = measure(num_views, batch, height, width, weight, args.repeats)
            step = ""
            if args.step:
                row |= measure_step(num_views, batch, height, width, weight, args.repeats)
                step = f" {row['step_trace_s']:.1f} | {row['step_compile_s']:.1f} | {row['step_ms']:.1f} |"
            rows.append(row)
            print(f"| {num_views} x {batch} | {weight:g} | {row['hlo_instructions']:,} | {row['compile_s']:.1f} | "
                  f"{row['run_ms']:.1f} |{step}", flush=True)
    meta = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, python=platform.python_version(),
                date=datetime.date.today().isoformat(), size=args.size)
    print(json.dumps(meta))
    if args.json:
        args.json.write_text(json.dumps(dict(meta, rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
