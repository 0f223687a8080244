"""Quality of a small synthetic-trained model against an untrained one, on held-out synthetic scenes.

    python benchmarks/builtin_model.py --checkpoint fast3r_jax/assets/builtin --json builtin_quality.json
    python benchmarks/builtin_model.py --run RUN_DIR --out OUT_DIR      # export a training run first (bf16 storage)
    python benchmarks/builtin_model.py --checkpoint RUN_DIR_export.fp32 --out OUT_DIR   # the same from its export

Held-out scenes (split 'test', never seen in training), `--scenes` x `--views` at `--resolution`: RRA/RTA@5/15/30
and mAA(30) of the cameras (Procrustes and PnP solvers), the median rotation error over all pairs, and the
reconstruction scores of the global pointmap (accuracy / completion after a similarity alignment, in units of the
scene; fast3r_jax.evaluation.protocols), for the model and for the same architecture with random weights.
"""

import argparse
import json
import pathlib
import time

import jax

from fast3r_jax import load_pretrained
from fast3r_jax.checkpoint import save_pretrained
from fast3r_jax.data.synthetic import SyntheticScenes
from fast3r_jax.evaluation.protocols import evaluate_scenes
from fast3r_jax.model.params import init_params
from fast3r_jax.train.loop import export_params

COLUMNS = ("RRA_at_15", "RRA_at_30", "mAA_30", "rot_err_deg_median", "global/acc", "global/comp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=pathlib.Path, help="a pretrained folder")
    source.add_argument("--run", type=pathlib.Path, help="a training run to export to --out first")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="write the evaluated weights there in bfloat16 storage, with the scores in its notes")
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--resolution", default="128x96")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    if args.run is not None and args.out is None:
        parser.error("--run needs --out")

    source = args.checkpoint
    if args.run is not None:
        source = export_params(args.run, args.out.with_name(args.out.name + ".fp32"))
    notes = json.loads((source / "manifest.json").read_text()).get("notes", {})
    config, params = load_pretrained(source)
    width, height = (int(x) for x in args.resolution.split("x"))
    scenes = SyntheticScenes(args.scenes, args.views, (width, height), split="test")
    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "scenes": args.scenes,
              "views": args.views, "resolution": args.resolution}
    print("| model | solver | " + " | ".join(COLUMNS) + " |")
    for name, weights in (("trained", params), ("untrained", init_params(config, 0))):
        for solver in ("procrustes", "pnp"):
            start = time.perf_counter()
            result = evaluate_scenes(config, weights, scenes, pose_solver=solver)
            report[f"{name}/{solver}"] = result | {"seconds": time.perf_counter() - start}
            print(f"| {name} | {solver} | " + " | ".join(f"{result[c]:.3f}" for c in COLUMNS) + " |", flush=True)
    if args.out is not None:
        save_pretrained(args.out, config, params, notes=notes | {"quality": report}, storage_dtype="bfloat16")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
