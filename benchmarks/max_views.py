"""How many views one device holds in one forward: XLA's memory plan of the engine's fusion step, compiled only.

    python benchmarks/max_views.py --config large --size 512x384 --views 1000 2000 3000 4000

A forward over thousands of 512x384 views takes minutes (attention grows with the square of the view count), so
this measures fit without running it: for each N it compiles `Engine`'s fusion transformer call (the step that sees
every view's tokens at once; encoder and heads run in fixed chunks) for N views of one shape with abstract inputs,
and reports XLA's buffer assignment: argument, output and temporary bytes. The parameters (one copy, in the compute
dtype) are arguments; the encoder tokens of all views are arguments; the four hook arrays of all views are outputs.
A view count fits when that total is below the device's memory (`bytes_limit` of the allocator, printed).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax

from fast3r_jax import config as config_lib
from fast3r_jax.inference import engine as inference
from fast3r_jax.model.fast3r import DTYPES
from fast3r_jax.model.params import init_params


def fusion_memory(engine: inference.Engine, num_views: int, height: int, width: int) -> dict:
    """Compiles the fusion step for `num_views` landscape views of (height, width) and returns its memory plan."""
    tokens = (height // engine.config.encoder.patch_size) * (width // engine.config.encoder.patch_size)
    start = time.perf_counter()
    compiled = engine.lower_fusion(num_views, height, width).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    row = dict(views=num_views, tokens=num_views * tokens, compile_s=seconds,
               argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
               temp_bytes=mem.temp_size_in_bytes, alias_bytes=mem.alias_size_in_bytes)
    row["total_bytes"] = row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"] - row["alias_bytes"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--size", default="512x384", help="WxH of every view")
    parser.add_argument("--views", type=int, nargs="+", default=[1000, 2000, 3000, 4000])
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    width, height = (int(x) for x in args.size.split("x"))
    cfg = getattr(config_lib, args.config)()
    engine = inference.Engine(cfg, init_params(cfg), args.dtype)
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    env = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, config=args.config, size=args.size,
               dtype=args.dtype, attention=engine.attention.kernel, bytes_limit=limit)
    print(json.dumps(env), flush=True)
    print(f"{'N':>6} {'tokens':>9} {'args GiB':>9} {'out GiB':>8} {'temp GiB':>9} {'total GiB':>10} {'fits':>5} "
          f"{'compile s':>9}", flush=True)
    rows = []
    for n in args.views:
        row = fusion_memory(engine, n, height, width)
        row["fits"] = None if limit is None else bool(row["total_bytes"] < limit)
        rows.append(row)
        gib = {k: row[k] / 2**30 for k in ("argument_bytes", "output_bytes", "temp_bytes", "total_bytes")}
        print(f"{n:>6} {row['tokens']:>9} {gib['argument_bytes']:>9.2f} {gib['output_bytes']:>8.2f} "
              f"{gib['temp_bytes']:>9.2f} {gib['total_bytes']:>10.2f} {str(row['fits']):>5} "
              f"{row['compile_s']:>9.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, rows=rows), indent=1))


if __name__ == "__main__":
    main()
