"""`fast3r-jax evaluate [--dataset NAME] [--data-root DIR] [--checkpoint DIR] [--out DIR] [options]`: evaluate a
Fast3R checkpoint on its benchmarks: camera poses (CO3D, RealEstate10K), reconstruction (7-Scenes, Neural RGB-D, DTU),
or both on held-out synthetic scenes.

    fast3r-jax evaluate                                  # built-in model, 16 held-out synthetic scenes
    fast3r-jax evaluate --dataset co3d --data-root data/co3d --checkpoint checkpoints/fast3r_large
    fast3r-jax evaluate --dataset 7scenes --data-root data/7scenes --checkpoint checkpoints/fast3r_large

Pose datasets give RRA/RTA at 5/15/30 degrees and mAA(30) per view count; reconstruction datasets give accuracy,
completion and normal consistency (means and medians) of the global head and of the aligned local head (see
fast3r_jax/evaluation/protocols.py). Prints the tables and writes the --out folder (fast3r_jax/evaluation/report.py):
metrics.json, pose.csv / recon.csv, metrics.md, TensorBoard scalars under tb/ and PNG plots.
"""

from __future__ import annotations

import argparse
import pathlib

from fast3r_jax import distributed
from fast3r_jax.errors import InputError
from fast3r_jax.evaluation.datasets import DATASETS
from fast3r_jax.evaluation.protocols import POSE_SOLVERS


def resolution_arg(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 512x384 (WxH), got {text!r}") from None
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--dataset", default="synthetic", choices=list(DATASETS))
    parser.add_argument("--data-root", type=pathlib.Path, default=None, help="the dataset's folder (not synthetic)")
    parser.add_argument("--checkpoint", type=pathlib.Path, default=None, help="default: the built-in model")
    parser.add_argument("--views", type=int, nargs="+", default=None,
                        help="views per sample, one run each (default: synthetic 6, co3d 3 5 10 20, re10k 10; "
                             "7scenes/nrgbd/dtu: every --kf-every-th frame of each sequence)")
    parser.add_argument("--kf-every", type=int, default=None,
                        help="keyframe stride of the reconstruction datasets without --views (default 20/40/5)")
    parser.add_argument("--sequences", type=pathlib.Path, default=None,
                        help="re10k: a text file naming the sequences to evaluate, one per line (default: all)")
    parser.add_argument("--scenes", type=int, default=None, help="samples per run (default: synthetic 16, co3d 100, "
                                                                  "others all)")
    parser.add_argument("--resolution", type=resolution_arg, default=None,
                        help="WxH (default: synthetic 128x96, co3d 512x384, re10k 512x288, others 512x512)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--pose-solver", default=None, choices=POSE_SOLVERS,
                        help="cameras from the pointmaps (default: procrustes for synthetic, the reference's pnp "
                             "for co3d and re10k)")
    parser.add_argument("--seed", type=int, default=0, help="image ids and frame sampling")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/eval"),
                        help="report folder (must not exist unless --overwrite; default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder of an evaluation")
    distributed.add_inference_arguments(parser)


def check_arguments(args: argparse.Namespace) -> None:
    """InputError for flags that do not go together."""
    spec = DATASETS[args.dataset]
    if (args.dataset == "synthetic") != (args.data_root is None):
        raise InputError(f"--data-root is required for --dataset {args.dataset}" if args.data_root is None
                         else "--data-root is not used by --dataset synthetic")
    if args.kf_every is not None and (spec.keyframe_stride is None or args.views is not None):
        raise InputError("--kf-every applies to 7scenes, nrgbd and dtu without --views")
    if args.sequences is not None and args.dataset != "re10k":
        raise InputError("--sequences applies to re10k")
    if args.pose_solver is not None and spec.pose_solver is None:
        raise InputError(f"--pose-solver does not apply to --dataset {args.dataset} (no pose task)")


def run(args: argparse.Namespace) -> int:
    from fast3r_jax.checkpoint import load_pretrained  # noqa: PLC0415  (imports jax)
    from fast3r_jax.evaluation import report  # noqa: PLC0415
    from fast3r_jax.evaluation.datasets import open_dataset  # noqa: PLC0415
    from fast3r_jax.evaluation.protocols import evaluate, model_predictor  # noqa: PLC0415
    from fast3r_jax.io.files import check_output_folder  # noqa: PLC0415
    from fast3r_jax.reconstruct import DEFAULT_CHECKPOINT  # noqa: PLC0415

    check_arguments(args)
    spec = DATASETS[args.dataset]
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    stride = args.kf_every or spec.keyframe_stride
    inputs = [p for p in (args.data_root, checkpoint, args.sequences) if p is not None]
    distributed.initialize_from_args(args)
    lead = distributed.is_lead()
    try:  # the datasets' readers report missing and malformed files as ValueErrors naming the file
        datasets = [(views, open_dataset(args.dataset, args.data_root, views, stride, resolution=args.resolution,
                                         scenes=args.scenes, seed=args.seed, sequences=args.sequences))
                    for views in args.views or spec.views or (None,)]
        config, params = load_pretrained(checkpoint)
        if lead:
            check_output_folder(args.out, overwrite=args.overwrite, inputs=inputs)  # before the compute
            if args.checkpoint is None:
                print(f"using the built-in model ({checkpoint})")
        predict = model_predictor(config, params, args.dtype, args.seed, distributed.inference_mesh(args.sharded),
                                  args.seq_attention)
        solver = args.pose_solver or spec.pose_solver
        runs = [(views, stride, evaluate(predict, data, spec.tasks, solver, args.scenes,
                                         progress=None if lead else False)) for views, data in datasets]
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from err
    if not lead:  # every process computed the same scores; process 0 reports them
        return 0
    tables = report.summary_tables(spec.tasks, runs)
    for task, rows in tables.items():
        print(f"\n{args.dataset} {task}\n{report.text_table(rows)}")
    settings = {"dataset": args.dataset, "data_root": str(args.data_root) if args.data_root else None,
                "checkpoint": str(checkpoint), "dtype": args.dtype, "pose_solver": args.pose_solver or spec.pose_solver,
                "resolution": list(args.resolution or spec.resolution), "seed": args.seed}
    out = report.write_report(args.out, settings, spec.tasks, tables, runs, overwrite=args.overwrite, inputs=inputs)
    print(f"\nwritten to {out}")
    return 0
