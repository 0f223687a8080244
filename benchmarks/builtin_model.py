"""Exports a finished training run as a pretrained folder and measures it against an untrained model.

    python benchmarks/builtin_model.py RUN_DIR OUT_DIR [--scenes 32] [--views 6] [--resolution 128x96]

Quality on held-out synthetic scenes (split 'test', never seen in training): RRA/RTA@5/15/30 and mAA(30) of the
cameras (Procrustes and PnP solvers) and the scale-free point error of the global pointmap (fast3r_jax.evaluation).
"""

import argparse
import json
import pathlib
import time

import jax

from fast3r_jax import load_pretrained
from fast3r_jax.checkpoint import save_pretrained
from fast3r_jax.data.synthetic import SyntheticScenes
from fast3r_jax.evaluation import evaluate_scenes
from fast3r_jax.params import init_params
from fast3r_jax.trainer import export_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=pathlib.Path)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--resolution", default="128x96")
    args = parser.parse_args()

    exported = export_params(args.run, args.out.with_name(args.out.name + ".fp32"))
    config, params = load_pretrained(exported)
    notes = json.loads((exported / "manifest.json").read_text())["notes"]
    width, height = (int(x) for x in args.resolution.split("x"))
    scenes = SyntheticScenes(args.scenes, args.views, (width, height), split="test")
    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "step": notes["step"],
              "scenes": args.scenes, "views": args.views, "resolution": args.resolution}
    for name, weights in (("trained", params), ("untrained", init_params(config, 0))):
        for solver in ("procrustes", "pnp"):
            start = time.perf_counter()
            report[f"{name}/{solver}"] = evaluate_scenes(config, weights, scenes, pose_solver=solver)
            report[f"{name}/{solver}"]["seconds"] = time.perf_counter() - start
            print(name, solver, json.dumps(report[f"{name}/{solver}"]), flush=True)
    save_pretrained(args.out, config, params, notes=notes | {"quality": report}, storage_dtype="bfloat16")
    (args.out.parent / "builtin_quality.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
