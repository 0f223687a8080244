"""`fast3r-jax reconstruct INPUT... --out DIR [--checkpoint DIR] [options]`: fast3r_jax.reconstruct from the command
line."""

from __future__ import annotations

import argparse

from fast3r_jax import distributed
from fast3r_jax import reconstruct as reconstruct_lib
from fast3r_jax.cli import note
from fast3r_jax.inference.engine import IMAGE_ID_POLICIES


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _percentile(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must lie in [0, 100], got {value}")
    return value


def add_arguments(r: argparse.ArgumentParser) -> None:
    r.description = (
        "Reconstructs a scene from images (files, folders, glob patterns) and videos: writes a point cloud (PLY), "
        "cameras (COLMAP text and JSON), a GLB scene, per-view depth and confidence PNGs and a preview PNG into --out. "
        "With a ground-truth cameras.json next to the images (the example scene's format) it also prints the pose "
        "errors.")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder, glob pattern or video")
    r.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    r.add_argument("--checkpoint", default=None,
                   help="checkpoint folder (save_pretrained / python -m fast3r_jax.convert); default: the "
                        "built-in checkpoint")
    r.add_argument("--size", type=int, default=None,
                   help="long side of the resized images, cropped to multiples of 16 (512 for upstream's model), or "
                        "224 for a 224x224 centre crop (default: 128 with the built-in checkpoint, else 512)")
    r.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    r.add_argument("--max-views", type=_positive_int, default=None,
                   help="use at most N views, evenly spread over the inputs")
    r.add_argument("--conf-percentile", type=_percentile, default=10.0,
                   help="keep points whose confidence is at least this percentile of all (default 10)")
    r.add_argument("--conf-threshold", type=float, default=None, help="keep points whose confidence exceeds this")
    r.add_argument("--pose-solver", choices=reconstruct_lib.POSE_SOLVERS, default="pnp",
                   help="pnp: upstream's focal + RANSAC-PnP (host); procrustes: local-to-global alignment (device)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random image ids (default 0)")
    r.add_argument("--image-ids", choices=IMAGE_ID_POLICIES, default=None,
                   help="random: as upstream draws them (seeded); sequential: 0..N-1 (default: the checkpoint's)")
    r.add_argument("--on-bad-image", choices=reconstruct_lib.BAD_IMAGE_POLICIES, default="fail",
                   help="what to do with an unreadable, truncated or too small image (default fail)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    video = r.add_mutually_exclusive_group()
    video.add_argument("--video-fps", type=float, default=None, help="frames per second sampled from videos (default 1)")
    video.add_argument("--video-frames", type=_positive_int, default=None, help="frames sampled evenly from each video")
    distributed.add_inference_arguments(r)


def _report(summary: dict) -> None:
    print(f"reconstructed {summary['num_views']} views, {summary['points']} points -> {summary['out']}")
    print("  points.ply  scene.glb  cameras.json  colmap/  depth/  confidence/  preview.png  summary.json")
    errors = summary.get("pose_errors")
    if errors:
        print(f"pose errors vs ground truth ({errors['num_views']} views, {summary['pose_solver']}): "
              f"RRA@5 {errors['RRA_at_5']:.3f}  RTA@5 {errors['RTA_at_5']:.3f}  mAA(30) {errors['mAA_30']:.3f}  "
              f"rotation {errors['rotation_error_deg']:.3f} deg  centre {errors['translation_error']:.4g} "
              f"({errors['translation_error_rel']:.2%} of the camera spread) after similarity alignment")


def _silent(message: str) -> None:
    """Processes other than process 0 keep their notes to themselves."""


def run(args: argparse.Namespace) -> int:
    distributed.initialize_from_args(args)
    lead = distributed.is_lead()  # process 0 speaks for all
    config = reconstruct_lib.ReconstructConfig(
        size=args.size, dtype=args.dtype, max_views=args.max_views, conf_percentile=args.conf_percentile,
        conf_threshold=args.conf_threshold, pose_solver=args.pose_solver, seed=args.seed, image_ids=args.image_ids,
        on_bad_image=args.on_bad_image, overwrite=args.overwrite, video_fps=args.video_fps,
        video_frames=args.video_frames, seq_attention=args.seq_attention)
    summary = reconstruct_lib.reconstruct(
        args.inputs, args.out, config, checkpoint=args.checkpoint, mesh=distributed.inference_mesh(args.sharded),
        progress=None if lead else False, notify=note if lead else _silent)
    if lead:
        _report(summary)
    return 0
