"""`fast3r-jax reconstruct INPUT... --out DIR [--checkpoint DIR] [options]`: fast3r_jax.reconstruct from the command
line."""

from __future__ import annotations

import argparse

from fast3r_jax import compilation_cache, distributed
from fast3r_jax import reconstruct as reconstruct_lib
from fast3r_jax.cli import count, finite_float, note, percentile, positive_float, positive_int
from fast3r_jax.inference.engine import IMAGE_ID_POLICIES

_OUTPUT_FILES = {"ply": "points.ply", "colmap": "colmap/", "cameras": "cameras.json", "glb": "scene.glb",
                 "depth": "depth/", "confidence": "confidence/", "preview": "preview.png",
                 "pointmaps": "pointmaps.npz"}


def _outputs(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in reconstruct_lib.OUTPUTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown output(s) {','.join(unknown) or '(none)'}; choose from "
                                         f"{','.join(reconstruct_lib.OUTPUTS)}")
    return names


def _pnp_points(text: str) -> int | None:
    if text == "all":
        return None
    value = int(text)
    if value < reconstruct_lib.MIN_PNP_POINTS:
        raise argparse.ArgumentTypeError(f"must be 'all' or at least {reconstruct_lib.MIN_PNP_POINTS}, got {value}")
    return value


def add_arguments(r: argparse.ArgumentParser) -> None:
    r.description = (
        "Reconstructs a scene from images (files, folders, glob patterns) and videos: writes a point cloud (PLY), "
        "cameras (COLMAP binary model at the images' original resolution, and JSON), a GLB scene, per-view depth and "
        "confidence maps and a preview PNG into --out (--outputs picks which). With a ground-truth cameras.json next "
        "to the images (the example scene's format) it also prints the pose errors.")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder, glob pattern or video")
    r.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    r.add_argument("--checkpoint", default=None,
                   help="checkpoint folder (save_pretrained / python -m fast3r_jax.convert); default: the "
                        "built-in checkpoint")
    r.add_argument("--size", type=int, default=None,
                   help="long side of the resized images, cropped to multiples of 16 (512 for upstream's model), or "
                        "224 for a 224x224 centre crop (default: the size the checkpoint was trained at, its "
                        "config's image_size: 128 for the built-in model)")
    r.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    r.add_argument("--max-views", type=positive_int, default=None,
                   help="use at most N views, evenly spread over the inputs")
    r.add_argument("--conf-percentile", type=percentile, default=10.0,
                   help="keep points whose confidence is at least this percentile of all (default 10)")
    r.add_argument("--conf-threshold", type=finite_float, default=None,
                   help="keep points whose confidence exceeds this")
    r.add_argument("--pose-solver", choices=reconstruct_lib.POSE_SOLVERS, default="pnp",
                   help="pnp: upstream's focal + RANSAC-PnP (host); procrustes: local-to-global alignment (device)")
    r.add_argument("--max-pnp-points", type=_pnp_points, default=reconstruct_lib.DEFAULT_PNP_POINTS, metavar="N|all",
                   help="PnP correspondences per view, evenly spaced over the conf > 1 pixels (default "
                        f"{reconstruct_lib.DEFAULT_PNP_POINTS}); 'all' uses every one, as upstream")
    r.add_argument("--pnp-focal", choices=reconstruct_lib.PNP_FOCALS, default="shared",
                   help="PnP's focal: shared, view 0's for every view (one camera, upstream's, the default), or "
                        "per-view, each view's own from its local pointmap (zoom, photos from several cameras)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random image ids (default 0)")
    r.add_argument("--image-ids", choices=IMAGE_ID_POLICIES, default=None,
                   help="random: as upstream draws them (seeded); sequential: 0..N-1 (default: the checkpoint's)")
    r.add_argument("--on-bad-image", choices=reconstruct_lib.BAD_IMAGE_POLICIES, default="fail",
                   help="what to do with an unreadable, truncated, too small or too large image (default fail)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out folder written by fast3r-jax")
    video = r.add_mutually_exclusive_group()
    video.add_argument("--video-fps", type=positive_float, default=None,
                       help="frames per second sampled from videos (default 1)")
    video.add_argument("--video-frames", type=positive_int, default=None, help="frames sampled evenly from each video")
    defaults = reconstruct_lib.ReconstructConfig()
    out = r.add_argument_group("outputs")
    out.add_argument("--outputs", type=_outputs, default=defaults.outputs, metavar="NAME,...",
                     help=f"files to write, from {','.join(reconstruct_lib.OUTPUTS)} (default: all but pointmaps; "
                          "summary.json always)")
    out.add_argument("--max-glb-points", type=count, default=defaults.max_glb_points,
                     help=f"points in scene.glb, the most confident (default {defaults.max_glb_points})")
    out.add_argument("--max-colmap-points", type=count, default=defaults.max_colmap_points,
                     help=f"points in the COLMAP model, the most confident (default {defaults.max_colmap_points})")
    out.add_argument("--colmap-text", action="store_true", help="write the COLMAP model as text instead of binary")
    out.add_argument("--maps", choices=reconstruct_lib.MAP_FORMATS, default=defaults.maps_format,
                     help="depth and confidence maps as 16/8-bit PNG or float32 .npy (default png)")
    compilation_cache.add_argument(r)
    r.add_argument("--intrinsics", default=None, metavar="FILE",
                   help="known intrinsics of the original images (COLMAP cameras.txt/.bin or a model folder, or a "
                        "cameras.json as written here), used by both pose solvers instead of estimated focals")
    distributed.add_inference_arguments(r)


def _report(summary: dict) -> None:
    print(f"reconstructed {summary['num_views']} views, {summary['points']} points -> {summary['out']}")
    print("  " + "  ".join([_OUTPUT_FILES[n] for n in summary["outputs"]] + ["summary.json"]))
    errors = summary.get("pose_errors")
    if errors:
        print(f"pose errors vs ground truth ({errors['num_views']} views, {summary['pose_solver']}): "
              f"RRA@5 {errors['RRA_at_5']:.3f}  RTA@5 {errors['RTA_at_5']:.3f}  mAA(30) {errors['mAA_30']:.3f}  "
              f"rotation {errors['rotation_error_deg']:.3f} deg  centre {errors['translation_error']:.4g} "
              f"({errors['translation_error_rel']:.2%} of the camera spread) after similarity alignment")


def _silent(_: str) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    distributed.initialize_from_args(args)
    lead = distributed.is_lead()  # process 0 speaks for all
    config = reconstruct_lib.ReconstructConfig(
        size=args.size, dtype=args.dtype, max_views=args.max_views, conf_percentile=args.conf_percentile,
        conf_threshold=args.conf_threshold, pose_solver=args.pose_solver, seed=args.seed, image_ids=args.image_ids,
        on_bad_image=args.on_bad_image, overwrite=args.overwrite, video_fps=args.video_fps,
        video_frames=args.video_frames, seq_attention=args.seq_attention, outputs=args.outputs,
        max_glb_points=args.max_glb_points, max_colmap_points=args.max_colmap_points, colmap_text=args.colmap_text,
        maps_format=args.maps, intrinsics=args.intrinsics, max_pnp_points=args.max_pnp_points,
        pnp_focal=args.pnp_focal)
    summary = reconstruct_lib.reconstruct(
        args.inputs, args.out, config, checkpoint=args.checkpoint, mesh=distributed.inference_mesh(args.sharded),
        compilation_cache_dir=args.compilation_cache, progress=None if lead else False,
        notify=note if lead else _silent)
    if lead:
        _report(summary)
    return 0
