"""Inference speed and memory of Fast3R in JAX: whole forward and the encoder / fusion / heads split.

    python benchmarks/inference.py --config large --views 2 8 32 --size 512x384 --dtype bfloat16 --json out.json

Random weights (timing does not depend on them). Each timing is the median over --repeats runs after one warm-up
call, with block_until_ready; compile time is reported separately. FLOPs come from the analytic count
(fast3r_jax.flops: XLA's cost analysis counts a scanned layer once and cannot see into cuDNN attention); peak
memory from the device's allocator statistics (GPU/TPU).
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
import jax.numpy as jnp
from flax import nnx

from fast3r_jax import config as config_lib
from fast3r_jax.attention import resolve_implementation
from fast3r_jax.flops import forward_flops
from fast3r_jax.model import View
from fast3r_jax.params import build_model, init_params
from fast3r_jax.predict import DTYPES


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile + first run seconds, median seconds of the following runs)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench(model, num_views: int, height: int, width: int, repeats: int) -> dict:
    graphdef, state = nnx.split(model)
    attention = resolve_implementation(model.cfg.attention, model.dtype)
    imgs = jax.random.uniform(jax.random.key(0), (num_views, 3, height, width), model.dtype, -1, 1)
    true_shape = jnp.tile(jnp.asarray([[height, width]], jnp.int32), (num_views, 1))
    ids = jnp.arange(num_views, dtype=jnp.int32)[None]

    @jax.jit
    def forward(state, imgs):
        views = [View(imgs[i:i + 1], true_shape[i:i + 1]) for i in range(num_views)]
        return nnx.merge(graphdef, state)(views, ids)

    @jax.jit
    def encode(state, imgs):
        return nnx.merge(graphdef, state).encoder(imgs, true_shape, "landscape", attention=attention)[0]

    @jax.jit
    def fuse(state, tokens):
        m = nnx.merge(graphdef, state)
        n = tokens.shape[1]
        return m.fusion(tokens.reshape(1, -1, tokens.shape[-1]), (n,) * num_views, ids, hooks=m.cfg.hooks,
                        train_attention_scale=False, attention=attention)

    @jax.jit
    def heads(state, hooks):
        m = nnx.merge(graphdef, state)
        per_view = [h.reshape(num_views, -1, h.shape[-1]) for h in hooks]
        grid = (height // m.cfg.encoder.patch_size, width // m.cfg.encoder.patch_size)
        return m.global_head(per_view, grid), m.local_head(per_view, grid)

    row = dict(views=num_views, height=height, width=width)
    row["compile_s"], row["forward_s"] = _time(forward, state, imgs, repeats=repeats)
    row["peak_bytes"] = _peak_bytes()
    row["flops"] = forward_flops(model.cfg, [(height, width)] * num_views)
    tokens = encode(state, imgs)
    hooks = fuse(state, tokens)
    row["encoder_s"] = _time(encode, state, imgs, repeats=repeats)[1]
    row["fusion_s"] = _time(fuse, state, tokens, repeats=repeats)[1]
    row["heads_s"] = _time(heads, state, hooks, repeats=repeats)[1]
    row["tflops_per_s"] = row["flops"] / row["forward_s"] / 1e12
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--size", default="512x384", help="WxH of every view")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--attention", default="auto", choices=list(config_lib.ATTENTION_IMPLEMENTATIONS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    width, height = (int(x) for x in args.size.split("x"))
    cfg = getattr(config_lib, args.config)().replace(attention=args.attention)
    model = build_model(cfg, init_params(cfg), DTYPES[args.dtype])
    env = dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(), jax=jax.__version__,
               flax=flax.__version__, python=platform.python_version(), dtype=args.dtype,
               attention=resolve_implementation(cfg.attention, DTYPES[args.dtype]))
    print(json.dumps(env), flush=True)
    rows = []
    print(f"{'N':>5} {'forward s':>10} {'compile s':>10} {'enc s':>8} {'fusion s':>9} {'heads s':>8} "
          f"{'TFLOP/s':>8} {'peak GiB':>9}", flush=True)
    for n in args.views:
        try:
            row = bench(model, n, height, width, args.repeats)
        except Exception as err:  # out of memory ends the sweep; anything else is re-raised
            if "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower():
                print(f"{n:>5} out of memory")
                break
            raise
        rows.append(row)
        peak = row["peak_bytes"] / 2**30 if row["peak_bytes"] else float("nan")
        print(f"{n:>5} {row['forward_s']:>10.4f} {row['compile_s']:>10.2f} {row['encoder_s']:>8.4f} "
              f"{row['fusion_s']:>9.4f} {row['heads_s']:>8.4f} {row['tflops_per_s']:>8.1f} "
              f"{peak:>9.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, rows=rows), indent=1))


if __name__ == "__main__":
    main()
