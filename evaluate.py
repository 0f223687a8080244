"""Evaluate a Fast3R checkpoint on scenes with known cameras and geometry.

    python evaluate.py                                  # built-in model, held-out synthetic scenes
    python evaluate.py --checkpoint checkpoints/fast3r_large --views 10 --resolution 512x384 --dtype bfloat16

Prints camera-pose accuracy (RRA/RTA at 5/15/30 degrees, mAA(30)) and the scale-free point error of the global
pointmap, and writes them as JSON, CSV and Markdown to --out.
"""

import argparse
import csv
import json
import pathlib
import sys

from fast3r_jax import load_pretrained
from fast3r_jax.checkpoint import CheckpointError
from fast3r_jax.data.synthetic import SyntheticScenes
from fast3r_jax.evaluation import POSE_SOLVERS, evaluate_scenes

BUILTIN = pathlib.Path(__file__).parent / "fast3r_jax" / "assets" / "builtin"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=pathlib.Path, default=None, help="default: the built-in model")
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic"])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--resolution", default="128x96", help="WxH")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--pose-solver", default="procrustes", choices=POSE_SOLVERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/eval"))
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or BUILTIN
    try:
        width, height = (int(x) for x in args.resolution.split("x"))
        config, params = load_pretrained(checkpoint)
    except (ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.checkpoint is None:
        print(f"using the built-in model ({checkpoint})")
    scenes = SyntheticScenes(args.scenes, args.views, (width, height), seed=args.seed, split="test")
    result = evaluate_scenes(config, params, scenes, dtype=args.dtype, pose_solver=args.pose_solver, seed=args.seed)
    rows = [(k, v) for k, v in result.items()]
    width_k = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width_k}}  value")
    for k, v in rows:
        print(f"{k:<{width_k}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width_k}}  {v}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(result, indent=1))
    with open(args.out / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows([("metric", "value"), *rows])
    (args.out / "metrics.md").write_text("| metric | value |\n|---|---|\n" +
                                         "".join(f"| {k} | {v:.4f} |\n" if isinstance(v, float) else
                                                 f"| {k} | {v} |\n" for k, v in rows))
    print(f"written to {args.out.absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
