"""Upstream PyTorch Fast3R's own reconstruction pipeline, timed stage by stage, in a process of its own.

    python benchmarks/torch_pipeline.py --root .torchref --frames DIR [DIR ...] --json pipeline.json

Started by `benchmarks/end_to_end.py --torch-reference ROOT` on the same frame folders as fast3r-jax, before JAX
touches the GPU. ROOT is a local checkout of facebookresearch/fast3r (nothing of it is copied here). The steps are
upstream's: its `load_images(folder, size)` (fast3r/dust3r/utils/image.py), its `inference(views, model, device,
dtype=torch.bfloat16)` (fast3r/dust3r/inference_multiview.py), cameras as its `estimate_camera_poses` does them with
its defaults and the demo's focal setting (focal of view 0 from the global head by its `estimate_focal`, then its
`estimate_cam_pose_one_sample`: `fast_pnp` per view in a thread pool, 100 RANSAC iterations as its viewer
(fast3r/viz/viser_visualizer.py) and our `--pose-solver pnp` use, pixels with conf > 1),
and a binary PLY of the global points with conf > 1, coloured by the images (written with numpy in one call).

Upstream's camera functions live in `fast3r/models/multiview_dust3r_module.py`, which imports the training stack
(lightning loggers, open3d, pl_bolts, roma); `estimate_focal` and `estimate_cam_pose_one_sample` are taken from that
file's source by name (ast) and executed with the names they use; `fast3r/dust3r/cloud_opt/init_im_poses.py` imports
roma, which only other functions of it use: a stand-in module is registered when roma is missing. The model is
upstream's `Fast3R` with seeded random weights (benchmarks/torch_reference.py loads it). Each folder is run twice
(cold: first call; warm: second), reporting import, model build, load, inference, cameras and PLY times.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import importlib
import json
import logging
import os
import pathlib
import sys
import time
import types

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # fast3r_jax gives the config only: keep JAX off the GPU
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_reference  # noqa: E402  (upstream loading helpers, keeps JAX on the CPU)

CAMERA_FUNCTIONS = ("estimate_focal", "estimate_cam_pose_one_sample")


def camera_functions(root: pathlib.Path) -> dict[str, types.FunctionType]:
    """Upstream's `estimate_focal` and `estimate_cam_pose_one_sample`, executed from their source by name."""
    import torch

    if importlib.util.find_spec("roma") is None:
        sys.modules["roma"] = types.ModuleType("roma")  # used by init_im_poses functions other than fast_pnp
    from fast3r.dust3r.cloud_opt.init_im_poses import fast_pnp
    from fast3r.dust3r.post_process import estimate_focal_knowing_depth_and_confidence_mask

    path = root / "fast3r" / "models" / "multiview_dust3r_module.py"
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in CAMERA_FUNCTIONS]
    if sorted(n.name for n in nodes) != sorted(CAMERA_FUNCTIONS):
        raise RuntimeError(f"{path} does not define {CAMERA_FUNCTIONS}")
    scope = dict(np=np, torch=torch, fast_pnp=fast_pnp, ThreadPoolExecutor=concurrent.futures.ThreadPoolExecutor,
                 log=logging.getLogger("upstream"), estimate_focal_knowing_depth_and_confidence_mask=(
                     estimate_focal_knowing_depth_and_confidence_mask))
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), scope)
    return {name: scope[name] for name in CAMERA_FUNCTIONS}


def write_ply(path: pathlib.Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY of (N, 3) float32 points and (N, 3) uint8 colours, in one write."""
    record = np.empty(len(points), [("xyz", "<f4", 3), ("rgb", "u1", 3)])
    record["xyz"], record["rgb"] = points, colors
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\nproperty float x\n"
              "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "end_header\n")
    with open(path, "wb") as f:
        f.write(header.encode() + record.tobytes())


def run_once(folder: pathlib.Path, out: pathlib.Path, model, functions, device, size: int) -> dict[str, float]:
    """One reconstruction of a folder with upstream's steps; seconds per stage."""
    import torch
    from fast3r.dust3r.inference_multiview import inference
    from fast3r.dust3r.utils.image import load_images

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {}
    start = time.perf_counter()
    views = load_images(str(folder), size=size, verbose=False)
    times["load_s"] = time.perf_counter() - start

    start = time.perf_counter()
    output = inference(views, model, device, dtype=torch.bfloat16, verbose=False)
    sync()
    times["inference_s"] = time.perf_counter() - start

    start = time.perf_counter()
    preds = output["preds"]
    sample = [{k: v[0].float() for k, v in p.items() if torch.is_tensor(v)} for p in preds]
    focal = functions["estimate_focal"](sample[0]["pts3d_in_other_view"][None], sample[0]["conf"][None])
    for view in sample:
        view["focal_length"] = focal
    poses, _ = functions["estimate_cam_pose_one_sample"](sample, niter_PnP=100)
    times["cameras_s"] = time.perf_counter() - start

    start = time.perf_counter()
    pts = np.concatenate([v["pts3d_in_other_view"].numpy().reshape(-1, 3) for v in sample])
    conf = np.concatenate([v["conf"].numpy().reshape(-1) for v in sample])
    rgb = np.concatenate([((view["img"][0].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).clip(0, 255)
                          .astype(np.uint8).reshape(-1, 3) for view in output["views"]])
    keep = conf > 1.0
    write_ply(out / "points.ply", pts[keep], rgb[keep])
    times["export_s"] = time.perf_counter() - start
    times["points"] = int(keep.sum())
    times["views"] = len(views)
    times["poses"] = len(poses)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, type=pathlib.Path, help="checkout of facebookresearch/fast3r")
    p.add_argument("--frames", required=True, nargs="+", type=pathlib.Path, help="folders of images, one run each")
    p.add_argument("--config", default="large", help="large | tiny (random weights)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/torch_pipeline"))
    p.add_argument("--json", type=pathlib.Path, required=True)
    args = p.parse_args(argv)

    start = time.perf_counter()
    import torch

    upstream, notes = torch_reference.load_upstream(args.root)
    functions = camera_functions(args.root.resolve())
    import_s = time.perf_counter() - start
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from fast3r_jax import config as config_lib

    start = time.perf_counter()
    cfg = getattr(config_lib, args.config)()
    model = torch_reference.build_model(upstream, torch_reference.upstream_config(cfg), device, args.seed)
    build_s = time.perf_counter() - start
    runs = []
    for folder in args.frames:
        out = args.out / folder.name
        out.mkdir(parents=True, exist_ok=True)
        for label in ("cold", "warm"):
            start = time.perf_counter()
            stages = run_once(folder, out, model, functions, device, args.size)
            runs.append(dict(frames=str(folder), run=label, total_s=time.perf_counter() - start, **stages))
            print(json.dumps(runs[-1]), flush=True)
    result = dict(import_s=import_s, build_s=build_s, device=str(torch.cuda.get_device_name() if device.type == "cuda"
                                                                  else "cpu"), torch=torch.__version__,
                  notes=notes + ["cameras: estimate_focal and estimate_cam_pose_one_sample executed from upstream's "
                                 "multiview_dust3r_module.py source (its imports need the training stack)"],
                  runs=runs)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
