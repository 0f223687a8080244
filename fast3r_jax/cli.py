"""The `fast3r-jax` command.

    fast3r-jax reconstruct INPUT... --checkpoint DIR --out DIR [options]
    fast3r-jax view OUT [--port N] [--host 127.0.0.1]
    fast3r-jax demo [--checkpoint DIR] [--port N] [--host 127.0.0.1]

Problems with the inputs, the checkpoint or the output folder print one `error:` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fast3r_jax import distributed
from fast3r_jax import reconstruct as reconstruct_lib
from fast3r_jax.app import demo, viewer
from fast3r_jax.inference.engine import IMAGE_ID_POLICIES

EXIT_USAGE = 2


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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fast3r-jax", description="Fast3R 3D reconstruction in JAX.")
    commands = p.add_subparsers(dest="command", required=True)
    r = commands.add_parser(
        "reconstruct", help="point cloud and cameras from images or videos",
        description="Reconstructs a scene from images (files, folders, glob patterns) and videos: writes a point "
                    "cloud (PLY), cameras (COLMAP text and JSON), a GLB scene, per-view depth and confidence PNGs "
                    "and a preview PNG into --out. With a ground-truth cameras.json next to the images (the "
                    "example scene's format) it also prints the pose errors.")
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
    viewer.register(commands)
    demo.register(commands)
    return p


def _report(summary: dict) -> None:
    print(f"reconstructed {summary['num_views']} views, {summary['points']} points -> {summary['out']}")
    print("  points.ply  scene.glb  cameras.json  colmap/  depth/  confidence/  preview.png  summary.json")
    errors = summary.get("pose_errors")
    if errors:
        print(f"pose errors vs ground truth ({errors['num_views']} views, {summary['pose_solver']}): "
              f"RRA@5 {errors['RRA_at_5']:.3f}  RTA@5 {errors['RTA_at_5']:.3f}  mAA(30) {errors['mAA_30']:.3f}  "
              f"rotation {errors['rotation_error_deg']:.3f} deg  centre {errors['translation_error']:.4g} "
              f"({errors['translation_error_rel']:.2%} of the camera spread) after similarity alignment")


def _note(message: str) -> None:
    print(f"fast3r-jax: {message}", file=sys.stderr)


def _silent(message: str) -> None:
    del message


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "run", None):
        return args.run(args)
    try:
        distributed.initialize_from_args(args)
    except ValueError as err:
        print(f"fast3r-jax: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    lead = distributed.is_lead()  # process 0 speaks for all
    try:
        summary = reconstruct_lib.reconstruct(
            args.inputs, args.out, checkpoint=args.checkpoint, size=args.size, dtype=args.dtype,
            max_views=args.max_views, conf_percentile=args.conf_percentile, conf_threshold=args.conf_threshold,
            pose_solver=args.pose_solver, seed=args.seed, image_ids=args.image_ids, on_bad_image=args.on_bad_image,
            overwrite=args.overwrite, video_fps=args.video_fps, video_frames=args.video_frames,
            mesh=distributed.inference_mesh(args.sharded), seq_attention=args.seq_attention,
            progress=None if lead else False, notify=_note if lead else _silent)
    except reconstruct_lib.ReconstructError as err:
        print(f"fast3r-jax: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if lead:
        _report(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
