"""Evaluate a Fast3R checkpoint on its benchmarks: camera poses (CO3D, RealEstate10K), reconstruction (7-Scenes,
Neural RGB-D, DTU), or both on held-out synthetic scenes.

    python evaluate.py                                  # built-in model, 16 held-out synthetic scenes
    python evaluate.py --dataset co3d --data-root data/co3d --checkpoint checkpoints/fast3r_large
    python evaluate.py --dataset 7scenes --data-root data/7scenes --checkpoint checkpoints/fast3r_large

Pose datasets give RRA/RTA at 5/15/30 degrees and mAA(30) per view count; reconstruction datasets give accuracy,
completion and normal consistency (means and medians) of the global head and of the aligned local head (see
fast3r_jax/evaluation.py). Prints the tables and writes to --out: metrics.json (settings, tables and per-sample
scores), pose.csv / recon.csv, metrics.md, TensorBoard scalars under tb/ (step = views per sample; 0 for the
keyframe setting) and PNG plots (pose error histograms and a camera trajectory per view count; per-scene
accuracy / completion bars).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from fast3r_jax import distributed, load_pretrained
from fast3r_jax.data.eval_datasets import DTU, NRGBD, Co3dPoseEval, RealEstate10KPoses, SevenScenes
from fast3r_jax.data.synthetic import SyntheticScenes
from fast3r_jax.evaluation import plots
from fast3r_jax.evaluation.protocols import (
    HEADS,
    POSE_METRICS,
    POSE_SOLVERS,
    RECON_METRICS,
    SampleResult,
    aligned_camera_centres,
    evaluate,
    mean_scores,
    model_predictor,
)
from fast3r_jax.train.tensorboard import SummaryWriter

BUILTIN = pathlib.Path(__file__).parent / "fast3r_jax" / "assets" / "builtin"
DTU_IMAGES = 50  # the reference's keyframe stride for N views of a DTU scan is 50 // N


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A benchmark's tasks and the reference's settings for it."""

    tasks: tuple[str, ...]
    resolution: tuple[int, int]  # (W, H)
    views: tuple[int, ...] | None  # view counts; None: the keyframes of whole sequences
    pose_solver: str | None  # None: no pose task
    scenes: int | None  # samples evaluated; None: all
    keyframe_stride: int | None = None


DATASETS = {
    "synthetic": DatasetSpec(("pose", "recon"), (128, 96), (6,), "procrustes", 16),
    "co3d": DatasetSpec(("pose",), (512, 384), (3, 5, 10, 20), "pnp", 100),
    "re10k": DatasetSpec(("pose",), (512, 288), (10,), "pnp", None),
    "7scenes": DatasetSpec(("recon",), (512, 512), None, None, None, keyframe_stride=20),
    "nrgbd": DatasetSpec(("recon",), (512, 512), None, None, None, keyframe_stride=40),
    "dtu": DatasetSpec(("recon",), (512, 512), None, None, None, keyframe_stride=5),
}


def resolution_arg(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 512x384 (WxH), got {text!r}") from None
    return width, height


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/eval"))
    distributed.add_inference_arguments(parser)
    args = parser.parse_args(argv)
    spec = DATASETS[args.dataset]
    if (args.dataset == "synthetic") != (args.data_root is None):
        parser.error(f"--data-root is required for --dataset {args.dataset}" if args.data_root is None
                     else "--data-root is not used by --dataset synthetic")
    if args.kf_every is not None and (spec.keyframe_stride is None or args.views is not None):
        parser.error("--kf-every applies to 7scenes, nrgbd and dtu without --views")
    if args.sequences is not None and args.dataset != "re10k":
        parser.error("--sequences applies to re10k")
    if args.pose_solver is not None and spec.pose_solver is None:
        parser.error(f"--pose-solver does not apply to --dataset {args.dataset} (no pose task)")
    return args


# ----------------------------------------------------------------------------
# Runs.
# ----------------------------------------------------------------------------


def open_dataset(args: argparse.Namespace, views: int | None, stride: int | None):
    """The samples of one run: `views` per sample, or (reconstruction datasets) every `stride`-th frame."""
    spec = DATASETS[args.dataset]
    resolution = args.resolution or spec.resolution
    scenes = args.scenes or spec.scenes
    if args.dataset == "synthetic":
        return SyntheticScenes(scenes, views, resolution, seed=args.seed, split="test")
    if args.dataset == "co3d":
        return Co3dPoseEval(args.data_root, views, resolution=resolution, num_samples=scenes)
    if args.dataset == "re10k":
        return RealEstate10KPoses(args.data_root, views, resolution=resolution, seed=args.seed,
                                  sequences=args.sequences)
    if args.dataset == "dtu":
        return DTU(args.data_root, resolution=resolution, kf_every=stride if views is None else DTU_IMAGES // views)
    frames = {"full_video": True, "kf_every": stride} if views is None else {"full_video": False, "num_frames": views}
    reader = SevenScenes if args.dataset == "7scenes" else NRGBD
    return reader(args.data_root, resolution=resolution, seed=args.seed, **frames)


def setting_label(views: int | None, stride: int | None) -> int | str:
    """The 'views' entry of a run: its view count, or its keyframe stride."""
    return views if views is not None else f"1 in {stride}"


def file_tag(views: int | None, stride: int | None) -> str:
    return f"{views}views" if views is not None else f"kf{stride}"


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------

Run = tuple[int | None, int | None, list[SampleResult]]  # (views, stride, results)


def summary_tables(tasks: Sequence[str], runs: Sequence[Run]) -> dict[str, list[dict]]:
    """Per task, one row per run (and head): the scores averaged over the run's samples."""
    tables: dict[str, list[dict]] = {task: [] for task in tasks}
    for views, stride, results in runs:
        mean = mean_scores(results)
        label, count = setting_label(views, stride), len(results)
        if "pose" in tasks:
            tables["pose"].append({"views": label, "samples": count} | {k: mean[k] for k in POSE_METRICS})
        if "recon" in tasks:
            tables["recon"] += [{"views": label, "head": h, "samples": count} |
                                {k: mean[f"{h}/{k}"] for k in RECON_METRICS} for h in HEADS]
    return tables


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def text_table(rows: Sequence[dict]) -> str:
    columns = list(rows[0])
    cells = [columns] + [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells)


def markdown_table(rows: Sequence[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows])


def write_tensorboard(logdir: pathlib.Path, dataset: str, tables: dict[str, list[dict]]) -> None:
    """Scalars '<dataset>/pose/<metric>' and '<dataset>/recon_<head>/<metric>', step = views (0 for keyframes)."""
    writer = SummaryWriter(logdir)
    for task, rows in tables.items():
        for row in rows:
            prefix = f"{dataset}/{task}" + (f"_{row['head']}" if "head" in row else "")
            step = row["views"] if isinstance(row["views"], int) else 0
            writer.scalars({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, float)}, step)
    writer.close()


def write_plots(out: pathlib.Path, dataset: str, tasks: Sequence[str], runs: Sequence[Run]) -> None:
    for views, stride, results in runs:
        tag, label = file_tag(views, stride), f"{dataset}, {setting_label(views, stride)} views"
        if "pose" in tasks:
            rot, trans = np.concatenate([r.rot_err for r in results]), np.concatenate([r.trans_err for r in results])
            plots.pose_error_histograms(rot, trans, out / f"pose_errors_{tag}.png", f"{label}, {len(rot)} pairs")
            first = results[0]
            pred, gt = aligned_camera_centres(first.pred_c2w, first.gt_c2w)
            plots.camera_trajectory(pred, gt, out / f"trajectory_{tag}.png", f"{label}: {first.name}")
        if "recon" in tasks:
            series = {f"{h} {m}": [r.scores[f"{h}/{m}"] for r in results] for m in ("acc", "comp") for h in HEADS}
            plots.scene_bars([r.name for r in results], series, out / f"recon_scenes_{tag}.png", label,
                             "mean distance (GT units)")


def write_outputs(args: argparse.Namespace, checkpoint: pathlib.Path, tables: dict[str, list[dict]],
                  runs: Sequence[Run]) -> None:
    spec = DATASETS[args.dataset]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = {"dataset": args.dataset, "data_root": str(args.data_root) if args.data_root else None,
                "checkpoint": str(checkpoint), "dtype": args.dtype, "pose_solver": args.pose_solver or spec.pose_solver,
                "resolution": list(args.resolution or spec.resolution), "seed": args.seed}
    samples = [{"views": setting_label(v, s), "name": r.name, "num_views": r.num_views} | r.scores
               for v, s, results in runs for r in results]
    (out / "metrics.json").write_text(json.dumps(settings | {"tables": tables, "samples": samples}, indent=1))
    for task, rows in tables.items():
        with open(out / f"{task}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (out / "metrics.md").write_text("".join(f"## {args.dataset} {task}\n\n{markdown_table(rows)}\n\n"
                                            for task, rows in tables.items()))
    write_tensorboard(out / "tb", args.dataset, tables)
    write_plots(out, args.dataset, spec.tasks, runs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = DATASETS[args.dataset]
    checkpoint = args.checkpoint or BUILTIN
    stride = args.kf_every or spec.keyframe_stride
    try:
        distributed.initialize_from_args(args)
        lead = distributed.is_lead()
        datasets = [(views, open_dataset(args, views, stride)) for views in args.views or spec.views or (None,)]
        config, params = load_pretrained(checkpoint)
        if args.checkpoint is None and lead:
            print(f"using the built-in model ({checkpoint})")
        predict = model_predictor(config, params, args.dtype, args.seed, distributed.inference_mesh(args.sharded),
                                  args.seq_attention)
        solver = args.pose_solver or spec.pose_solver
        runs = [(views, stride, evaluate(predict, data, spec.tasks, solver, args.scenes, progress=None if lead else
                                         False)) for views, data in datasets]
    except (OSError, ValueError) as err:  # missing or malformed inputs (CheckpointError is a ValueError)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not lead:  # every process computed the same scores; process 0 reports them
        return 0
    tables = summary_tables(spec.tasks, runs)
    for task, rows in tables.items():
        print(f"\n{args.dataset} {task}\n{text_table(rows)}")
    write_outputs(args, checkpoint, tables, runs)
    print(f"\nwritten to {args.out.absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
